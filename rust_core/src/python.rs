//! The Python face (DESIGN.md "Python face of rust_core"): thin wrappers over the domain modules.
//! Errors cross the boundary here and only here; exceptions are defined in rust_core/_errors.py.

use std::time::{SystemTime, UNIX_EPOCH};

use pyo3::exceptions::{PyKeyError, PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyTuple};

use crate::cbor::Value;
use crate::claims::{Licence, SERIAL_LEN};
use crate::dcc::{DccKey, DccTrustStore};
use crate::keys::{self, Alg, KeyError, SigningKey, VerifyingKey};
use crate::qr::{QrCode, QrError};
use crate::seal;
use crate::trust::{self, TrustStore};
use crate::verdict::{Claims, Outcome, Verdict};
use crate::{base45, qr_issue, qr_render, uscc};

pyo3::import_exception!(rust_core._errors, LicenceError);
pyo3::import_exception!(rust_core._errors, KeyFormatError);
pyo3::import_exception!(rust_core._errors, ClaimsError);
pyo3::import_exception!(rust_core._errors, TrustListError);
pyo3::import_exception!(rust_core._errors, Base45Error);

impl From<KeyError> for PyErr {
    fn from(e: KeyError) -> PyErr {
        match e {
            KeyError::UnsupportedAlg(_) => LicenceError::new_err(e.to_string()),
            _ => KeyFormatError::new_err(e.to_string()),
        }
    }
}

impl From<trust::TrustListError> for PyErr {
    fn from(e: trust::TrustListError) -> PyErr {
        TrustListError::new_err(e.0)
    }
}

impl From<QrError> for PyErr {
    fn from(e: QrError) -> PyErr {
        PyValueError::new_err(e.to_string())
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[pyclass(name = "SigningKey", module = "rust_core", frozen)]
struct PySigningKey {
    key: SigningKey,
    kid: [u8; 8],
}

impl PySigningKey {
    fn wrap(key: SigningKey) -> PySigningKey {
        let kid = key.verifying_key().kid();
        PySigningKey { key, kid }
    }
}

#[pymethods]
impl PySigningKey {
    #[staticmethod]
    #[pyo3(signature = (alg = "EdDSA"))]
    fn generate(alg: &str) -> PyResult<PySigningKey> {
        Ok(Self::wrap(SigningKey::generate(seal::parse_alg_name(
            alg,
        )?)?))
    }

    #[staticmethod]
    fn from_pem(pem: &Bound<'_, PyAny>) -> PyResult<PySigningKey> {
        Ok(Self::wrap(SigningKey::from_pkcs8_pem(&pem_text(pem)?)?))
    }

    fn to_pem(&self) -> String {
        self.key.to_pkcs8_pem()
    }

    #[getter]
    fn alg(&self) -> &'static str {
        self.key.alg().name()
    }

    #[getter]
    fn kid<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.kid)
    }

    fn public_spki<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.key.verifying_key().spki_der())
    }

    fn public_pem(&self) -> String {
        self.key.verifying_key().spki_pem()
    }

    fn verifying_key(&self) -> PyVerifyingKey {
        PyVerifyingKey::wrap(self.key.verifying_key())
    }

    fn sign_licence(&self, claims: &Bound<'_, PyAny>) -> PyResult<String> {
        let licence = licence_from_py(claims).map_err(|e| prefix_err(e, "claims"))?;
        seal::issue(&self.key, &self.kid, &licence).map_err(ClaimsError::new_err)
    }

    /// Claims are copied and checked first (with the GIL), then signed on every core without it.
    fn sign_many(&self, py: Python<'_>, claims: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
        let licences = licences_from_py(claims)?;
        let texts = py.detach(|| seal::issue_many(&self.key, &self.kid, &licences));
        texts
            .into_iter()
            .enumerate()
            .map(|(i, t)| t.map_err(|e| ClaimsError::new_err(format!("claims[{i}]: {e}"))))
            .collect()
    }

    /// sign_many that also draws each licence's QR code: (text, SVG, PNG) per claims. Claims are
    /// copied and checked first (with the GIL), then signed and drawn on every core without it.
    #[pyo3(signature = (claims, module_px = 4))]
    fn issue_many<'py>(
        &self,
        py: Python<'py>,
        claims: &Bound<'py, PyAny>,
        module_px: i64,
    ) -> PyResult<Vec<(String, String, Bound<'py, PyBytes>)>> {
        let px = qr_render::check_module_px(module_px)?;
        let licences = licences_from_py(claims)?;
        let issued = py.detach(|| qr_issue::issue_many(&self.key, &self.kid, &licences, px));
        issued
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let r = r.map_err(|e| ClaimsError::new_err(format!("claims[{i}]: {e}")))?;
                Ok((r.text, r.svg, PyBytes::new(py, &r.png)))
            })
            .collect()
    }

    #[pyo3(signature = (payload, external_aad = b"".as_slice(), tagged = true), text_signature = "($self, payload, external_aad=b'', tagged=True)")]
    fn sign_cose<'py>(
        &self,
        py: Python<'py>,
        payload: &[u8],
        external_aad: &[u8],
        tagged: bool,
    ) -> Bound<'py, PyBytes> {
        PyBytes::new(
            py,
            &crate::cose::sign1(&self.key, &self.kid, payload, external_aad, tagged),
        )
    }

    fn __repr__(&self) -> String {
        format!(
            "<SigningKey {} kid={}>",
            self.key.alg(),
            hex::encode(self.kid)
        )
    }
}

