//! Any bytes: the frame decoder returns a frame or a typed error, never
//! panics, and whatever it accepts re-encodes to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use miostream_protocol::FrameRef;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = FrameRef::decode(data) {
        let mut again = Vec::new();
        frame.encode_into(&mut again).expect("a decoded frame encodes");
        assert_eq!(again, data);
    }
});
