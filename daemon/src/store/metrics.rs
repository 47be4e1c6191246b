//! Each job's metric history: the named scalars its trainer reported with its progress, keyed by
//! step, kept across attempts, pauses and restarts of trainerd.
//!
//! Points at full resolution ([`Point`], written behind in chunks of several: see `store::history`)
//! and `buckets` (JobId ++ first step → [`Bucket`], min/mean/max/last of a span of older points). The
//! bound per job is [`RAW_MAX`] points at full resolution plus [`BUCKETS_MAX`] buckets, each holding
//! at most [`NAMES_MAX`] names: when the points pass `RAW_MAX`, the oldest chunks holding at least
//! half of them are folded into buckets, and when the buckets pass `BUCKETS_MAX`, neighbours are
//! merged pairwise (a bucket's span doubles). The newest points are never folded, so the last value
//! is never lost; an extreme is never lost either (a bucket keeps its min and max).
//!
//! An attempt that continues from a checkpoint at step S rewinds the history: points after S (and
//! buckets that begin after S) are removed, so the curve shows what the final model went through.
//! Points are written without a flush of their own: the next flush (every transition, every event
//! that matters) carries what was written of them.

use super::records::JobId;
use serde::{Deserialize, Serialize};

/// Points kept at full resolution per job.
pub const RAW_MAX: usize = 4096;
/// Buckets kept per job.
pub const BUCKETS_MAX: usize = 1024;
/// Metric names kept per job; later names are not recorded.
pub const NAMES_MAX: usize = 32;
/// The longest metric name.
pub const NAME_MAX: usize = 64;

/// One progress report's values at one step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    pub step: u64,
    /// Unix seconds.
    pub at: f64,
    pub attempt: u32,
    pub values: Vec<(String, f64)>,
}

/// A [`Point`] borrowed from the report it comes from, stored as the `Point` it decodes to (a
/// recorded report allocates no name).
#[derive(Debug, Clone, Copy, Serialize)]
pub struct PointRef<'a> {
    pub step: u64,
    /// Unix seconds.
    pub at: f64,
    pub attempt: u32,
    pub values: &'a [(&'a str, f64)],
}

/// The aggregate of one name over a bucket's span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Aggregate {
    pub min: f64,
    pub max: f64,
    pub sum: f64,
    pub count: u64,
    pub last: f64,
}

impl Aggregate {
    fn of(value: f64) -> Aggregate {
        Aggregate { min: value, max: value, sum: value, count: 1, last: value }
    }

    fn merge(&mut self, later: &Aggregate) {
        // NaN compares false: a NaN extreme is kept as it is (a diverged loss stays visible).
        if later.min < self.min || later.min.is_nan() {
            self.min = later.min;
        }
        if later.max > self.max || later.max.is_nan() {
            self.max = later.max;
        }
        self.sum += later.sum;
        self.count += later.count;
        self.last = later.last;
    }

    /// The mean of the span.
    pub fn mean(&self) -> f64 {
        self.sum / self.count.max(1) as f64
    }
}

/// Older points of a span of steps, folded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Bucket {
    pub first_step: u64,
    pub last_step: u64,
    pub at: f64,
    pub values: Vec<(String, Aggregate)>,
}

impl Bucket {
    fn of(point: &Point) -> Bucket {
        Bucket {
            first_step: point.step,
            last_step: point.step,
            at: point.at,
            values: point.values.iter().map(|(n, v)| (n.clone(), Aggregate::of(*v))).collect(),
        }
    }

    fn absorb(&mut self, later: &Bucket) {
        self.last_step = later.last_step;
        self.at = later.at;
        for (name, agg) in &later.values {
            let full = self.values.len() >= NAMES_MAX;
            match self.values.iter_mut().find(|(n, _)| n == name) {
                Some((_, mine)) => mine.merge(agg),
                None if !full => self.values.push((name.clone(), *agg)),
                None => {}
            }
        }
    }
}

/// Whether `name` may be a metric's name: 1 to [`NAME_MAX`] bytes of `[A-Za-z0-9_./-]`.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= NAME_MAX
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'/' | b'-'))
}

/// The key of job `id`'s entry at `step`.
pub fn key(id: JobId, step: u64) -> [u8; 16] {
    let mut key = [0; 16];
    key[..8].copy_from_slice(&id.0.to_be_bytes());
    key[8..].copy_from_slice(&step.to_be_bytes());
    key
}

/// The step in a key.
pub fn step_of(key: &[u8]) -> u64 {
    key.get(8..16).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).unwrap_or(0)
}

/// Folds the oldest `points` into the buckets after the last existing bucket: `per` points a bucket.
pub fn fold(points: &[Point], per: usize) -> Vec<Bucket> {
    points
        .chunks(per.max(1))
        .filter_map(|chunk| {
            let mut bucket = Bucket::of(chunk.first()?);
            for point in &chunk[1..] {
                bucket.absorb(&Bucket::of(point));
            }
            Some(bucket)
        })
        .collect()
}

/// Merges neighbouring buckets pairwise (each span doubles) until at most `max` remain.
pub fn merge_pairs(mut buckets: Vec<Bucket>, max: usize) -> Vec<Bucket> {
    while buckets.len() > max {
        buckets = buckets
            .chunks(2)
            .map(|pair| {
                let mut first = pair[0].clone();
                if let Some(second) = pair.get(1) {
                    first.absorb(second);
                }
                first
            })
            .collect();
    }
    buckets
}

