//! The lab's attacks (`experiment --attackers K --attack KIND`), as the
//! paper's monitor injects "simulated attacks per second" (§3.1).
//!
//! An attacker is a real receiver (`miostream-attacker`, a binary of this
//! crate only: the shipped `miostream-receiver` has no attack mode) whose
//! transport passes through an [`Attacker`]: it sees what the node sends
//! and receives on its data channels, and at the attack rate alters or adds
//! frames (and, for false reports, tells the binary whom to accuse). The
//! node itself is the honest one, unchanged. Pure: no IO, time passed in.

use std::collections::{BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use miostream_node::{TransportCommand, TransportEvent};
use miostream_protocol::frame::{CHUNK_HEADER_LEN, MAX_GAP_COUNT};
use miostream_protocol::{Frame, FrameRef, PeerId, StreamId};

/// What an attacker does, at its rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attack {
    /// Corrupts the tag of chunks it relays to its subscribers (it must be
    /// placed as a relay to matter).
    Forge,
    /// Reports honest linked peers (its upstream first) as forgers.
    FalseReport,
    /// Sends undecodable frames on its data channels, one link at a time.
    Garbage,
    /// Asks its upstream for its whole buffer again (gap requests for every
    /// chunk of the last seconds).
    GapFlood,
}

impl Attack {
    /// Every attack, in the CLI's order.
    pub const ALL: [Attack; 4] = [
        Attack::Forge,
        Attack::FalseReport,
        Attack::Garbage,
        Attack::GapFlood,
    ];

    /// Its CLI name.
    pub fn name(self) -> &'static str {
        match self {
            Attack::Forge => "forge",
            Attack::FalseReport => "false-report",
            Attack::Garbage => "garbage",
            Attack::GapFlood => "gap-flood",
        }
    }
}

impl std::fmt::Display for Attack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Attack {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Attack::ALL
            .into_iter()
            .find(|a| a.name() == s)
            .ok_or_else(|| {
                format!("unknown attack {s:?} (expected forge, false-report, garbage or gap-flood)")
            })
    }
}

/// The default attack rate (attacks per second).
pub const DEFAULT_RATE: f64 = 10.0;

/// The attackers of a run: the first `count` receiver slots run
/// `miostream-attacker` doing `attack` `rate` times a second. They join
/// first (before the honest receivers), so in a tree or a list they sit
/// near the source, as relays.
#[derive(Debug, Clone, PartialEq)]
pub struct AttackPlan {
    /// Malicious slots.
    pub count: usize,
    /// What they do.
    pub attack: Attack,
    /// Attacks per second, each.
    pub rate: f64,
}

/// How far back a gap flood asks (about a relay's buffer).
const FLOOD_WINDOW: Duration = Duration::from_secs(8);

/// A frame no decoder accepts: an unknown protocol version.
const GARBAGE: &[u8] = b"\xee\x00 not a miostream frame";

/// What the attacker counted.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct AttackStats {
    /// Chunks sent with a corrupted tag.
    pub forged: u64,
    /// False reports asked for.
    pub reports: u64,
    /// Garbage frames sent.
    pub garbage: u64,
    /// Gap requests for the whole window sent.
    pub gap_requests: u64,
}

/// One attacker between a node and its transport (see the module docs).
///
/// Call [`outbound`](Self::outbound) on every command the node gives its
/// transport and pass on what it returns, [`inbound`](Self::inbound) on
/// every event the transport reports (it is passed on unchanged), and
/// [`tick`](Self::tick) every [`period`](Self::period).
#[derive(Debug)]
pub struct Attacker {
    attack: Attack,
    period: Duration,
    /// Forge: chunks that may still be forged (one per tick, at most a
    /// second's worth saved up).
    tokens: f64,
    up: BTreeSet<PeerId>,
    /// Peers that sent us chunks, the latest first.
    feeders: VecDeque<PeerId>,
    stream: Option<StreamId>,
    /// Media sequence numbers seen over the flood window.
    seen: VecDeque<(u64, Instant)>,
    /// The newest chunk frame received: a false reporter's "evidence".
    latest: Option<Bytes>,
    /// Round robin over links (garbage) or peers to accuse (false reports).
    next: usize,
    accused: BTreeSet<PeerId>,
    stats: AttackStats,
}

