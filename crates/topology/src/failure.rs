//! The paper's failure model (§4.2): which receiver fails next, as a
//! position in the overlay's order (0 = nearest the broadcaster).
//!
//! - **uniform**: every position alike;
//! - **binomial**: 20 trials with p = 0.8 mapped onto the positions, so
//!   failures fall mostly past the middle of the overlay;
//! - **poisson**: mean N/2, clamped to the last position.
//!
//! Randomness comes in as an argument, so a seeded generator replays an
//! experiment exactly.

use std::fmt;
use std::str::FromStr;

use rand::{Rng, RngExt as _};
use serde::{Deserialize, Serialize};

/// How failed peers are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailureDistribution {
    /// Every position equally likely.
    Uniform,
    /// Binomial(20, 0.8) mapped onto the positions.
    Binomial,
    /// Poisson with mean N/2, clamped to the positions.
    Poisson,
}

impl FailureDistribution {
    /// All three, in the paper's order.
    pub const ALL: [FailureDistribution; 3] = [Self::Uniform, Self::Binomial, Self::Poisson];

    /// The position (in `0..n`) of the next peer to fail; `None` if `n == 0`.
    pub fn pick<R: Rng + ?Sized>(self, n: usize, rng: &mut R) -> Option<usize> {
        if n == 0 {
            return None;
        }
        Some(match self {
            Self::Uniform => rng.random_range(0..n),
            Self::Binomial => {
                let k = (0..20).filter(|_| rng.random_bool(0.8)).count();
                k * (n - 1) / 20
            }
            Self::Poisson => poisson(n as f64 / 2.0, rng).min(n - 1),
        })
    }
}

/// A Poisson draw with mean `mean`: Knuth's method for small means, the
/// normal approximation where `exp(-mean)` would underflow.
fn poisson<R: Rng + ?Sized>(mean: f64, rng: &mut R) -> usize {
    if mean > 500.0 {
        // Box-Muller; the Poisson is very close to normal at this mean.
        let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let u2: f64 = rng.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        return (mean + z * mean.sqrt()).round().max(0.0) as usize;
    }
    let limit = (-mean).exp();
    let mut k = 0usize;
    let mut p: f64 = rng.random();
    while p > limit {
        k += 1;
        p *= rng.random::<f64>();
    }
    k
}

impl fmt::Display for FailureDistribution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Uniform => "uniform",
            Self::Binomial => "binomial",
            Self::Poisson => "poisson",
        })
    }
}

/// An unknown distribution name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown failure distribution {0:?} (expected uniform, binomial or poisson)")]
pub struct UnknownDistribution(pub String);

impl FromStr for FailureDistribution {
    type Err = UnknownDistribution;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "uniform" => Ok(Self::Uniform),
            "binomial" => Ok(Self::Binomial),
            "poisson" => Ok(Self::Poisson),
            other => Err(UnknownDistribution(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn histogram(d: FailureDistribution, n: usize, draws: usize) -> Vec<usize> {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mut h = vec![0; n];
        for _ in 0..draws {
            h[d.pick(n, &mut rng).expect("n > 0")] += 1;
        }
        h
    }

    fn mean(h: &[usize]) -> f64 {
        let total: usize = h.iter().sum();
        h.iter().enumerate().map(|(i, c)| i * c).sum::<usize>() as f64 / total as f64
    }

    #[test]
    fn no_position_without_peers() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for d in FailureDistribution::ALL {
            assert_eq!(d.pick(0, &mut rng), None);
            assert_eq!(d.pick(1, &mut rng), Some(0));
        }
    }

    #[test]
    fn uniform_covers_every_position_evenly() {
        let h = histogram(FailureDistribution::Uniform, 83, 83_000);
        assert!(h.iter().all(|&c| (800..1200).contains(&c)), "{h:?}");
    }

    #[test]
    fn binomial_falls_past_the_middle() {
        // E[k] = 16 of 20 trials: 0.8 of the way down the overlay.
        let h = histogram(FailureDistribution::Binomial, 83, 20_000);
        let m = mean(&h);
        assert!((63.0..68.0).contains(&m), "mean {m}");
        assert_eq!(
            h[..20].iter().sum::<usize>(),
            0,
            "k < 5 is vanishingly rare"
        );
    }

    #[test]
    fn poisson_centres_on_half_the_overlay() {
        let h = histogram(FailureDistribution::Poisson, 83, 20_000);
        let m = mean(&h);
        assert!((40.5..42.5).contains(&m), "mean {m}");
        // Large overlays use the normal approximation, with the same mean.
        let h = histogram(FailureDistribution::Poisson, 5_000, 20_000);
        let m = mean(&h);
        assert!((2_480.0..2_520.0).contains(&m), "mean {m}");
    }

    #[test]
    fn a_seed_replays_the_same_failures() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            (0..50)
                .map(|_| FailureDistribution::Poisson.pick(83, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn names_round_trip() {
        for d in FailureDistribution::ALL {
            assert_eq!(d.to_string().parse::<FailureDistribution>(), Ok(d));
        }
        assert!("zipf".parse::<FailureDistribution>().is_err());
    }
}
