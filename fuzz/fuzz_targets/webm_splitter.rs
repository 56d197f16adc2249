//! Any bytes, fed in two pieces: the WebM splitter yields segments made of
//! the input or a typed error, never panics; the init fix-up is an error or
//! idempotent (`miostream_media::fuzz::webm_splitter`; its stable run:
//! `crates/media/tests/split.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| miostream_media::fuzz::webm_splitter(data));
