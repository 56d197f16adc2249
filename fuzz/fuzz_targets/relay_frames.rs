//! A linked peer's bytes entering the relay (`Relay::handle_frame`), with
//! its timers: bounded sends and buffer, no forgery report for garbage,
//! nothing unverified played (`miostream_relay::fuzz::relay_frames`; its
//! stable run: `crates/relay/tests/fuzz.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = miostream_relay::fuzz::relay_frames(data);
});
