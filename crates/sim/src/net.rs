//! The simulated network: hosts with a serialising uplink and downlink,
//! one-way latency and jitter, incoming loss repaired by retransmission,
//! and CPU stalls. Pure arithmetic over virtual time; the randomness comes
//! in as an argument.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use rand::{Rng, RngExt as _};

/// Per-message overhead on the wire: SCTP chunk + DTLS record + UDP + IP
/// headers (data links), or WebSocket + TLS + TCP + IP (the supervisor).
pub const MESSAGE_OVERHEAD: usize = 60;

/// Packet size a message is cut into for loss: one lost packet delays the
/// whole (reliable) message.
pub const PACKET_BYTES: usize = 1200;

/// What a lost packet costs: SCTP retransmits after its retransmission
/// timeout (rtc-sctp's minimum RTO is 1 s), once per lost attempt.
pub const RETRANSMIT_AFTER: Duration = Duration::from_secs(1);

/// Rate of an unshaped interface (bit/s): a veth pair, about a gigabit.
pub const UNSHAPED_BPS: u64 = 1_000_000_000;

/// One host's network and CPU parameters.
#[derive(Debug, Clone, PartialEq)]
pub struct HostParams {
    /// Its class name (reported per slot).
    pub class: String,
    /// Uplink (bit/s); `None`: unshaped ([`UNSHAPED_BPS`]).
    pub uplink_bps: Option<u64>,
    /// Downlink (bit/s); `None`: unshaped.
    pub downlink_bps: Option<u64>,
    /// One-way latency from this host to the switch; a path between two
    /// hosts takes the sum of theirs.
    pub latency: Duration,
    /// Up to this much extra one-way delay, uniformly drawn per message.
    pub jitter: Duration,
    /// Share of incoming data-link packets lost (each retransmitted after
    /// [`RETRANSMIT_AFTER`]). The supervisor's TCP connection is not lossy
    /// (as in the lab, whose netem drops incoming UDP only).
    pub loss: f64,
    /// CPU stalls per second (Poisson): the host processes nothing for
    /// [`stall_len`](Self::stall_len); its events wait.
    pub stalls_per_sec: f64,
    /// How long a CPU stall lasts.
    pub stall_len: Duration,
}

impl HostParams {
    /// An unshaped, lossless wired host on a LAN (0.1 ms to the switch, a
    /// short CPU stall every ten seconds, as a busy shared machine has).
    pub fn wired(class: &str) -> Self {
        Self {
            class: class.to_owned(),
            uplink_bps: None,
            downlink_bps: None,
            latency: Duration::from_micros(100),
            jitter: Duration::from_micros(50),
            loss: 0.0,
            stalls_per_sec: 0.1,
            stall_len: Duration::from_millis(20),
        }
    }
}

/// A host's state in a run.
#[derive(Debug)]
pub(crate) struct Host {
    pub(crate) p: HostParams,
    up_free: Instant,
    down: Calendar,
    busy_until: Instant,
    next_stall: Option<Instant>,
    /// Wire bytes sent and received (messages plus overhead).
    pub(crate) tx: u64,
    pub(crate) rx: u64,
}

fn serialise(bytes: usize, bps: Option<u64>) -> Duration {
    let bps = bps.unwrap_or(UNSHAPED_BPS).max(1);
    Duration::from_nanos((bytes as u64).saturating_mul(8_000_000_000) / bps)
}

fn exp_sample<R: Rng + ?Sized>(rate: f64, rng: &mut R) -> Duration {
    let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    Duration::from_secs_f64((-u.ln() / rate).min(1e6))
}

impl Host {
    pub(crate) fn new<R: Rng + ?Sized>(p: HostParams, start: Instant, rng: &mut R) -> Self {
        let next_stall =
            (p.stalls_per_sec > 0.0).then(|| start + exp_sample(p.stalls_per_sec, rng));
        Self {
            p,
            up_free: start,
            down: Calendar::new(start),
            busy_until: start,
            next_stall,
            tx: 0,
            rx: 0,
        }
    }

    /// If the host's CPU is stalled at `now`, until when.
    pub(crate) fn stalled<R: Rng + ?Sized>(
        &mut self,
        now: Instant,
        rng: &mut R,
    ) -> Option<Instant> {
        while let Some(at) = self.next_stall.filter(|at| *at <= now) {
            self.busy_until = self.busy_until.max(at + self.p.stall_len);
            self.next_stall = Some(at + exp_sample(self.p.stalls_per_sec, rng));
        }
        (self.busy_until > now).then_some(self.busy_until)
    }

    /// When this host's uplink would finish a message queued now.
    pub(crate) fn uplink_backlog(&self, now: Instant) -> Duration {
        self.up_free.saturating_duration_since(now)
    }
}

/// A link's busy stretches ahead: disjoint, merged when they touch.
#[derive(Debug)]
pub(crate) struct Calendar {
    t0: Instant,
    /// Start → end (ns since `t0`).
    busy: BTreeMap<u64, u64>,
}

impl Calendar {
    fn new(t0: Instant) -> Self {
        Self {
            t0,
            busy: BTreeMap::new(),
        }
    }

