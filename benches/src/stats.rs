//! From raw samples to the figures reported: HDR-histogram percentiles for a
//! whole window, and a per-100 ms time series for charts.

use crate::loadgen::Sample;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Duration;

/// Figures of one set of requests. Latency percentiles cover successful
/// requests only; failures are counted by kind in `errors`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Summary {
    pub requests: u64,
    pub ok: u64,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    /// Successful requests per second over the window.
    pub rps: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
}

/// One 100 ms slice of a run, by completion time.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub t_ms: u64,
    pub ok: u64,
    pub failed: u64,
    /// Successful requests per second in this slice.
    pub rps: f64,
    pub p99_ms: f64,
}

pub const BUCKET: Duration = Duration::from_millis(100);

fn new_histogram() -> Histogram<u64> {
    // 1 µs .. 120 s at 3 significant digits.
    Histogram::new_with_bounds(1, 120_000_000, 3).expect("static histogram bounds are valid")
}

pub fn summarize<'a>(samples: impl IntoIterator<Item = &'a Sample>, window: Duration) -> Summary {
    let mut hist = new_histogram();
    let mut summary = Summary::default();
    for s in samples {
        summary.requests += 1;
        if s.outcome.is_ok() {
            summary.ok += 1;
            hist.saturating_record(s.latency_us.max(1) as u64);
        } else {
            summary.failed += 1;
            *summary
                .errors
                .entry(s.outcome.name().to_string())
                .or_default() += 1;
        }
    }
    let ms = |us: u64| us as f64 / 1000.0;
    if !hist.is_empty() {
        summary.p50_ms = ms(hist.value_at_quantile(0.50));
        summary.p90_ms = ms(hist.value_at_quantile(0.90));
        summary.p99_ms = ms(hist.value_at_quantile(0.99));
        summary.p999_ms = ms(hist.value_at_quantile(0.999));
        summary.max_ms = ms(hist.max());
        summary.mean_ms = hist.mean() / 1000.0;
    }
    if window > Duration::ZERO {
        summary.rps = summary.ok as f64 / window.as_secs_f64();
    }
    summary
}

/// Buckets `samples` by completion time over `[0, span)`. Requests that ended
/// after `span` land in the last bucket so none goes uncounted.
pub fn series(samples: &[Sample], span: Duration) -> Vec<Bucket> {
    let width = BUCKET.as_micros() as u64;
    let n = (span.as_micros() as u64).div_ceil(width).max(1) as usize;
    let mut latencies: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut failed = vec![0u64; n];
    for s in samples {
        let i = ((s.end_us() / width) as usize).min(n - 1);
        if !s.outcome.is_ok() {
            failed[i] += 1;
        } else if !s.long {
            latencies[i].push(s.latency_us);
        }
    }
    latencies
        .into_iter()
        .zip(failed)
        .enumerate()
        .map(|(i, (mut lat, failed))| {
            lat.sort_unstable();
            let p99 = if lat.is_empty() {
                0.0
            } else {
                lat[(lat.len() - 1) * 99 / 100] as f64 / 1000.0
            };
            Bucket {
                t_ms: i as u64 * BUCKET.as_millis() as u64,
                ok: lat.len() as u64,
                failed,
                rps: lat.len() as f64 / BUCKET.as_secs_f64(),
                p99_ms: p99,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::loadgen::Outcome;

    fn sample(start_ms: u32, latency_ms: u32, outcome: Outcome) -> Sample {
        Sample {
            start_us: start_ms * 1000,
            latency_us: latency_ms * 1000,
            outcome,
            backend: 1,
            long: false,
            fresh: false,
        }
    }

    #[test]
    fn counts_and_percentiles() {
        let mut samples: Vec<_> = (1..=100).map(|i| sample(0, i, Outcome::Ok)).collect();
        samples.push(sample(0, 5, Outcome::Status5xx));
        let s = summarize(&samples, Duration::from_secs(2));
        assert_eq!((s.requests, s.ok, s.failed), (101, 100, 1));
        assert_eq!(s.errors["http_5xx"], 1);
        assert!((s.p50_ms - 50.0).abs() < 0.1, "{}", s.p50_ms);
        assert!((s.p99_ms - 99.0).abs() < 0.1, "{}", s.p99_ms);
        assert_eq!(s.rps, 50.0);
    }

    #[test]
    fn buckets_by_completion() {
        let samples = [
            sample(0, 50, Outcome::Ok),
            sample(90, 20, Outcome::Ok),
            sample(150, 500, Outcome::Broken),
        ];
        let b = series(&samples, Duration::from_millis(300));
        assert_eq!(b.len(), 3);
        assert_eq!((b[0].ok, b[1].ok, b[2].failed), (1, 1, 1));
    }
}
