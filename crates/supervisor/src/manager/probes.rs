//! Capacity probe slots: how many receivers measure their uplink at once.
//!
//! A receiver measures its uplink by sending filler to the supervisor
//! (`CAPACITY_PROBE`). When a crowd joins at once, those probes share the
//! supervisor's own link: 83 probes of 192 KiB are 16 MB into a 100 Mbit/s
//! server, so each measures about 1.2 Mbit/s whatever its uplink, and wired
//! peers join as leaves. So a probe runs only in a slot
//! (`CAPACITY_PROBE_REQUEST`, `CAPACITY_PROBE_GRANT`): at most
//! [`PROBE_SLOTS`] at once, granted first come, first served. A slot is
//! free again when its probe's last message arrives, when its peer leaves,
//! or after [`PROBE_SLOT_HOLD`]: a probe still running then is a slow
//! uplink's (below 192 KiB per 250 ms, about 6 Mbit/s), which takes little
//! of the supervisor's link, and must not hold the queue up for a second.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use miostream_protocol::PeerId;

/// Probes granted at once.
pub const PROBE_SLOTS: usize = 4;

/// A slot is given to the next peer after this long, even if its probe is
/// still running.
pub const PROBE_SLOT_HOLD: Duration = Duration::from_millis(250);

/// The slots and the peers waiting for one (pure; time comes in).
#[derive(Debug, Default)]
pub(super) struct ProbeSlots {
    /// Peers probing now, with when they were granted.
    running: Vec<(PeerId, Instant)>,
    waiting: VecDeque<PeerId>,
}

impl ProbeSlots {
    /// `peer` asks for a slot: the peers to grant one now (it, or nobody).
    pub(super) fn request(&mut self, peer: PeerId, now: Instant) -> Vec<PeerId> {
        if self.running.iter().any(|(p, _)| *p == peer) || self.waiting.contains(&peer) {
            return Vec::new();
        }
        self.waiting.push_back(peer);
        self.fill(now)
    }

    /// `peer`'s probe is over (its last message came, or it left): the
    /// peers to grant a slot now.
    pub(super) fn release(&mut self, peer: PeerId, now: Instant) -> Vec<PeerId> {
        self.running.retain(|(p, _)| *p != peer);
        self.waiting.retain(|p| *p != peer);
        self.fill(now)
    }

    /// When the oldest running probe's hold ends, if one runs.
    pub(super) fn poll_timeout(&self) -> Option<Instant> {
        self.running
            .iter()
            .map(|(_, since)| *since + PROBE_SLOT_HOLD)
            .min()
    }

    /// Frees the slots held past [`PROBE_SLOT_HOLD`]: the peers to grant.
    pub(super) fn handle_timeout(&mut self, now: Instant) -> Vec<PeerId> {
        self.running
            .retain(|(_, since)| *since + PROBE_SLOT_HOLD > now);
        self.fill(now)
    }

    fn fill(&mut self, now: Instant) -> Vec<PeerId> {
        let mut granted = Vec::new();
        while self.running.len() < PROBE_SLOTS {
            let Some(peer) = self.waiting.pop_front() else {
                break;
            };
            self.running.push((peer, now));
            granted.push(peer);
        }
        granted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(n: u128) -> PeerId {
        PeerId::from_u128(n)
    }

    #[test]
    fn at_most_the_slots_run_at_once_first_come_first_served() {
        let t0 = Instant::now();
        let mut s = ProbeSlots::default();
        for n in 0..PROBE_SLOTS as u128 {
            assert_eq!(s.request(peer(n), t0), vec![peer(n)]);
        }
        assert!(s.request(peer(10), t0).is_empty());
        assert!(s.request(peer(11), t0).is_empty());
        assert!(
            s.request(peer(10), t0).is_empty(),
            "asking twice queues once"
        );
        assert_eq!(s.release(peer(1), t0), vec![peer(10)]);
        assert_eq!(s.release(peer(11), t0), vec![], "a waiting peer left");
        assert_eq!(s.release(peer(0), t0), vec![]);
    }

    #[test]
    fn a_slow_probe_gives_its_slot_up_after_the_hold() {
        let t0 = Instant::now();
        let mut s = ProbeSlots::default();
        for n in 0..PROBE_SLOTS as u128 {
            s.request(peer(n), t0);
        }
        let t1 = t0 + Duration::from_millis(100);
        s.request(peer(10), t1);
        assert_eq!(s.poll_timeout(), Some(t0 + PROBE_SLOT_HOLD));
        assert!(s
            .handle_timeout(t0 + PROBE_SLOT_HOLD - Duration::from_millis(1))
            .is_empty());
        let t2 = t0 + PROBE_SLOT_HOLD;
        assert_eq!(s.handle_timeout(t2), vec![peer(10)]);
        assert_eq!(s.poll_timeout(), Some(t2 + PROBE_SLOT_HOLD));
        assert!(s.handle_timeout(t2 + PROBE_SLOT_HOLD).is_empty());
        assert_eq!(s.poll_timeout(), None, "no timer stays due");
    }
}
