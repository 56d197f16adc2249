//! The playback model: what the paper's "stalled" and "stall time" mean,
//! made exact, with the clock passed in.
//!
//! A player buffers `startup` of media before it starts, or waits `startup`
//! of wall time, whichever comes first (at the live edge the buffer may
//! never reach `startup`: a player never waits forever); then its media
//! clock runs at real time. Media is *available* up to the end of the newest
//! cluster that is complete and contiguous with what played. When the clock
//! reaches the end of the available media the player stalls; it resumes
//! once `resume` of media is buffered again. A cluster's duration is the gap
//! to the next one; the newest cluster's duration is taken to be that of
//! the one before it.

use std::time::{Duration, Instant};

/// Playback counters, as written to the receiver summary.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PlaybackStats {
    /// Times playback stopped for lack of data (after it first started).
    pub stalls: u64,
    /// Time spent stalled (ms), including a stall still in progress.
    pub stall_ms: u64,
    /// From the first chunk to the start of playback (ms); 0 before it starts.
    pub startup_ms: u64,
    /// Media time played (ms).
    pub played_ms: u64,
}

#[derive(Debug, Clone, Copy)]
enum State {
    /// Nothing received yet.
    Idle,
    /// Filling the startup buffer since `since`.
    Starting { since: Instant },
    /// Playing: media time `media_at` was shown at wall time `wall_at`.
    Playing { wall_at: Instant, media_at: u64 },
    /// Stalled since `since` at media time `media_at`.
    Stalled { since: Instant, media_at: u64 },
}

/// A player's clock and buffer.
#[derive(Debug, Clone)]
pub struct PlaybackModel {
    startup: Duration,
    resume: Duration,
    state: State,
    first_ts: Option<u64>,
    /// End of the available media (ms, stream timestamps).
    available_until: Option<u64>,
    last_ts: Option<u64>,
    last_duration: u64,
    stats: PlaybackStats,
    stalled_ms_done: u64,
}

impl PlaybackModel {
    /// A player that buffers `startup` before starting and `resume` before
    /// resuming after a stall.
    pub fn new(startup: Duration, resume: Duration) -> Self {
        Self {
            startup,
            resume,
            state: State::Idle,
            first_ts: None,
            available_until: None,
            last_ts: None,
            last_duration: 1000,
            stats: PlaybackStats::default(),
            stalled_ms_done: 0,
        }
    }

    /// A cluster starting at `timestamp_ms` is complete (and contiguous with
    /// the ones before it).
    pub fn cluster_complete(&mut self, timestamp_ms: u64, now: Instant) {
        self.advance(now);
        if let Some(last) = self.last_ts {
            if timestamp_ms > last {
                self.last_duration = timestamp_ms - last;
            }
        }
        self.last_ts = Some(timestamp_ms.max(self.last_ts.unwrap_or(0)));
        if self.first_ts.is_none() {
            self.first_ts = Some(timestamp_ms);
            self.state = State::Starting { since: now };
        }
        let end = timestamp_ms + self.last_duration;
        self.available_until = Some(self.available_until.map_or(end, |a| a.max(end)));
        self.advance(now);
    }

    /// Brings the model up to `now` (call before reading the stats).
    pub fn advance(&mut self, now: Instant) {
        let (Some(first), Some(avail)) = (self.first_ts, self.available_until) else {
            return;
        };
        match self.state {
            State::Idle => {}
            State::Starting { since } => {
                let deadline = since + self.startup;
                let start = if now >= deadline {
                    // Waited long enough: play what there is (the buffer
                    // did not fill by the deadline, or it would have
                    // started at that earlier call).
                    Some(deadline)
                } else if avail.saturating_sub(first) >= self.startup.as_millis() as u64 {
                    Some(now)
                } else {
                    None
                };
                if let Some(at) = start {
                    self.stats.startup_ms = at.saturating_duration_since(since).as_millis() as u64;
                    self.state = State::Playing {
                        wall_at: at,
                        media_at: first,
                    };
                    self.advance(now);
                }
            }
            State::Playing { wall_at, media_at } => {
                let media_now =
                    media_at + now.saturating_duration_since(wall_at).as_millis() as u64;
                if media_now > avail {
                    // Ran dry at media time `avail`, at this wall time:
                    let dry_at = wall_at + Duration::from_millis(avail - media_at);
                    self.stats.played_ms += avail - media_at;
                    self.stats.stalls += 1;
                    self.state = State::Stalled {
                        since: dry_at,
                        media_at: avail,
                    };
                    self.advance(now);
                } else {
                    // Account played time incrementally.
                    self.stats.played_ms += media_now - media_at;
                    self.state = State::Playing {
                        wall_at: now,
                        media_at: media_now,
                    };
                }
            }
            State::Stalled { since, media_at } => {
                if avail.saturating_sub(media_at) >= self.resume.as_millis() as u64 {
                    self.stalled_ms_done += now.saturating_duration_since(since).as_millis() as u64;
                    self.state = State::Playing {
                        wall_at: now,
                        media_at,
                    };
                }
            }
        }
    }

    /// Media available ahead of the play head as of `now` (ms).
    pub fn buffered_ms(&mut self, now: Instant) -> u64 {
        self.advance(now);
        let Some(avail) = self.available_until else {
            return 0;
        };
        match self.state {
            State::Idle => 0,
            State::Starting { .. } => avail.saturating_sub(self.first_ts.unwrap_or(avail)),
            State::Playing { media_at, .. } | State::Stalled { media_at, .. } => {
                avail.saturating_sub(media_at)
            }
        }
    }