#[pyclass(name = "VerifyingKey", module = "rust_core", frozen)]
struct PyVerifyingKey {
    key: VerifyingKey,
    kid: [u8; 8],
}

impl PyVerifyingKey {
    fn wrap(key: VerifyingKey) -> PyVerifyingKey {
        let kid = key.kid();
        PyVerifyingKey { key, kid }
    }
}

#[pymethods]
impl PyVerifyingKey {
    #[staticmethod]
    fn from_spki(der: &[u8]) -> PyResult<PyVerifyingKey> {
        Ok(Self::wrap(VerifyingKey::from_spki_der(der)?))
    }

    #[staticmethod]
    fn from_pem(pem: &Bound<'_, PyAny>) -> PyResult<PyVerifyingKey> {
        Ok(Self::wrap(VerifyingKey::from_spki_pem(&pem_text(pem)?)?))
    }

    #[getter]
    fn alg(&self) -> &'static str {
        self.key.alg().name()
    }

    #[getter]
    fn kid<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.kid)
    }

    fn spki<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.key.spki_der())
    }

    fn to_pem(&self) -> String {
        self.key.spki_pem()
    }

    fn __repr__(&self) -> String {
        format!(
            "<VerifyingKey {} kid={}>",
            self.key.alg(),
            hex::encode(self.kid)
        )
    }
}

#[pyclass(name = "Verification", module = "rust_core", frozen)]
struct PyVerification {
    outcome: Outcome,
}

#[pymethods]
impl PyVerification {
    #[getter]
    fn verdict(&self) -> &'static str {
        self.outcome.verdict.as_str()
    }

    #[getter]
    fn kid<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyBytes>> {
        self.outcome.kid.as_deref().map(|k| PyBytes::new(py, k))
    }

    #[getter]
    fn alg(&self) -> Option<&'static str> {
        self.outcome.alg.map(Alg::name)
    }

    /// Built on each access: results of a bulk run cost nothing until someone looks.
    #[getter]
    fn claims<'py>(&self, py: Python<'py>) -> PyResult<Option<Bound<'py, PyDict>>> {
        self.outcome
            .claims
            .as_ref()
            .map(|c| claims_to_py(py, c))
            .transpose()
    }

    #[getter]
    fn stage(&self) -> Option<&'static str> {
        self.outcome.stage.map(|s| s.as_str())
    }

    #[getter]
    fn detail(&self) -> Option<&str> {
        self.outcome.detail.as_deref()
    }

    #[getter]
    fn valid(&self) -> bool {
        self.outcome.is_valid()
    }

    fn __bool__(&self) -> bool {
        self.outcome.is_valid()
    }

    fn __repr__(&self) -> String {
        match &self.outcome.detail {
            Some(d) => format!("<Verification {}: {d}>", self.outcome.verdict.as_str()),
            None => format!("<Verification {}>", self.outcome.verdict.as_str()),
        }
    }
}

fn wrap_outcomes(outcomes: Vec<Outcome>) -> Vec<PyVerification> {
    outcomes
        .into_iter()
        .map(|outcome| PyVerification { outcome })
        .collect()
}

#[pyclass(name = "TrustStore", module = "rust_core", frozen)]
struct PyTrustStore {
    store: TrustStore,
}

