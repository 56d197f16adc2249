//! Any text: both signaling parsers return a message or a typed error, never
//! panic, and whatever they accept survives a round trip
//! (`miostream_protocol::fuzz::signal_parse`; its stable run:
//! `crates/protocol/tests/fuzz.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| miostream_protocol::fuzz::signal_parse(data));