    /// Counters as of `now`.
    pub fn stats(&mut self, now: Instant) -> PlaybackStats {
        self.advance(now);
        let mut stats = self.stats;
        stats.stall_ms = self.stalled_ms_done
            + match self.state {
                State::Stalled { since, .. } => {
                    now.saturating_duration_since(since).as_millis() as u64
                }
                _ => 0,
            };
        stats
    }

    /// Whether playback has started (the startup buffer filled once).
    pub fn started(&self) -> bool {
        matches!(self.state, State::Playing { .. } | State::Stalled { .. })
    }

    /// Whether the player is stalled now.
    pub fn is_stalled(&self) -> bool {
        matches!(self.state, State::Stalled { .. })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn model() -> PlaybackModel {
        PlaybackModel::new(Duration::from_millis(1000), Duration::from_millis(500))
    }

    #[test]
    fn steady_arrivals_never_stall() {
        let t0 = Instant::now();
        let mut m = model();
        // A 1 s cluster every second, each complete as it starts.
        for i in 0..30u64 {
            m.cluster_complete(i * 1000, t0 + 1000 * MS * i as u32);
        }
        let s = m.stats(t0 + 30_000 * MS);
        assert_eq!(s.stalls, 0);
        assert_eq!(s.stall_ms, 0);
        assert_eq!(
            s.startup_ms, 0,
            "the first cluster fills the 1 s buffer at once"
        );
        assert_eq!(s.played_ms, 30_000);
    }

    #[test]
    fn a_late_cluster_is_one_stall_of_the_exact_length() {
        let t0 = Instant::now();
        let mut m = model();
        m.cluster_complete(0, t0);
        m.cluster_complete(1000, t0 + 1000 * MS);
        // Cluster 2000 should be there by t=2000 (media runs out at 2000);
        // it arrives at t=2700; playback resumes when 500 ms are buffered,
        // which cluster 2000 (1 s long) gives at once.
        m.cluster_complete(2000, t0 + 2700 * MS);
        let s = m.stats(t0 + 2700 * MS);
        assert_eq!(s.stalls, 1);
        assert_eq!(s.stall_ms, 700);
        assert!(!m.is_stalled());
        // A stall in progress counts up to now.
        let s = m.stats(t0 + 4000 * MS);
        assert_eq!(s.stalls, 2);
        assert_eq!(s.stall_ms, 700 + 300);
    }

    #[test]
    fn startup_waits_for_the_buffer() {
        let t0 = Instant::now();
        let mut m = PlaybackModel::new(Duration::from_millis(2000), Duration::from_millis(500));
        m.cluster_complete(5000, t0 + 100 * MS);
        assert_eq!(m.stats(t0 + 500 * MS).startup_ms, 0);
        m.cluster_complete(6000, t0 + 900 * MS);
        let s = m.stats(t0 + 900 * MS);
        assert_eq!(s.startup_ms, 800);
        assert_eq!(s.stalls, 0);
    }

    #[test]
    fn startup_never_waits_forever_at_the_live_edge() {
        let t0 = Instant::now();
        let mut m = PlaybackModel::new(Duration::from_millis(2000), Duration::from_millis(1000));
        // One cluster, then none for a while (a hole upstream): the buffer
        // holds 1 s, never the 2 s asked for.
        m.cluster_complete(0, t0 + 900 * MS);
        assert!(!m.started());
        let s = m.stats(t0 + 5000 * MS);
        assert!(m.started(), "started once the startup time had passed");
        assert_eq!(s.startup_ms, 2000);
        // It played the second it had, then stalled.
        assert_eq!(s.played_ms, 1000);
        assert_eq!(s.stalls, 1);
        assert_eq!(s.startup_ms + s.played_ms + s.stall_ms, 5000 - 900);
    }

    /// Every millisecond after the first cluster is exactly one of startup,
    /// playing or stalled, for scripted arrival schedules with gaps.
    #[test]
    fn wall_time_is_startup_plus_played_plus_stalled() {
        let t0 = Instant::now();
        // (cluster timestamp, arrival ms): on time, bursts, and late ones.
        let schedules: [&[(u64, u64)]; 3] = [
            &[
                (0, 0),
                (1000, 300),
                (2000, 2600),
                (3000, 2700),
                (4000, 6000),
            ],
            &[
                (0, 100),
                (1000, 100),
                (2000, 100),
                (3000, 5000),
                (4000, 5001),
            ],
            &[(0, 0), (500, 900), (1000, 1900), (1500, 2900), (2000, 3900)],
        ];
        for schedule in schedules {
            let mut m = model();
            let first_arrival = schedule[0].1;
            for &(ts, at) in schedule {
                m.cluster_complete(ts, t0 + MS * at as u32);
            }
            for end in [7000u64, 9000] {
                let s = m.stats(t0 + MS * end as u32);
                assert_eq!(
                    s.startup_ms + s.played_ms + s.stall_ms,
                    end - first_arrival,
                    "{schedule:?} at {end}: {s:?}"
                );
                // Nothing plays that has not arrived.
                let last = schedule.iter().map(|(ts, _)| *ts).max().unwrap_or(0);
                assert!(s.played_ms <= last + 1000 - schedule[0].0);
            }
        }
    }
}
