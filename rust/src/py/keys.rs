//! `KeyIndex`: API keys by the SHA-256 of what is presented, remembered once found
//! (see `crate::keys`).
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::keys::{Digest, KeyTable};

/// Configured keys' SHA-256 digests -> their objects (a principal each): see
/// `fastgw/_reference/keys.py` for the reference.
#[pyclass(module = "fastgw._native", frozen)]
pub(crate) struct KeyIndex {
    table: KeyTable,
    values: Vec<Py<PyAny>>,
}

#[pymethods]
impl KeyIndex {
    #[new]
    fn new(entries: Vec<(Vec<u8>, Py<PyAny>)>) -> PyResult<Self> {
        let mut digests: Vec<Digest> = Vec::with_capacity(entries.len());
        let mut values = Vec::with_capacity(entries.len());
        for (digest, value) in entries {
            let d: Digest = digest.as_slice().try_into().map_err(|_| {
                PyValueError::new_err(format!(
                    "a key's SHA-256 has 32 bytes, not {}",
                    digest.len()
                ))
            })?;
            digests.push(d);
            values.push(value);
        }
        Ok(Self {
            table: KeyTable::new(&digests),
            values,
        })
    }

    /// The object of the configured key whose SHA-256 is `presented`'s, or None.
    fn lookup(&self, py: Python<'_>, presented: &[u8]) -> Option<Py<PyAny>> {
        self.table
            .find(presented)
            .map(|i| self.values[i].clone_ref(py))
    }

    /// How many keys were found once and are remembered as presented (at most one
    /// per configured digest): found again without a SHA-256.
    fn remembered(&self) -> usize {
        self.table.remembered()
    }

    fn __len__(&self) -> usize {
        self.table.len()
    }
}