/// What a tick asks of the binary.
#[derive(Debug)]
pub enum Action {
    /// Hand this to the transport.
    Transport(TransportCommand),
    /// Report `upstream` to the supervisor as the sender of chunk `seq`
    /// that failed verification (it did not).
    Report {
        /// The accused.
        upstream: PeerId,
        /// A sequence number it could have sent.
        seq: u64,
        /// The "evidence": a chunk received with its tag corrupted, so the
        /// supervisor's own check of it fails as a real forgery's would
        /// (an honest chunk as evidence would prove the report false).
        chunk: Option<Bytes>,
    },
}

impl Attacker {
    /// An attacker doing `attack` `rate` times a second (at least 0.1).
    pub fn new(attack: Attack, rate: f64) -> Self {
        let rate = rate.max(0.1);
        Self {
            attack,
            period: Duration::from_secs_f64(1.0 / rate),
            tokens: 0.0,
            up: BTreeSet::new(),
            feeders: VecDeque::new(),
            stream: None,
            seen: VecDeque::new(),
            latest: None,
            next: 0,
            accused: BTreeSet::new(),
            stats: AttackStats::default(),
        }
    }

    /// How often to call [`tick`](Self::tick).
    pub fn period(&self) -> Duration {
        self.period
    }

    /// What it did so far.
    pub fn stats(&self) -> &AttackStats {
        &self.stats
    }

    /// A command of the node for the transport: passed on, or (forge) a
    /// chunk with its tag corrupted instead.
    pub fn outbound(&mut self, cmd: TransportCommand) -> TransportCommand {
        match cmd {
            TransportCommand::Send { peer, frame }
                if self.attack == Attack::Forge && self.tokens >= 1.0 =>
            {
                match forged(&frame) {
                    Some(frame) => {
                        self.tokens -= 1.0;
                        self.stats.forged += 1;
                        TransportCommand::Send { peer, frame }
                    }
                    None => TransportCommand::Send { peer, frame },
                }
            }
            other => other,
        }
    }

    /// An event of the transport, watched (which links are up, who feeds
    /// us, the stream and its sequence numbers); pass it on unchanged.
    pub fn inbound(&mut self, event: &TransportEvent, now: Instant) {
        match event {
            TransportEvent::Up(p) => {
                self.up.insert(*p);
            }
            TransportEvent::Down(p) => {
                self.up.remove(p);
                self.feeders.retain(|f| f != p);
            }
            TransportEvent::Frame(from, frame) => {
                if let Ok(FrameRef::Chunk(c)) = FrameRef::decode(frame) {
                    self.stream = Some(c.header.stream);
                    if self.feeders.front() != Some(from) {
                        self.feeders.retain(|f| f != from);
                        self.feeders.push_front(*from);
                    }
                    if self.seen.back().is_none_or(|(s, _)| c.header.seq > *s) {
                        self.seen.push_back((c.header.seq, now));
                        self.latest = Some(frame.clone());
                    }
                    while self
                        .seen
                        .front()
                        .is_some_and(|(_, t)| now.saturating_duration_since(*t) > FLOOD_WINDOW)
                    {
                        self.seen.pop_front();
                    }
                }
            }
            TransportEvent::Signal { .. } => {}
        }
    }

