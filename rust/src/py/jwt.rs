//! `JwtKeySet`, `JwtVerifier` and the JWT exception classes.
use std::sync::{Mutex, PoisonError};

use pyo3::create_exception;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBool, PyDict, PyFloat, PyInt, PyList, PyString};
use serde_json::{Map, Value};

use super::{key_bytes, now_or_clock};
use crate::jwt::{
    Alg, Config, JwtError as CoreError, KeyError, KeySet, Reason, TokenCache, Verifier,
};

create_exception!(
    fastgw._native,
    JwtError,
    PyValueError,
    "A token was refused; `reason` says why."
);
create_exception!(
    fastgw._native,
    MalformedTokenError,
    JwtError,
    "Not a well-formed JWS compact token."
);
create_exception!(
    fastgw._native,
    UnsupportedAlgorithmError,
    JwtError,
    "Algorithm unknown, `none`, not allowed, or not usable with the key."
);
create_exception!(
    fastgw._native,
    UnknownKeyError,
    JwtError,
    "No key carries the token's `kid`."
);
create_exception!(
    fastgw._native,
    BadSignatureError,
    JwtError,
    "The signature does not verify."
);
create_exception!(
    fastgw._native,
    ExpiredTokenError,
    JwtError,
    "`exp` has passed."
);
create_exception!(
    fastgw._native,
    NotYetValidError,
    JwtError,
    "`nbf` or `iat` is in the future."
);
create_exception!(
    fastgw._native,
    BadIssuerError,
    JwtError,
    "`iss` is not accepted."
);
create_exception!(
    fastgw._native,
    BadAudienceError,
    JwtError,
    "`aud` is not accepted."
);
create_exception!(
    fastgw._native,
    MissingClaimError,
    JwtError,
    "A required claim is absent."
);
create_exception!(
    fastgw._native,
    JwtKeyError,
    PyValueError,
    "Key material or verifier settings cannot be used."
);

/// Adds the exception classes, each with its `reason` code.
pub(crate) fn add_exceptions(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    let base = py.get_type::<JwtError>();
    base.setattr("reason", "invalid")?;
    m.add("JwtError", base)?;
    m.add("JwtKeyError", py.get_type::<JwtKeyError>())?;
    for reason in [
        Reason::Malformed,
        Reason::UnsupportedAlg,
        Reason::UnknownKid,
        Reason::BadSignature,
        Reason::Expired,
        Reason::NotYetValid,
        Reason::BadIssuer,
        Reason::BadAudience,
        Reason::MissingClaim,
    ] {
        let t = exception_type(py, reason);
        t.setattr("reason", reason.code())?;
        m.add(t.name()?, t)?;
    }
    Ok(())
}

