//! Any bytes, fed in two pieces: the WebM splitter yields segments or a
//! typed error, never panics, never allocates past its element limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use miostream_media::Splitter;

fuzz_target!(|data: &[u8]| {
    let cut = data.first().map_or(0, |b| *b as usize % (data.len() + 1));
    let mut s = Splitter::new();
    let _ = s.push(&data[..cut]).and_then(|_| s.push(&data[cut..])).and_then(|_| s.finish());
});