    /// One attack (due every [`period`](Self::period)).
    pub fn tick(&mut self) -> Vec<Action> {
        match self.attack {
            Attack::Forge => {
                self.tokens = (self.tokens + 1.0).min(1.0 / self.period.as_secs_f64());
                Vec::new()
            }
            Attack::Garbage => {
                let links: Vec<PeerId> = self.up.iter().copied().collect();
                if links.is_empty() {
                    return Vec::new();
                }
                let peer = links[self.next % links.len()];
                self.next = self.next.wrapping_add(1);
                self.stats.garbage += 1;
                vec![Action::Transport(TransportCommand::Send {
                    peer,
                    frame: Bytes::from_static(GARBAGE),
                })]
            }
            Attack::GapFlood => {
                let (Some(stream), Some(&upstream), Some(&(first, _)), Some(&(last, _))) = (
                    self.stream,
                    self.feeders.front(),
                    self.seen.front(),
                    self.seen.back(),
                ) else {
                    return Vec::new();
                };
                let count = (last - first + 1).min(u64::from(MAX_GAP_COUNT)) as u32;
                let frame = Frame::GapRequest {
                    stream,
                    first,
                    count,
                }
                .encode()
                .map(Bytes::from)
                .unwrap_or_default();
                self.stats.gap_requests += 1;
                vec![Action::Transport(TransportCommand::Send {
                    peer: upstream,
                    frame,
                })]
            }
            Attack::FalseReport => {
                // The upstream first, then every other linked peer in
                // turn: a lone liar is cut out for accusing several.
                let mut order: Vec<PeerId> = self
                    .feeders
                    .iter()
                    .copied()
                    .filter(|p| self.up.contains(p))
                    .collect();
                let others: Vec<PeerId> = self
                    .up
                    .iter()
                    .copied()
                    .filter(|p| !order.contains(p))
                    .collect();
                order.extend(others);
                let fresh = order.iter().copied().find(|p| !self.accused.contains(p));
                let upstream = match fresh {
                    Some(p) => p,
                    None if order.is_empty() => return Vec::new(),
                    None => {
                        let p = order[self.next % order.len()];
                        self.next = self.next.wrapping_add(1);
                        p
                    }
                };
                self.accused.insert(upstream);
                self.stats.reports += 1;
                let seq = self.seen.back().map_or(0, |(s, _)| *s);
                let chunk = self.latest.as_ref().and_then(forged);
                vec![Action::Report {
                    upstream,
                    seq,
                    chunk,
                }]
            }
        }
    }
}

