//! `Tally`.
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::tally as core;

type Taken = (Vec<u64>, f64);

/// One kind of finished request's numbers between two metric flushes; see the
/// module stub for the contract.
#[pyclass(module = "fastgw._native")]
pub struct Tally {
    inner: core::Tally,
}

#[pymethods]
impl Tally {
    /// The upper bounds of the five histograms' buckets: duration, ttfb, ttft,
    /// tpot, overhead (each ascending, the last +inf).
    #[new]
    fn new(bounds: [Vec<f64>; 5]) -> PyResult<Tally> {
        for b in &bounds {
            if b.is_empty() || b.windows(2).any(|w| w[0] >= w[1]) {
                return Err(PyValueError::new_err(
                    "each histogram needs ascending bucket bounds",
                ));
            }
        }
        Ok(Tally {
            inner: core::Tally::new(bounds),
        })
    }

    /// One finished request (see `fastgw/_reference/tally.py`).
    #[pyo3(signature = (duration, ttfb, overhead, prompt, completion, cost, ttft = -1.0, tpot = -1.0, /))]
    #[allow(clippy::too_many_arguments, clippy::similar_names)]
    fn record(
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
        self.inner
            .record(duration, ttfb, overhead, prompt, completion, cost, ttft, tpot);
    }

    /// `(requests, tokens_in, tokens_out, cost, hists)` since the last take, where
    /// `hists` holds `(counts, sum)` of duration, ttfb, ttft, tpot and overhead
    /// (None for a histogram that observed nothing); everything zeroed.
    #[allow(clippy::type_complexity)]
    fn take(&mut self) -> (f64, f64, f64, f64, [Option<Taken>; 5]) {
        let t = &mut self.inner;
        let hists = std::array::from_fn(|i| {
            let h = &mut t.hists[i];
            h.touched().then(|| h.take())
        });
        (
            std::mem::take(&mut t.requests),
            std::mem::take(&mut t.tokens_in),
            std::mem::take(&mut t.tokens_out),
            std::mem::take(&mut t.cost),
            hists,
        )
    }
}