#[pymethods]
impl PyTrustStore {
    #[staticmethod]
    #[pyo3(signature = (trust_json, revoked_json = None))]
    fn from_json(trust_json: &str, revoked_json: Option<&str>) -> PyResult<PyTrustStore> {
        Ok(PyTrustStore {
            store: TrustStore::from_json(trust_json, revoked_json)?,
        })
    }

    #[staticmethod]
    #[pyo3(signature = (keys, issuer = "", revoked = None))]
    fn from_keys(
        keys: &Bound<'_, PyAny>,
        issuer: &str,
        revoked: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<PyTrustStore> {
        let keys = verifying_keys(keys)?;
        let revoked = match revoked {
            Some(r) => serial_list(r)?,
            None => Vec::new(),
        };
        Ok(PyTrustStore {
            store: TrustStore::from_keys(issuer, keys, &revoked)?,
        })
    }

    #[getter]
    fn issuer(&self) -> &str {
        &self.store.issuer
    }

    #[getter]
    fn kids<'py>(&self, py: Python<'py>) -> Vec<Bound<'py, PyBytes>> {
        self.store
            .kids()
            .iter()
            .map(|k| PyBytes::new(py, k))
            .collect()
    }

    #[getter]
    fn revoked_count(&self) -> usize {
        self.store.revoked_count()
    }

    fn __len__(&self) -> usize {
        self.store.len()
    }

    #[pyo3(signature = (text, at = None))]
    fn verify(&self, text: &str, at: Option<i64>) -> PyVerification {
        PyVerification {
            outcome: self.store.verify(text, at.unwrap_or_else(now)),
        }
    }

    /// Texts are copied out of Python first, then verified on every core without the GIL.
    #[pyo3(signature = (texts, at = None))]
    fn verify_many(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        at: Option<i64>,
    ) -> PyResult<Vec<PyVerification>> {
        let texts = owned_texts(texts)?;
        let at = at.unwrap_or_else(now);
        Ok(wrap_outcomes(
            py.detach(|| self.store.verify_many(&texts, at)),
        ))
    }

    fn to_json(&self) -> String {
        self.store.to_json()
    }
}

#[pyclass(name = "DccTrustStore", module = "rust_core", frozen)]
struct PyDccTrustStore {
    // `add` mutates while the class is frozen (shareable across threads without borrow errors).
    store: std::sync::RwLock<DccTrustStore>,
}

#[pymethods]
impl PyDccTrustStore {
    #[new]
    fn new() -> PyDccTrustStore {
        PyDccTrustStore {
            store: std::sync::RwLock::new(DccTrustStore::default()),
        }
    }

    #[pyo3(signature = (kid, key, not_before = None, not_after = None))]
    fn add(
        &self,
        kid: &[u8],
        key: &PyVerifyingKey,
        not_before: Option<i64>,
        not_after: Option<i64>,
    ) {
        let entry = DccKey {
            key: key.key.clone(),
            not_before,
            not_after,
        };
        self.write().add(kid.to_vec(), entry);
    }

    fn __len__(&self) -> usize {
        self.read().len()
    }

    #[pyo3(signature = (text, at = None))]
    fn verify(&self, text: &str, at: Option<i64>) -> PyVerification {
        PyVerification {
            outcome: self.read().verify(text, at.unwrap_or_else(now)),
        }
    }

    #[pyo3(signature = (texts, at = None))]
    fn verify_many(
        &self,
        py: Python<'_>,
        texts: &Bound<'_, PyAny>,
        at: Option<i64>,
    ) -> PyResult<Vec<PyVerification>> {
        let texts = owned_texts(texts)?;
        let at = at.unwrap_or_else(now);
        Ok(wrap_outcomes(
            py.detach(|| self.read().verify_many(&texts, at)),
        ))
    }
}