    /// Books `len` from the first idle moment at or after `from`; returns
    /// when it ends. Stretches over by `now` are forgotten.
    fn reserve(&mut self, from: Instant, len: Duration, now: Instant) -> Instant {
        let ns = |t: Instant| t.saturating_duration_since(self.t0).as_nanos() as u64;
        let (now, len) = (ns(now), len.as_nanos() as u64);
        while let Some((&s, &e)) = self.busy.first_key_value() {
            if e > now {
                break;
            }
            self.busy.remove(&s);
        }
        let mut t = ns(from);
        if let Some((_, &e)) = self.busy.range(..=t).next_back() {
            t = t.max(e);
        }
        for (&s, &e) in self.busy.range(t..) {
            if s >= t + len {
                break;
            }
            t = t.max(e);
        }
        let (mut start, mut end) = (t, t + len);
        if let Some((&s, &e)) = self.busy.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
            }
        }
        if let Some(&e) = self.busy.get(&end) {
            self.busy.remove(&end);
            end = e;
        }
        self.busy.insert(start, end);
        self.t0 + Duration::from_nanos(t + len)
    }
}

/// Sends `bytes` (overhead included) from `from` to `to` at `now`: the
/// sender's uplink serialises it after what it queued before, it travels
/// both hosts' latency (plus jitter), then the receiver's downlink
/// serialises it (reserved at send time, see the comment inside). On a `lossy` path each lost packet
/// costs a retransmission timeout. Returns the arrival time.
pub(crate) fn transmit<R: Rng + ?Sized>(
    from: &mut Host,
    to: &mut Host,
    bytes: usize,
    lossy: bool,
    now: Instant,
    rng: &mut R,
) -> Instant {
    let start = now.max(from.up_free);
    let sent = start + serialise(bytes, from.p.uplink_bps);
    from.up_free = sent;
    from.tx += bytes as u64;
    let mut prop = from.p.latency + to.p.latency;
    for j in [from.p.jitter, to.p.jitter] {
        if !j.is_zero() {
            prop += Duration::from_nanos(rng.random_range(0..=j.as_nanos() as u64));
        }
    }
    // The downlink is reserved when the message is sent: the message takes
    // the first idle stretch long enough for it from when it reaches the
    // host, so one reserved earlier but reaching the host later (a slow
    // sender's) does not hold it up, and no stretch carries two messages.
    let mut arrive = to
        .down
        .reserve(sent + prop, serialise(bytes, to.p.downlink_bps), now);
    to.rx += bytes as u64;
    if lossy && to.p.loss > 0.0 {
        let packets = bytes.div_ceil(PACKET_BYTES);
        let mut worst = 0u32;
        for _ in 0..packets {
            let mut lost = 0u32;
            while lost < 20 && rng.random_bool(to.p.loss.min(0.99)) {
                lost += 1;
            }
            worst = worst.max(lost);
        }
        arrive += RETRANSMIT_AFTER * worst;
    }
    arrive
}

/// Two hosts' round-trip time (no queueing, no jitter).
pub(crate) fn rtt(a: &Host, b: &Host) -> Duration {
    (a.p.latency + b.p.latency) * 2
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    #[test]
    fn a_slow_uplink_serialises_messages_one_after_another() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let slow = HostParams {
            uplink_bps: Some(1_000_000),
            jitter: Duration::ZERO,
            ..HostParams::wired("slow")
        };
        let fast = HostParams {
            jitter: Duration::ZERO,
            ..HostParams::wired("fast")
        };
        let mut a = Host::new(slow, t0, &mut rng);
        let mut b = Host::new(fast, t0, &mut rng);
        let first = transmit(&mut a, &mut b, 125_000, false, t0, &mut rng);
        let second = transmit(&mut a, &mut b, 125_000, false, t0, &mut rng);
        // 1 s each on the uplink, then 0.2 ms of latency and 1 ms downlink.
        assert!(first - t0 >= Duration::from_secs(1) && first - t0 < Duration::from_millis(1010));
        assert!(second - t0 >= Duration::from_secs(2));
        assert_eq!(a.tx, 250_000);
    }

    #[test]
    fn a_downlink_carries_one_message_at_a_time_in_arrival_order() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Calendar::new(t0);
        // Booked first, arriving later.
        assert_eq!(c.reserve(t0 + ms(100), ms(10), t0), t0 + ms(110));
        // Arriving earlier: goes first, before the later one.
        assert_eq!(c.reserve(t0, ms(10), t0), t0 + ms(10));
        // Too long for the gap before 100 ms: after the later one.
        assert_eq!(c.reserve(t0 + ms(5), ms(95), t0), t0 + ms(205));
        // Fits the gap exactly.
        assert_eq!(c.reserve(t0 + ms(10), ms(90), t0), t0 + ms(100));
        assert_eq!(c.reserve(t0, ms(1), t0), t0 + ms(206));
    }

    #[test]
    fn a_lost_packet_delays_its_message_by_a_retransmission_timeout() {
        let t0 = Instant::now();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let lossy = HostParams {
            loss: 0.5,
            ..HostParams::wired("lossy")
        };
        let mut a = Host::new(HostParams::wired("a"), t0, &mut rng);
        let mut b = Host::new(lossy, t0, &mut rng);
        let delays: Vec<Duration> = (0..20)
            .map(|_| transmit(&mut a, &mut b, 16_000, true, t0, &mut rng) - t0)
            .collect();
        assert!(delays.iter().all(|d| *d >= RETRANSMIT_AFTER));
    }
}
