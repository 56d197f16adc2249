//! Authenticated peers' signaling messages entering the supervisor's
//! manager, with its timers and departures: no panic, bounded outputs,
//! addressed only to connected peers
//! (`miostream_supervisor::fuzz::manager_signals`; its stable run:
//! `crates/supervisor/tests/fuzz.rs`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = miostream_supervisor::fuzz::manager_signals(data);
});