/// `frame` with its integrity tag corrupted, if it is a tagged chunk.
fn forged(frame: &Bytes) -> Option<Bytes> {
    match FrameRef::decode(frame) {
        Ok(FrameRef::Chunk(c)) if !c.tag.is_empty() => {
            let mut bytes = frame.to_vec();
            bytes[CHUNK_HEADER_LEN] ^= 0xff;
            Some(Bytes::from(bytes))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use miostream_protocol::{Chunk, ChunkFlags, ChunkHeader, ChunkKind};

    fn chunk(seq: u64) -> Bytes {
        let c = Chunk {
            header: ChunkHeader {
                stream: StreamId(3),
                seq,
                kind: ChunkKind::Media,
                flags: ChunkFlags::empty(),
                timestamp_ms: 0,
                send_time_us: 0,
            },
            tag: vec![7; 32],
            payload: vec![1; 64],
        };
        Bytes::from(c.encode().unwrap_or_default())
    }

    fn sent(actions: &[Action]) -> Vec<(PeerId, Bytes)> {
        actions
            .iter()
            .filter_map(|a| match a {
                Action::Transport(TransportCommand::Send { peer, frame }) => {
                    Some((*peer, frame.clone()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for a in Attack::ALL {
            assert_eq!(a.name().parse::<Attack>(), Ok(a));
        }
        assert!("sybil".parse::<Attack>().is_err());
    }

    #[test]
    fn a_forger_corrupts_the_tag_of_as_many_chunks_as_its_rate_allows() {
        let mut a = Attacker::new(Attack::Forge, 2.0);
        let child = PeerId::from_u128(9);
        let send = |seq| TransportCommand::Send {
            peer: child,
            frame: chunk(seq),
        };
        // No token yet: honest.
        assert!(
            matches!(a.outbound(send(1)), TransportCommand::Send { frame, .. } if frame == chunk(1))
        );
        a.tick();
        let TransportCommand::Send { frame, .. } = a.outbound(send(2)) else {
            panic!("a send stays a send");
        };
        let Ok(FrameRef::Chunk(c)) = FrameRef::decode(&frame) else {
            panic!("still a well-formed chunk");
        };
        assert_eq!(c.header.seq, 2);
        assert_ne!(c.tag, &[7; 32][..]);
        assert!(
            matches!(a.outbound(send(3)), TransportCommand::Send { frame, .. } if frame == chunk(3))
        );
        // Saved up: at most a second's worth.
        for _ in 0..10 {
            a.tick();
        }
        let forged = (4..20)
            .filter(|s| !matches!(a.outbound(send(*s)), TransportCommand::Send { frame, .. } if frame == chunk(*s)))
            .count();
        assert_eq!(forged, 2);
        assert_eq!(a.stats().forged, 3);
    }

    #[test]
    fn garbage_goes_round_the_links_and_never_decodes() {
        let mut a = Attacker::new(Attack::Garbage, 10.0);
        assert!(a.tick().is_empty(), "no link yet");
        let (p, q) = (PeerId::from_u128(1), PeerId::from_u128(2));
        let now = Instant::now();
        a.inbound(&TransportEvent::Up(p), now);
        a.inbound(&TransportEvent::Up(q), now);
        let to: Vec<PeerId> = (0..4)
            .flat_map(|_| sent(&a.tick()))
            .map(|(p, _)| p)
            .collect();
        assert_eq!(to, vec![p, q, p, q]);
        assert!(FrameRef::decode(GARBAGE).is_err());
    }

    #[test]
    fn a_gap_flood_asks_the_upstream_for_its_whole_window() {
        let mut a = Attacker::new(Attack::GapFlood, 10.0);
        let (up, other) = (PeerId::from_u128(1), PeerId::from_u128(2));
        let t0 = Instant::now();
        a.inbound(&TransportEvent::Up(up), t0);
        a.inbound(&TransportEvent::Up(other), t0);
        assert!(a.tick().is_empty(), "nothing to ask for yet");
        for seq in 10..=50 {
            a.inbound(&TransportEvent::Frame(up, chunk(seq)), t0);
        }
        let out = sent(&a.tick());
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].0, up);
        assert!(matches!(
            FrameRef::decode(&out[0].1),
            Ok(FrameRef::GapRequest {
                stream: StreamId(3),
                first: 10,
                count: 41
            })
        ));
        // What is older than the window is not asked for.
        let later = t0 + FLOOD_WINDOW + Duration::from_secs(1);
        a.inbound(&TransportEvent::Frame(up, chunk(51)), later);
        let out = sent(&a.tick());
        assert!(matches!(
            FrameRef::decode(&out[0].1),
            Ok(FrameRef::GapRequest {
                first: 51,
                count: 1,
                ..
            })
        ));
    }

    #[test]
    fn a_false_reporter_accuses_its_upstream_first_then_every_other_link() {
        let mut a = Attacker::new(Attack::FalseReport, 10.0);
        let peers: Vec<PeerId> = (1..=3).map(PeerId::from_u128).collect();
        let now = Instant::now();
        for p in &peers {
            a.inbound(&TransportEvent::Up(*p), now);
        }
        a.inbound(&TransportEvent::Frame(peers[2], chunk(5)), now);
        let accused: Vec<PeerId> = (0..3)
            .flat_map(|_| a.tick())
            .filter_map(|x| match x {
                Action::Report {
                    upstream,
                    seq,
                    chunk: evidence,
                } => {
                    assert_eq!(seq, 5);
                    let evidence = evidence.expect("a tampered chunk as evidence");
                    assert_ne!(evidence, chunk(5), "tampered");
                    Some(upstream)
                }
                Action::Transport(_) => None,
            })
            .collect();
        assert_eq!(accused, vec![peers[2], peers[0], peers[1]]);
        assert_eq!(a.stats().reports, 3);
    }
}