/// One point of a series as a reader gets it: a raw value, or a bucket's mean with its extremes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub step: u64,
    pub at: f64,
    pub attempt: u32,
    pub value: f64,
    /// For a folded span: its extremes (and the span's last step is `step`'s bucket end).
    pub min: Option<f64>,
    pub max: Option<f64>,
}

/// At most `max` samples of `series` (in step order), extremes kept: the steps are cut into
/// `max / 2` windows and each keeps its lowest and its highest sample (one when they coincide).
pub fn downsample(series: &[Sample], max: usize) -> Vec<Sample> {
    if series.len() <= max || max < 2 {
        return series.iter().take(max.max(series.len().min(max))).copied().collect();
    }
    let windows = max / 2;
    let per = series.len().div_ceil(windows);
    let low = |s: &Sample| s.min.unwrap_or(s.value);
    let high = |s: &Sample| s.max.unwrap_or(s.value);
    let mut out = Vec::with_capacity(max);
    for window in series.chunks(per) {
        let lo = window.iter().min_by(|a, b| low(a).total_cmp(&low(b))).copied();
        let hi = window.iter().max_by(|a, b| high(a).total_cmp(&high(b))).copied();
        match (lo, hi) {
            (Some(lo), Some(hi)) if lo.step == hi.step => out.push(lo),
            (Some(lo), Some(hi)) if lo.step < hi.step => out.extend([lo, hi]),
            (Some(lo), Some(hi)) => out.extend([hi, lo]),
            _ => {}
        }
    }
    // The newest value is always shown as it is.
    if let (Some(last), Some(shown)) = (series.last(), out.last()) {
        if shown.step != last.step {
            if out.len() >= max {
                out.pop();
            }
            out.push(*last);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn point(step: u64, loss: f64) -> Point {
        Point { step, at: step as f64, attempt: 1, values: vec![("loss".into(), loss)] }
    }

    #[test]
    fn a_borrowed_point_is_stored_as_the_point_it_decodes_to() {
        let values = [("loss", 0.25), ("acc", f64::NAN)];
        let borrowed = PointRef { step: 7, at: 1.5, attempt: 2, values: &values };
        let owned =
            Point { step: 7, at: 1.5, attempt: 2, values: vec![("loss".into(), 0.25), ("acc".into(), f64::NAN)] };
        let stored = super::super::codec::encode(&borrowed).unwrap();
        assert_eq!(stored, super::super::codec::encode(&owned).unwrap());
        let back: Point = super::super::codec::decode(&stored).unwrap();
        assert_eq!((back.step, back.values[0].clone()), (7, ("loss".to_string(), 0.25)));
    }

    #[test]
    fn folding_keeps_extremes_means_and_the_last_value() {
        let points: Vec<Point> = (0..10).map(|s| point(s, if s == 3 { 100.0 } else { s as f64 })).collect();
        let buckets = fold(&points, 4);
        assert_eq!(buckets.len(), 3);
        let (_, agg) = &buckets[0].values[0];
        assert_eq!((buckets[0].first_step, buckets[0].last_step), (0, 3));
        assert_eq!((agg.min, agg.max, agg.count, agg.last), (0.0, 100.0, 4, 100.0));
        assert_eq!(agg.mean(), (0.0 + 1.0 + 2.0 + 100.0) / 4.0);
        let merged = merge_pairs(buckets, 2);
        assert_eq!(merged.len(), 2);
        assert_eq!((merged[0].first_step, merged[0].last_step, merged[0].values[0].1.max), (0, 7, 100.0));
        assert_eq!(merged[1].values[0].1.last, 9.0);
    }

    #[test]
    fn a_nan_extreme_stays_visible() {
        let buckets = fold(&[point(0, 1.0), point(1, f64::NAN), point(2, 0.5)], 3);
        assert!(buckets[0].values[0].1.max.is_nan() || buckets[0].values[0].1.min.is_nan());
    }

    #[test]
    fn downsampling_bounds_the_count_and_keeps_extremes_and_the_last_value() {
        let series: Vec<Sample> = (0..10_000u64)
            .map(|s| Sample {
                step: s,
                at: 0.0,
                attempt: 1,
                value: if s == 5_001 {
                    -50.0
                } else if s == 7_777 {
                    1e6
                } else {
                    (s % 7) as f64
                },
                min: None,
                max: None,
            })
            .collect();
        let down = downsample(&series, 100);
        assert!(down.len() <= 100, "{}", down.len());
        assert!(down.iter().any(|s| s.value == -50.0) && down.iter().any(|s| s.value == 1e6), "extremes kept");
        assert_eq!(down.last().unwrap().step, 9_999, "the newest value is shown");
        assert!(down.windows(2).all(|w| w[0].step < w[1].step), "in step order");
        assert_eq!(downsample(&series[..50], 100).len(), 50, "nothing dropped under the bound");
    }

    #[test]
    fn names_are_short_and_plain() {
        for ok in ["loss", "val_loss", "train/acc", "lr-0", "a.b"] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "a b", "x\n", &"x".repeat(65), "ü"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }
}
