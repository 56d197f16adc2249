//! Any bytes, fed in two pieces: the WebM splitter yields segments or a
//! typed error, never panics, never allocates past its element limit; the
//! init fix-up on the same bytes is an error or idempotent.
#![no_main]

use libfuzzer_sys::fuzz_target;
use miostream_media::{fix_up_init, Splitter};

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut s = Splitter::new();
    let _ = s.push(&data[..cut]).and_then(|_| s.push(&data[cut..])).and_then(|_| s.finish());
    if let Ok(fixed) = fix_up_init(data) {
        assert_eq!(fix_up_init(&fixed).as_ref(), Ok(&fixed));
    }
});