fn exception_type(py: Python<'_>, reason: Reason) -> Bound<'_, pyo3::types::PyType> {
    match reason {
        Reason::Malformed => py.get_type::<MalformedTokenError>(),
        Reason::UnsupportedAlg => py.get_type::<UnsupportedAlgorithmError>(),
        Reason::UnknownKid => py.get_type::<UnknownKeyError>(),
        Reason::BadSignature => py.get_type::<BadSignatureError>(),
        Reason::Expired => py.get_type::<ExpiredTokenError>(),
        Reason::NotYetValid => py.get_type::<NotYetValidError>(),
        Reason::BadIssuer => py.get_type::<BadIssuerError>(),
        Reason::BadAudience => py.get_type::<BadAudienceError>(),
        Reason::MissingClaim => py.get_type::<MissingClaimError>(),
    }
}

fn token_error(e: CoreError) -> PyErr {
    let msg = e.message;
    match e.reason {
        Reason::Malformed => MalformedTokenError::new_err(msg),
        Reason::UnsupportedAlg => UnsupportedAlgorithmError::new_err(msg),
        Reason::UnknownKid => UnknownKeyError::new_err(msg),
        Reason::BadSignature => BadSignatureError::new_err(msg),
        Reason::Expired => ExpiredTokenError::new_err(msg),
        Reason::NotYetValid => NotYetValidError::new_err(msg),
        Reason::BadIssuer => BadIssuerError::new_err(msg),
        Reason::BadAudience => BadAudienceError::new_err(msg),
        Reason::MissingClaim => MissingClaimError::new_err(msg),
    }
}

fn key_error(e: KeyError) -> PyErr {
    JwtKeyError::new_err(e.0)
}

fn alg(name: Option<&str>) -> PyResult<Option<Alg>> {
    name.map(|n| {
        Alg::from_name(n)
            .ok_or_else(|| JwtKeyError::new_err(format!("unsupported algorithm {n:?}")))
    })
    .transpose()
}

/// `str` or a sequence of `str`.
fn strings(obj: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if let Ok(s) = obj.cast::<PyString>() {
        return Ok(vec![s.to_str()?.to_owned()]);
    }
    obj.try_iter()?.map(|o| o?.extract::<String>()).collect()
}

/// A JSON value as Python objects (integers beyond 64 bits arrive as floats).
fn to_py<'py>(py: Python<'py>, v: &Value) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Null => py.None().into_bound(py),
        Value::Bool(b) => PyBool::new(py, *b).to_owned().into_any(),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                PyInt::new(py, i).into_any()
            } else if let Some(u) = n.as_u64() {
                PyInt::new(py, u).into_any()
            } else {
                PyFloat::new(py, n.as_f64().unwrap_or(f64::NAN)).into_any()
            }
        }
        Value::String(s) => PyString::new(py, s).into_any(),
        Value::Array(items) => {
            let list = PyList::empty(py);
            for item in items {
                list.append(to_py(py, item)?)?;
            }
            list.into_any()
        }
        Value::Object(map) => dict(py, map)?.into_any(),
    })
}

fn dict<'py>(py: Python<'py>, map: &Map<String, Value>) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    for (k, v) in map {
        d.set_item(PyString::new(py, k), to_py(py, v)?)?;
    }
    Ok(d)
}

/// An immutable set of verification keys.
#[pyclass(frozen, module = "fastgw._native")]
pub struct JwtKeySet {
    inner: KeySet,
}

#[pymethods]
impl JwtKeySet {
    /// Keys from a JWKS document (or one JWK), as `str` or `bytes`.
    #[staticmethod]
    fn from_jwks(jwks: &Bound<'_, PyAny>) -> PyResult<JwtKeySet> {
        Ok(JwtKeySet {
            inner: KeySet::from_jwks(key_bytes(jwks)?).map_err(key_error)?,
        })
    }

    /// One public key in PEM.
    #[staticmethod]
    #[pyo3(signature = (pem, *, kid = None, algorithm = None))]
    fn from_pem(
        pem: &Bound<'_, PyAny>,
        kid: Option<String>,
        algorithm: Option<&str>,
    ) -> PyResult<JwtKeySet> {
        Ok(JwtKeySet {
            inner: KeySet::from_pem(key_bytes(pem)?, kid, alg(algorithm)?).map_err(key_error)?,
        })
    }

    /// One HMAC secret (`str` is taken as its UTF-8).
    #[staticmethod]
    #[pyo3(signature = (secret, *, kid = None, algorithm = None))]
    fn from_secret(
        secret: &Bound<'_, PyAny>,
        kid: Option<String>,
        algorithm: Option<&str>,
    ) -> PyResult<JwtKeySet> {
        let a = alg(algorithm)?;
        if a.is_some_and(Alg::is_slow) {
            return Err(JwtKeyError::new_err(
                "a secret can only be used with HS256, HS384 or HS512",
            ));
        }
        Ok(JwtKeySet {
            inner: KeySet::from_secret(key_bytes(secret)?, kid, a),
        })
    }

