//! What one kind of finished request adds to the metrics, counted between two
//! flushes: requests, tokens, cost, and five histograms (duration, upstream time
//! to first byte, stream time to first token and per output token, overhead),
//! counted per bucket as prometheus-client counts an observation: in the first
//! bucket whose upper bound holds it. The pure-Python reference is
//! `fastgw/_reference/tally.py`.

/// Observations of one histogram, per bucket, with their sum.
#[derive(Debug, Clone, Default)]
pub struct Hist {
    bounds: Vec<f64>,
    /// Observations per bucket.
    pub counts: Vec<u64>,
    /// Sum of the observations.
    pub sum: f64,
}

impl Hist {
    /// A histogram of the buckets whose upper bounds are `bounds` (ascending,
    /// the last one +inf).
    #[must_use]
    pub fn new(bounds: Vec<f64>) -> Hist {
        let n = bounds.len();
        Hist {
            bounds,
            counts: vec![0; n],
            sum: 0.0,
        }
    }

    /// Counts `x` in the first bucket whose bound is not below it (Python's
    /// `bisect_left`; a NaN lands in the first), clamped to the last.
    pub fn observe(&mut self, x: f64) {
        let i = self.bounds.partition_point(|&b| b < x);
        if let Some(last) = self.counts.len().checked_sub(1) {
            self.counts[i.min(last)] += 1;
        }
        self.sum += x;
    }

    /// Whether anything was observed since the last take.
    #[must_use]
    pub fn touched(&self) -> bool {
        self.sum != 0.0 || self.counts.iter().any(|&c| c != 0)
    }

    /// The counts and sum so far, zeroed.
    pub fn take(&mut self) -> (Vec<u64>, f64) {
        let n = self.counts.len();
        let counts = std::mem::replace(&mut self.counts, vec![0; n]);
        (counts, std::mem::take(&mut self.sum))
    }
}

/// The histograms of a [`Tally`], in this order.
pub const DURATION: usize = 0;
/// Upstream time to first byte.
pub const TTFB: usize = 1;
/// A stream's time to first token.
pub const TTFT: usize = 2;
/// A stream's time per output token after the first.
pub const TPOT: usize = 3;
/// The gateway's own time.
pub const OVERHEAD: usize = 4;

/// One kind of finished request's numbers since the last take.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// Requests finished.
    pub requests: f64,
    /// Prompt tokens.
    pub tokens_in: f64,
    /// Completion tokens.
    pub tokens_out: f64,
    /// Cost in USD.
    pub cost: f64,
    /// duration, ttfb, ttft, tpot, overhead.
    pub hists: [Hist; 5],
}

impl Tally {
    /// An empty tally with the buckets of its five histograms.
    #[must_use]
    pub fn new(bounds: [Vec<f64>; 5]) -> Tally {
        Tally {
            hists: bounds.map(Hist::new),
            ..Tally::default()
        }
    }

    /// One finished request: `ttfb` < 0 when no upstream answered, `ttft` < 0
    /// when not a stream (then `tpot` is not counted either), `tpot` < 0 when
    /// unknown, `overhead` 0 when unknown; zero counts and cost add nothing.
    #[allow(clippy::too_many_arguments, clippy::similar_names)]
    pub fn record(
        &mut self,
        duration: f64,
        ttfb: f64,
        overhead: f64,
        prompt: f64,
        completion: f64,
        cost: f64,
        ttft: f64,
        tpot: f64,
    ) {
        self.requests += 1.0;
        self.hists[DURATION].observe(duration);
        if ttfb >= 0.0 {
            self.hists[TTFB].observe(ttfb);
        }
        if ttft >= 0.0 {
            self.hists[TTFT].observe(ttft);
            if tpot >= 0.0 {
                self.hists[TPOT].observe(tpot);
            }
        }
        if overhead != 0.0 {
            self.hists[OVERHEAD].observe(overhead);
        }
        self.tokens_in += prompt;
        self.tokens_out += completion;
        self.cost += cost;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bounds() -> [Vec<f64>; 5] {
        let b = vec![0.1, 1.0, f64::INFINITY];
        [b.clone(), b.clone(), b.clone(), b.clone(), b]
    }

    #[test]
    #[allow(clippy::float_cmp)]
    fn a_request_lands_in_the_bucket_that_holds_it() {
        let mut t = Tally::new(bounds());
        t.record(0.1, -1.0, 0.0, 3.0, 5.0, 0.5, -1.0, 0.2);
        t.record(2.0, 0.05, 0.01, 0.0, 0.0, 0.0, 0.3, 0.02);
        assert_eq!(t.requests, 2.0);
        assert_eq!(t.hists[DURATION].counts, vec![1, 0, 1]); // 0.1 is held by 0.1
        assert_eq!(t.hists[TTFB].counts, vec![1, 0, 0]);
        assert_eq!(t.hists[TTFT].counts, vec![0, 1, 0]);
        assert_eq!(t.hists[TPOT].counts, vec![1, 0, 0]); // only with a ttft
        assert_eq!(t.hists[OVERHEAD].counts, vec![1, 0, 0]);
        assert_eq!((t.tokens_in, t.tokens_out, t.cost), (3.0, 5.0, 0.5));
        let (counts, sum) = t.hists[DURATION].take();
        assert_eq!((counts, sum), (vec![1, 0, 1], 2.1));
        assert!(!t.hists[DURATION].touched());
        t.hists[DURATION].observe(f64::NAN);
        assert_eq!(t.hists[DURATION].counts, vec![1, 0, 0]);
    }
}