impl PyDccTrustStore {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, DccTrustStore> {
        self.store
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, DccTrustStore> {
        self.store
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[pyfunction]
#[pyo3(signature = (cose, key, external_aad = b"".as_slice()), text_signature = "(cose, key, external_aad=b'')")]
fn verify_cose_sign1(cose: &[u8], key: &PyVerifyingKey, external_aad: &[u8]) -> &'static str {
    seal::verify_cose(cose, &key.key, external_aad).0.as_str()
}

/// (verdict, payload, detail): the payload only when the verdict is "valid".
#[pyfunction]
#[pyo3(signature = (cose, key, external_aad = b"".as_slice()), text_signature = "(cose, key, external_aad=b'')")]
fn open_cose_sign1<'py>(
    py: Python<'py>,
    cose: &[u8],
    key: &PyVerifyingKey,
    external_aad: &[u8],
) -> (&'static str, Option<Bound<'py, PyBytes>>, String) {
    match seal::open_cose(cose, &key.key, external_aad) {
        Ok(payload) => ("valid", Some(PyBytes::new(py, payload)), String::new()),
        Err((verdict, detail)) => (verdict.as_str(), None, detail),
    }
}

#[pyfunction]
fn base45_encode(data: &[u8]) -> String {
    base45::encode(data)
}

#[pyfunction]
fn base45_decode<'py>(py: Python<'py>, text: &str) -> PyResult<Bound<'py, PyBytes>> {
    base45::decode(text)
        .map(|b| PyBytes::new(py, &b))
        .map_err(|e| Base45Error::new_err(e.to_string()))
}

#[pyfunction]
fn kid_of_spki<'py>(py: Python<'py>, der: &[u8]) -> Bound<'py, PyBytes> {
    PyBytes::new(py, &keys::kid_of_spki(der))
}

#[pyfunction]
fn uscc_check_char(first17: &str) -> PyResult<String> {
    uscc::check_char(first17).map(String::from).ok_or_else(|| {
        PyValueError::new_err(format!(
            "{first17:?} is not 17 unified social credit code characters"
        ))
    })
}

#[pyfunction]
fn uscc_is_valid(code: &str) -> bool {
    uscc::is_valid(code)
}

#[pyfunction]
fn trust_list_json(keys: &Bound<'_, PyAny>, issuer: &str) -> PyResult<String> {
    Ok(trust::trust_list_json(issuer, &verifying_keys(keys)?))
}

#[pyfunction]
fn revocation_list_json(serials: &Bound<'_, PyAny>) -> PyResult<String> {
    Ok(trust::revocation_list_json(&serial_list(serials)?))
}

/// The QR code of a LIC1 text as SVG (alphanumeric mode, level Q, 4-module quiet zone).
#[pyfunction]
#[pyo3(signature = (text, module_px = 4))]
fn qr_svg(py: Python<'_>, text: &str, module_px: i64) -> PyResult<String> {
    Ok(py.detach(|| qr_render::svg_of(text, module_px))?)
}

/// The QR code of a LIC1 text as a 1-bit grayscale PNG.
#[pyfunction]
#[pyo3(signature = (text, module_px = 4))]
fn qr_png<'py>(py: Python<'py>, text: &str, module_px: i64) -> PyResult<Bound<'py, PyBytes>> {
    let png = py.detach(|| qr_render::png_of(text, module_px))?;
    Ok(PyBytes::new(py, &png))
}

/// The symbol's modules, rows of '1' (dark) and '0', without the quiet zone.
#[pyfunction]
fn qr_matrix(text: &str) -> PyResult<Vec<String>> {
    Ok(QrCode::encode(text)?.to_strings())
}

// ---- conversions ---------------------------------------------------------------------------

fn pem_text(pem: &Bound<'_, PyAny>) -> PyResult<String> {
    if let Ok(s) = pem.extract::<String>() {
        return Ok(s);
    }
    let bytes: &[u8] = pem
        .extract()
        .map_err(|_| PyTypeError::new_err("PEM must be str or bytes"))?;
    String::from_utf8(bytes.to_vec()).map_err(|_| KeyFormatError::new_err("PEM is not ASCII text"))
}

fn owned_texts(texts: &Bound<'_, PyAny>) -> PyResult<Vec<String>> {
    if texts.is_instance_of::<pyo3::types::PyString>() {
        return Err(PyTypeError::new_err(
            "texts must be a sequence of str, not a str",
        ));
    }
    texts
        .try_iter()?
        .enumerate()
        .map(|(i, t)| {
            t?.extract::<String>()
                .map_err(|_| PyTypeError::new_err(format!("texts[{i}] is not a str")))
        })
        .collect()
}

fn verifying_keys(keys: &Bound<'_, PyAny>) -> PyResult<Vec<VerifyingKey>> {
    keys.try_iter()?
        .map(|k| {
            let k = k?;
            if let Ok(v) = k.cast::<PyVerifyingKey>() {
                Ok(v.get().key.clone())
            } else if let Ok(s) = k.cast::<PySigningKey>() {
                Ok(s.get().key.verifying_key())
            } else {
                Err(PyTypeError::new_err(
                    "keys must be VerifyingKey or SigningKey objects",
                ))
            }
        })
        .collect()
}