    /// This set's keys followed by `other`'s.
    fn union(&self, other: &Bound<'_, JwtKeySet>) -> JwtKeySet {
        JwtKeySet {
            inner: self.inner.union(&other.get().inner),
        }
    }

    /// The `kid` of each key (None when absent).
    #[getter]
    fn kids(&self) -> Vec<Option<String>> {
        self.inner.keys().iter().map(|k| k.kid.clone()).collect()
    }

    fn __len__(&self) -> usize {
        self.inner.keys().len()
    }

    fn __repr__(&self) -> String {
        format!("<JwtKeySet keys={}>", self.inner.keys().len())
    }
}

/// Verifies tokens against a key set, with a cache of verified tokens.
#[pyclass(frozen, module = "fastgw._native")]
pub struct JwtVerifier {
    inner: Verifier,
    cache: Mutex<TokenCache<Py<PyDict>>>,
}

#[pymethods]
impl JwtVerifier {
    #[new]
    #[pyo3(signature = (keys, *, algorithms, issuer = None, audience = None, leeway = 0.0, require = None, cache_size = 4096))]
    fn new(
        keys: &Bound<'_, JwtKeySet>,
        algorithms: &Bound<'_, PyAny>,
        issuer: Option<&Bound<'_, PyAny>>,
        audience: Option<&Bound<'_, PyAny>>,
        leeway: f64,
        require: Option<&Bound<'_, PyAny>>,
        cache_size: usize,
    ) -> PyResult<JwtVerifier> {
        let mut algs = Vec::new();
        for name in strings(algorithms)? {
            algs.push(
                Alg::from_name(&name).ok_or_else(|| {
                    JwtKeyError::new_err(format!("unsupported algorithm {name:?}"))
                })?,
            );
        }
        let require = match require {
            Some(r) => strings(r)?,
            None => vec!["exp".to_owned()],
        };
        let cfg = Config {
            algorithms: algs,
            issuers: issuer.map(strings).transpose()?,
            audiences: audience.map(strings).transpose()?,
            leeway,
            require,
        };
        Ok(JwtVerifier {
            inner: Verifier::new(keys.get().inner.clone(), cfg).map_err(key_error)?,
            cache: Mutex::new(TokenCache::new(cache_size)),
        })
    }

    /// The claims of a valid token (a new dict each call; nested values are
    /// shared with the cache, so treat them as read-only).
    #[pyo3(signature = (token, now = None))]
    fn verify<'py>(
        &self,
        py: Python<'py>,
        token: &Bound<'py, PyAny>,
        now: Option<f64>,
    ) -> PyResult<Bound<'py, PyDict>> {
        let bytes =
            key_bytes(token).map_err(|_| PyTypeError::new_err("token must be str or bytes"))?;
        let now = now_or_clock(now);
        let leeway = self.inner.config().leeway;
        let hit = {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            cache.get(bytes, now, leeway).map(|d| d.clone_ref(py))
        };
        if let Some(d) = hit {
            return d.bind(py).copy();
        }
        let prepared = self.inner.prepare(bytes).map_err(token_error)?;
        let checked = if prepared.alg.is_slow() {
            py.detach(|| self.inner.check_signature(&prepared))
        } else {
            self.inner.check_signature(&prepared)
        };
        checked.map_err(token_error)?;
        let (claims, times) = self.inner.claims(&prepared, now).map_err(token_error)?;
        let d = dict(py, &claims)?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if !cache.accepts(bytes) {
            return Ok(d);
        }
        cache.put(bytes, d.clone().unbind(), times);
        drop(cache);
        // The cached dict stays private; the caller gets its own.
        d.copy()
    }

    /// Forgets every cached token.
    fn clear_cache(&self) {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Tokens in the cache.
    #[getter]
    fn cache_len(&self) -> usize {
        self.cache
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Allowed algorithm names.
    #[getter]
    fn algorithms(&self) -> Vec<&'static str> {
        self.inner
            .config()
            .algorithms
            .iter()
            .map(|a| a.name())
            .collect()
    }
}
