//! The pacer: when each cluster of a file is due, so a file plays out at
//! real time. Time is an argument (a `Duration` since any fixed instant the
//! driver picks), so the schedule is tested without a clock.

use std::time::Duration;

/// Media timestamps jumping by more than this (either way) re-anchor the
/// schedule instead of stalling or bursting.
pub const DEFAULT_MAX_JUMP: Duration = Duration::from_secs(10);

/// Maps cluster timestamps to send times.
///
/// The first cluster is due at once; every later one at
/// `anchor_time + (timestamp − anchor_timestamp)`. A cluster already late
/// is due now (the driver catches up without skipping). A timestamp that
/// goes backwards, or forwards by more than the jump limit (a file whose
/// timestamps restart, a concatenation), re-anchors the schedule at `now`.
#[derive(Debug, Clone)]
pub struct Pacer {
    anchor: Option<(u64, Duration)>,
    max_jump_ms: u64,
}

impl Default for Pacer {
    fn default() -> Self {
        Self::new(DEFAULT_MAX_JUMP)
    }
}

impl Pacer {
    /// A pacer that re-anchors on jumps larger than `max_jump`.
    pub fn new(max_jump: Duration) -> Self {
        Self {
            anchor: None,
            max_jump_ms: u64::try_from(max_jump.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// When the cluster starting at `timestamp_ms` is due, given that it is
    /// `now` (both on the driver's time line). Never earlier than `now`.
    pub fn due(&mut self, timestamp_ms: u64, now: Duration) -> Duration {
        let Some((ts0, at0)) = self.anchor else {
            self.anchor = Some((timestamp_ms, now));
            return now;
        };
        let ahead = timestamp_ms.checked_sub(ts0);
        let due = ahead.map(|ms| at0.saturating_add(Duration::from_millis(ms)));
        match due {
            // Within the jump limit of where the schedule says media is now.
            Some(due) if due <= now.saturating_add(Duration::from_millis(self.max_jump_ms)) => {
                due.max(now)
            }
            _ => {
                self.anchor = Some((timestamp_ms, now));
                now
            }
        }
    }

    /// Forgets the schedule: the next cluster is due at once.
    pub fn reset(&mut self) {
        self.anchor = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn clusters_are_due_at_their_media_offsets() {
        let mut p = Pacer::default();
        assert_eq!(p.due(5000, ms(100)), ms(100));
        assert_eq!(p.due(6000, ms(100)), ms(1100));
        assert_eq!(p.due(7033, ms(1100)), ms(2133));
    }

    #[test]
    fn a_late_driver_catches_up_without_skipping() {
        let mut p = Pacer::default();
        p.due(0, ms(0));
        // The driver was held up for 3 s: clusters 1..3 are due now, in turn.
        assert_eq!(p.due(1000, ms(3000)), ms(3000));
        assert_eq!(p.due(2000, ms(3000)), ms(3000));
        assert_eq!(p.due(4000, ms(3000)), ms(4000));
    }

    #[test]
    fn timestamps_that_jump_re_anchor() {
        let mut p = Pacer::new(ms(10_000));
        p.due(50_000, ms(0));
        assert_eq!(p.due(51_000, ms(1000)), ms(1000));
        // Backwards: restart at once, then pace from there.
        assert_eq!(p.due(0, ms(1500)), ms(1500));
        assert_eq!(p.due(1000, ms(1500)), ms(2500));
        // An hour forward: no hour-long wait.
        assert_eq!(p.due(3_600_000, ms(2500)), ms(2500));
        assert_eq!(p.due(3_601_000, ms(2500)), ms(3500));
        p.reset();
        assert_eq!(p.due(9, ms(4000)), ms(4000));
    }
}
