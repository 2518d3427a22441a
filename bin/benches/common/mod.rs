//! What the benchmarks share: summary statistics of a set of samples.

/// Summary of samples (milliseconds). Each benchmark shows the fields its table needs.
#[allow(dead_code)]
pub struct Stats {
    pub n: usize,
    pub median: f64,
    /// Nearest rank: with fewer than 100 samples this is the maximum.
    pub p99: f64,
    pub min: f64,
    pub max: f64,
}

/// The summary of `xs`, or `None` when there are no samples.
pub fn stats(xs: &[f64]) -> Option<Stats> {
    if xs.is_empty() {
        return None;
    }
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 { v[n / 2] } else { (v[n / 2 - 1] + v[n / 2]) / 2.0 };
    let rank = ((0.99 * n as f64).ceil() as usize).clamp(1, n);
    Some(Stats { n, median, p99: v[rank - 1], min: v[0], max: v[n - 1] })
}
