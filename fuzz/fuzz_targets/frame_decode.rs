//! Any bytes: the frame decoder returns a frame or a typed error, never
//! panics, and whatever it accepts re-encodes to the same bytes
//! (`miostream_protocol::fuzz::frame_decode`; its stable run:
//! `crates/protocol/tests/fuzz.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| miostream_protocol::fuzz::frame_decode(data));
