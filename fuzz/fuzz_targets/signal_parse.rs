//! Any text: both signaling parsers return a message or a typed error, never
//! panic, and whatever they accept survives a serialize → parse round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;
use miostream_protocol::{PeerMessage, SupervisorMessage};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(m) = PeerMessage::from_json(text) {
        assert_eq!(PeerMessage::from_json(&m.to_json()).expect("round trip"), m);
    }
    if let Ok(m) = SupervisorMessage::from_json(text) {
        assert_eq!(SupervisorMessage::from_json(&m.to_json()).expect("round trip"), m);
    }
});
