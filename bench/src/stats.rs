//! Percentiles of latency samples.

use serde::Serialize;

/// Nearest-rank percentile of sorted samples; NaN when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// The usual percentiles of a set of samples (milliseconds unless named otherwise).
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Pcts {
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Pcts {
    pub fn of(mut samples: Vec<f64>) -> Pcts {
        samples.retain(|s| s.is_finite());
        samples.sort_by(f64::total_cmp);
        Pcts {
            count: samples.len(),
            p50: percentile(&samples, 50.0),
            p95: percentile(&samples, 95.0),
            p99: percentile(&samples, 99.0),
            max: samples.last().copied().unwrap_or(f64::NAN),
        }
    }

    /// `self - base`, percentile by percentile (the added latency of a hop).
    pub fn minus(&self, base: &Pcts) -> Added {
        Added {
            p50: self.p50 - base.p50,
            p95: self.p95 - base.p95,
            p99: self.p99 - base.p99,
        }
    }
}

/// A difference of two [`Pcts`].
#[derive(Debug, Clone, Copy, Serialize, serde::Deserialize, PartialEq)]
pub struct Added {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let samples: Vec<f64> = (1..=100).map(f64::from).collect();
        let p = Pcts::of(samples);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (50.0, 95.0, 99.0, 100.0));
        assert_eq!(p.count, 100);
        let one = Pcts::of(vec![7.0]);
        assert_eq!((one.p50, one.p99), (7.0, 7.0));
        assert!(Pcts::of(Vec::new()).p50.is_nan());
    }

    #[test]
    fn added_is_per_percentile() {
        let a = Pcts::of(vec![1.0, 2.0, 3.0]);
        let b = Pcts::of(vec![2.0, 4.0, 6.0]);
        let d = b.minus(&a);
        assert_eq!((d.p50, d.p99), (2.0, 3.0));
    }
}