fn serial_list(items: &Bound<'_, PyAny>) -> PyResult<Vec<[u8; SERIAL_LEN]>> {
    items
        .try_iter()?
        .map(|s| {
            let s = s?;
            let b: &[u8] = s
                .extract()
                .map_err(|_| PyTypeError::new_err("serials must be bytes"))?;
            <[u8; SERIAL_LEN]>::try_from(b).map_err(|_| {
                PyValueError::new_err(format!("a serial is {} bytes, not {SERIAL_LEN}", b.len()))
            })
        })
        .collect()
}

fn prefix_err(e: PyErr, what: &str) -> PyErr {
    Python::attach(|py| {
        if e.is_instance_of::<ClaimsError>(py) {
            ClaimsError::new_err(format!("{what}: {}", e.value(py)))
        } else {
            e
        }
    })
}

/// A mapping item, None when absent or None.
fn opt_item<'py>(obj: &Bound<'py, PyAny>, key: &str) -> PyResult<Option<Bound<'py, PyAny>>> {
    match obj.get_item(key) {
        Ok(v) if v.is_none() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(e) if e.is_instance_of::<PyKeyError>(obj.py()) => Ok(None),
        Err(e) => Err(e),
    }
}

fn field<'py, T>(obj: &Bound<'py, PyAny>, key: &str, kind: &str) -> PyResult<Option<T>>
where
    T: for<'a> FromPyObject<'a, 'py>,
{
    opt_item(obj, key)?
        .map(|v| {
            v.extract::<T>()
                .map_err(|_| ClaimsError::new_err(format!("{key} must be {kind}")))
        })
        .transpose()
}

/// Every claims mapping of an iterable, converted and checked; errors name the index.
fn licences_from_py(claims: &Bound<'_, PyAny>) -> PyResult<Vec<Licence>> {
    claims
        .try_iter()?
        .enumerate()
        .map(|(i, c)| licence_from_py(&c?).map_err(|e| prefix_err(e, &format!("claims[{i}]"))))
        .collect()
}

fn licence_from_py(claims: &Bound<'_, PyAny>) -> PyResult<Licence> {
    if !claims.is_instance_of::<PyDict>() && !claims.hasattr("keys")? {
        return Err(PyTypeError::new_err("claims must be a mapping"));
    }
    let required = |name: &str| ClaimsError::new_err(format!("{name} is required"));
    let iss: String = field(claims, "iss", "str")?.ok_or_else(|| required("iss"))?;
    let iat: u64 = field(claims, "iat", "a non-negative int")?.ok_or_else(|| required("iat"))?;
    let exp: Option<u64> = field(claims, "exp", "a non-negative int")?;
    let cti = opt_item(claims, "cti")?.ok_or_else(|| required("cti"))?;
    let cti: &[u8] = cti
        .extract()
        .map_err(|_| ClaimsError::new_err("cti must be bytes"))?;
    let cti = <[u8; SERIAL_LEN]>::try_from(cti).map_err(|_| {
        ClaimsError::new_err(format!("cti must be {SERIAL_LEN} bytes, not {}", cti.len()))
    })?;
    let lic_obj = opt_item(claims, "lic")?.ok_or_else(|| required("lic"))?;
    let lic_dict = lic_obj
        .cast::<PyDict>()
        .map_err(|_| ClaimsError::new_err("lic must be a dict {int: str}"))?;
    let mut lic = Vec::with_capacity(lic_dict.len());
    for (k, v) in lic_dict.iter() {
        let key: u64 = k
            .extract()
            .map_err(|_| ClaimsError::new_err(format!("lic key {k} must be an int 1-9")))?;
        let value: String = v
            .extract()
            .map_err(|_| ClaimsError::new_err(format!("lic field {key} must be str")))?;
        lic.push((key, value));
    }
    lic.sort_by_key(|(k, _)| *k);
    let licence = Licence {
        iss,
        iat,
        exp,
        cti,
        lic,
    };
    licence.check_for_issue().map_err(ClaimsError::new_err)?;
    Ok(licence)
}

