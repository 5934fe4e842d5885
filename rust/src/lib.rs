//! `fastgw._native`: the gateway's hot paths.
//!
//! The pure core modules below have no `PyO3` in them and are tested with
//! `cargo test -p fastgw-native --no-default-features`. The bindings in
//! `py/` (classes, error mapping) and the `#[pymodule]` here are built only
//! with the `python` feature, which maturin enables.
#![deny(missing_docs)]

pub mod accesslog;
pub mod cachekey;
pub mod guard;
pub mod http;
pub mod json;
pub mod jwt;
pub mod keys;
pub mod limiter;
pub mod logwriter;
pub mod lrucache;
pub mod num;
pub mod ojson;
pub mod otlp;
pub mod ring;
pub mod shm;
pub mod sse;
pub mod tally;
pub mod translate;

#[cfg(feature = "python")]
mod py;

/// The extension module: every class, function and exception, plus
/// `__version__` and `build_profile`.
#[cfg(feature = "python")]
#[pyo3::pymodule(gil_used = false)]
mod _native {
    use pyo3::prelude::*;

    #[pymodule_export]
    use crate::py::accesslog::access_line;
    #[pymodule_export]
    use crate::py::cachekey::cache_key;
    #[pymodule_export]
    use crate::py::guard::{RedactWindow, RegexGuard};
    #[pymodule_export]
    use crate::py::hash64;
    #[pymodule_export]
    use crate::py::http::{
        answer, date_line, forwarded, parse_request, parse_response, peek_request, render_request,
        response_block,
        splice_model, usage, ChunkedDecoder,
    };
    #[pymodule_export]
    use crate::py::headers::{Headers, HeadersIter};
    #[pymodule_export]
    use crate::py::jwt::{JwtKeySet, JwtVerifier};
    #[pymodule_export]
    use crate::py::keys::KeyIndex;
    #[pymodule_export]
    use crate::py::limiter::{
        Admission, Limit, LimiterTable, Reservation, Scope, SharedLimiterTable,
    };
    #[pymodule_export]
    use crate::py::logwriter::LogWriter;
    #[pymodule_export]
    use crate::py::accesslog::LogBuffer;
    #[pymodule_export]
    use crate::py::lrucache::MemoryCache;
    #[pymodule_export]
    use crate::py::otlp::OtlpEncoder;
    #[pymodule_export]
    use crate::py::ring::HashRing;
    #[pymodule_export]
    use crate::py::sse::SseScanner;
    #[pymodule_export]
    use crate::py::tally::Tally;
    #[pymodule_export]
    use crate::py::translate::ChatFromMessagesStream;

    #[pymodule_init]
    fn init(m: &Bound<'_, PyModule>) -> PyResult<()> {
        m.add("__version__", env!("CARGO_PKG_VERSION"))?;
        let profile = if cfg!(debug_assertions) {
            "debug"
        } else {
            "release"
        };
        m.add("build_profile", profile)?;
        // A header list is a sequence of pairs, as the lists it stands for.
        m.py()
            .import("collections.abc")?
            .getattr("Sequence")?
            .call_method1("register", (m.getattr("Headers")?,))?;
        crate::py::jwt::add_exceptions(m)
    }
}