fn claims_to_py<'py>(py: Python<'py>, claims: &Claims) -> PyResult<Bound<'py, PyDict>> {
    let d = PyDict::new(py);
    match claims {
        Claims::Licence(l) => {
            d.set_item("iss", &l.iss)?;
            d.set_item("iat", l.iat)?;
            d.set_item("exp", l.exp)?;
            d.set_item("cti", PyBytes::new(py, &l.cti))?;
            let lic = PyDict::new(py);
            for (k, v) in &l.lic {
                lic.set_item(k, v)?;
            }
            d.set_item("lic", lic)?;
        }
        Claims::Dcc(c) => {
            d.set_item("iss", &c.iss)?;
            d.set_item("iat", c.iat)?;
            d.set_item("exp", c.exp)?;
            d.set_item("hcert", value_to_py(py, &c.hcert)?)?;
        }
    }
    Ok(d)
}

fn value_to_py<'py>(py: Python<'py>, v: &Value<'_>) -> PyResult<Bound<'py, PyAny>> {
    Ok(match v {
        Value::Uint(n) => n.into_pyobject(py)?.into_any(),
        Value::Nint(n) => (-1i128 - i128::from(*n)).into_pyobject(py)?.into_any(),
        Value::Bytes(b) => PyBytes::new(py, b).into_any(),
        Value::Text(t) => t.as_ref().into_pyobject(py)?.into_any(),
        Value::Array(items) => PyList::new(
            py,
            items
                .iter()
                .map(|i| value_to_py(py, i))
                .collect::<PyResult<Vec<_>>>()?,
        )?
        .into_any(),
        Value::Map(entries) => {
            let d = PyDict::new(py);
            for (k, val) in entries {
                let key = value_to_py(py, k)?;
                // Lists and dicts cannot be dict keys in Python: use a tuple / their repr.
                let key = if let Ok(list) = key.cast::<PyList>() {
                    PyTuple::new(py, list.iter())?.into_any()
                } else if key.is_instance_of::<PyDict>() {
                    key.repr()?.into_any()
                } else {
                    key
                };
                d.set_item(key, value_to_py(py, val)?)?;
            }
            d.into_any()
        }
        Value::Tag(_, inner) => value_to_py(py, inner)?,
        Value::Bool(b) => b.into_pyobject(py)?.to_owned().into_any(),
        Value::Null | Value::Undefined => py.None().into_bound(py),
        Value::Simple(s) => s.into_pyobject(py)?.into_any(),
        Value::Float(f) => f.into_pyobject(py)?.into_any(),
    })
}

#[pymodule]
#[pyo3(name = "_rust")]
fn rust_module(m: &Bound<'_, PyModule>) -> PyResult<()> {
    let py = m.py();
    m.add_class::<PySigningKey>()?;
    m.add_class::<PyVerifyingKey>()?;
    m.add_class::<PyVerification>()?;
    m.add_class::<PyTrustStore>()?;
    m.add_class::<PyDccTrustStore>()?;
    m.add_function(wrap_pyfunction!(verify_cose_sign1, m)?)?;
    m.add_function(wrap_pyfunction!(open_cose_sign1, m)?)?;
    m.add_function(wrap_pyfunction!(base45_encode, m)?)?;
    m.add_function(wrap_pyfunction!(base45_decode, m)?)?;
    m.add_function(wrap_pyfunction!(kid_of_spki, m)?)?;
    m.add_function(wrap_pyfunction!(uscc_check_char, m)?)?;
    m.add_function(wrap_pyfunction!(uscc_is_valid, m)?)?;
    m.add_function(wrap_pyfunction!(trust_list_json, m)?)?;
    m.add_function(wrap_pyfunction!(revocation_list_json, m)?)?;
    m.add_function(wrap_pyfunction!(qr_svg, m)?)?;
    m.add_function(wrap_pyfunction!(qr_png, m)?)?;
    m.add_function(wrap_pyfunction!(qr_matrix, m)?)?;
    m.add(
        "VERDICTS",
        PyTuple::new(py, Verdict::ALL.iter().map(|v| v.as_str()))?,
    )?;
    m.add(
        "ALGORITHMS",
        PyTuple::new(py, Alg::SIGNING.iter().map(|a| a.name()))?,
    )?;
    m.add("MAX_TEXT_CHARS", seal::MAX_TEXT_CHARS)?;
    m.add("MAX_DECOMPRESSED_BYTES", seal::MAX_DECOMPRESSED_BYTES)?;
    m.add("QR_MAX_CHARS", crate::qr::MAX_CHARS_Q)?;
    Ok(())
}
