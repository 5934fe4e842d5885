//! JWT (JWS compact) verification: HS256/384/512, RS256/384/512,
//! PS256/384/512, ES256/384 and `EdDSA` (Ed25519), with `ring` doing the
//! cryptography.
//!
//! A [`Verifier`] holds a [`KeySet`] and the checks to make. Verification runs
//! in a fixed order, and the first failing step gives the [`Reason`] (the
//! Python reference `fastgw/_reference/jwt.py` follows the same order):
//!
//! 1. three base64url parts (strict: no padding, no stray bits) and a header
//!    that is a JSON object with a string `alg` and at most a string `kid`,
//!    and no `crit` -> `Malformed`;
//! 2. `alg` known, never `none`, and in the allowed list -> `UnsupportedAlg`;
//! 3. key choice: with a `kid`, the keys carrying it, or failing that the
//!    keys that have no `kid` (none of either -> `UnknownKid`);
//!    of those (or of all keys, without a `kid`), the ones whose type fits
//!    `alg` and whose own `alg`, if any, equals it (none -> `UnsupportedAlg`:
//!    this is what refuses an HS256 token signed with an RSA public key);
//! 4. signature and payload decode -> `Malformed`; signature valid under one
//!    of the keys -> `BadSignature`;
//! 5. payload a JSON object -> `Malformed`;
//! 6. required claims present -> `MissingClaim`; `iat`, `nbf`, `exp` numbers
//!    (else `Malformed`): `iat > now + leeway` or `nbf > now + leeway` ->
//!    `NotYetValid`, `exp <= now - leeway` -> `Expired`;
//! 7. with issuers configured: `iss` present (`MissingClaim`) and one of them
//!    (`BadIssuer`);
//! 8. with audiences configured: `aud` present (`MissingClaim`), a string or
//!    a list of strings, sharing one value with them (`BadAudience`); without,
//!    a token that names an audience is refused (`BadAudience`), as `PyJWT` does.

use std::borrow::Cow;
use std::fmt;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::hmac;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

/// Why a token was refused; `code()` is what a 401 message may carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Not a well-formed JWS compact token.
    Malformed,
    /// `alg` unknown, `none`, not allowed, or not usable with the chosen key.
    UnsupportedAlg,
    /// No key carries the token's `kid`.
    UnknownKid,
    /// The signature does not verify.
    BadSignature,
    /// `exp` has passed.
    Expired,
    /// `nbf` or `iat` is in the future.
    NotYetValid,
    /// `iss` is not an accepted issuer.
    BadIssuer,
    /// `aud` shares no value with the accepted audiences.
    BadAudience,
    /// A required claim is absent.
    MissingClaim,
}

impl Reason {
    /// Stable snake-case code.
    #[must_use]
    pub fn code(self) -> &'static str {
        match self {
            Reason::Malformed => "malformed",
            Reason::UnsupportedAlg => "unsupported_alg",
            Reason::UnknownKid => "unknown_kid",
            Reason::BadSignature => "bad_signature",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::BadIssuer => "bad_issuer",
            Reason::BadAudience => "bad_audience",
            Reason::MissingClaim => "missing_claim",
        }
    }
}

/// A refused token: the reason and a message saying what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtError {
    /// The failing check.
    pub reason: Reason,
    /// Human-readable detail (never contains key material).
    pub message: String,
}

impl fmt::Display for JwtError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for JwtError {}

fn fail<T>(reason: Reason, message: impl Into<String>) -> Result<T, JwtError> {
    Err(JwtError {
        reason,
        message: message.into(),
    })
}

/// Key material or configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyError(pub String);

impl fmt::Display for KeyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for KeyError {}

fn key_err<T>(msg: impl Into<String>) -> Result<T, KeyError> {
    Err(KeyError(msg.into()))
}

/// A JWS algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs, clippy::upper_case_acronyms)]
pub enum Alg {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Alg {
    /// Every supported algorithm.
    pub const ALL: [Alg; 12] = [
        Alg::HS256,
        Alg::HS384,
        Alg::HS512,
        Alg::RS256,
        Alg::RS384,
        Alg::RS512,
        Alg::PS256,
        Alg::PS384,
        Alg::PS512,
        Alg::ES256,
        Alg::ES384,
        Alg::EdDSA,
    ];

    /// The algorithm named `name` (case-sensitive, as in the JWS header).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == name)
    }

    /// The JWS name.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Alg::HS256 => "HS256",
            Alg::HS384 => "HS384",
            Alg::HS512 => "HS512",
            Alg::RS256 => "RS256",
            Alg::RS384 => "RS384",
            Alg::RS512 => "RS512",
            Alg::PS256 => "PS256",
            Alg::PS384 => "PS384",
            Alg::PS512 => "PS512",
            Alg::ES256 => "ES256",
            Alg::ES384 => "ES384",
            Alg::EdDSA => "EdDSA",
        }
    }

    /// True for the public-key algorithms, whose verification is worth
    /// releasing the GIL for.
    #[must_use]
    pub fn is_slow(self) -> bool {
        !matches!(self, Alg::HS256 | Alg::HS384 | Alg::HS512)
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// Key material of one key.
#[derive(Clone)]
pub enum Material {
    /// An HMAC secret, keyed once per hash.
    Hmac(Box<[hmac::Key; 3]>),
    /// An RSA public key (big-endian, no leading zeros).
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Public exponent.
        e: Vec<u8>,
    },
    /// A P-256 public point, uncompressed.
    P256(Vec<u8>),
    /// A P-384 public point, uncompressed.
    P384(Vec<u8>),
    /// An Ed25519 public key.
    Ed25519(Vec<u8>),
}

impl fmt::Debug for Material {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Material::Hmac(_) => "Hmac",
            Material::Rsa { .. } => "Rsa",
            Material::P256(_) => "P256",
            Material::P384(_) => "P384",
            Material::Ed25519(_) => "Ed25519",
        })
    }
}

impl Material {
    fn fits(&self, alg: Alg) -> bool {
        matches!(
            (self, alg),
            (Material::Hmac(_), Alg::HS256 | Alg::HS384 | Alg::HS512)
                | (
                    Material::Rsa { .. },
                    Alg::RS256 | Alg::RS384 | Alg::RS512 | Alg::PS256 | Alg::PS384 | Alg::PS512
                )
                | (Material::P256(_), Alg::ES256)
                | (Material::P384(_), Alg::ES384)
                | (Material::Ed25519(_), Alg::EdDSA)
        )
    }

    /// Verifies `sig` over `msg` with `alg` (which `fits` this key).
    fn verify(&self, alg: Alg, msg: &[u8], sig: &[u8]) -> bool {
        match self {
            Material::Hmac(keys) => {
                let k = match alg {
                    Alg::HS256 => &keys[0],
                    Alg::HS384 => &keys[1],
                    _ => &keys[2],
                };
                hmac::verify(k, msg, sig).is_ok()
            }
            Material::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Alg::RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Alg::RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Alg::RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Alg::PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Alg::PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    _ => &signature::RSA_PSS_2048_8192_SHA512,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .is_ok()
            }
            Material::P256(p) => UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, p)
                .verify(msg, sig)
                .is_ok(),
            Material::P384(p) => UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, p)
                .verify(msg, sig)
                .is_ok(),
            Material::Ed25519(k) => UnparsedPublicKey::new(&signature::ED25519, k)
                .verify(msg, sig)
                .is_ok(),
        }
    }

    fn hmac(secret: &[u8]) -> Material {
        Material::Hmac(Box::new([
            hmac::Key::new(hmac::HMAC_SHA256, secret),
            hmac::Key::new(hmac::HMAC_SHA384, secret),
            hmac::Key::new(hmac::HMAC_SHA512, secret),
        ]))
    }

    /// Checks an RSA key the way ring will use it: 2048 to 8192 bits, odd
    /// exponent in [3, 2^33).
    fn rsa(n: &[u8], e: &[u8]) -> Result<Material, KeyError> {
        let n = strip_zeros(n);
        let e = strip_zeros(e);
        let bits = match n.first() {
            Some(&b) => (n.len() - 1) * 8 + (8 - b.leading_zeros() as usize),
            None => 0,
        };
        if !(2048..=8192).contains(&bits) {
            return key_err(format!(
                "RSA modulus of {bits} bits: 2048 to 8192 are accepted"
            ));
        }
        if e.len() > 5 {
            return key_err("RSA exponent too large");
        }
        let ev = e.iter().fold(0_u64, |acc, &b| (acc << 8) | u64::from(b));
        if ev < 3 || ev % 2 == 0 || ev >= 1 << 33 {
            return key_err("RSA exponent must be odd, >= 3 and < 2^33");
        }
        Ok(Material::Rsa {
            n: n.to_vec(),
            e: e.to_vec(),
        })
    }
}

fn strip_zeros(b: &[u8]) -> &[u8] {
    let i = b.iter().position(|&x| x != 0).unwrap_or(b.len());
    &b[i..]
}

/// One key: an optional `kid`, an optional pinned `alg`, and its material.
#[derive(Debug, Clone)]
pub struct Key {
    /// Key id matched against the token header's `kid`.
    pub kid: Option<String>,
    /// When set, the only algorithm this key verifies.
    pub alg: Option<Alg>,
    /// The public key or secret.
    pub material: Material,
}

impl Key {
    fn accepts(&self, alg: Alg) -> bool {
        self.material.fits(alg) && self.alg.is_none_or(|a| a == alg)
    }
}

/// Lenient base64url for key material (padding optional, as JWKS in the
/// wild vary).
const KEY_B64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::URL_SAFE,
    GeneralPurposeConfig::new()
        .with_decode_padding_mode(DecodePaddingMode::Indifferent)
        .with_decode_allow_trailing_bits(true),
);

fn jwk_bytes(obj: &Map<String, Value>, field: &str) -> Result<Vec<u8>, KeyError> {
    match obj.get(field) {
        Some(Value::String(s)) => KEY_B64
            .decode(s)
            .map_err(|e| KeyError(format!("JWK field {field:?}: {e}"))),
        _ => key_err(format!("JWK has no string field {field:?}")),
    }
}

/// An immutable set of keys.
#[derive(Debug, Clone, Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

const OID_RSA: &str = "1.2.840.113549.1.1.1";
const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_P384: &str = "1.3.132.0.34";
const OID_ED25519: &str = "1.3.101.112";

#[derive(der::Sequence)]
struct RsaPublicKeyDer<'a> {
    modulus: der::asn1::UintRef<'a>,
    public_exponent: der::asn1::UintRef<'a>,
}

fn rsa_from_pkcs1(der_bytes: &[u8]) -> Result<Material, KeyError> {
    let k: RsaPublicKeyDer<'_> = der::Decode::from_der(der_bytes)
        .map_err(|e| KeyError(format!("bad RSA public key: {e}")))?;
    Material::rsa(k.modulus.as_bytes(), k.public_exponent.as_bytes())
}

impl KeySet {
    /// The keys, in load order.
    #[must_use]
    pub fn keys(&self) -> &[Key] {
        &self.keys
    }

    /// A set holding one HMAC secret.
    #[must_use]
    pub fn from_secret(secret: &[u8], kid: Option<String>, alg: Option<Alg>) -> KeySet {
        KeySet {
            keys: vec![Key {
                kid,
                alg,
                material: Material::hmac(secret),
            }],
        }
    }

    /// Loads a JWKS document (`{"keys": [...]}`) or a single JWK object.
    /// Keys that are not for signatures (`use` other than `sig`), that name an
    /// algorithm not supported here, or of an unsupported type or curve are
    /// skipped; keys of a supported type with bad fields are errors.
    ///
    /// # Errors
    /// Not JSON, not a JWKS, a bad supported key, or no usable key.
    pub fn from_jwks(json: &[u8]) -> Result<KeySet, KeyError> {
        let v: Value = serde_json::from_slice(json)
            .map_err(|e| KeyError(format!("JWKS is not valid JSON: {e}")))?;
        let list = match &v {
            Value::Object(o) if o.contains_key("keys") => match o.get("keys") {
                Some(Value::Array(a)) => a.clone(),
                _ => return key_err("JWKS \"keys\" must be an array"),
            },
            Value::Object(_) => vec![v.clone()],
            _ => return key_err("JWKS must be a JSON object"),
        };
        let mut keys = Vec::new();
        for (i, k) in list.iter().enumerate() {
            let Value::Object(obj) = k else {
                return key_err(format!("JWKS key {i} is not an object"));
            };
            if let Some(key) = Self::jwk(obj).map_err(|e| KeyError(format!("JWKS key {i}: {e}")))? {
                keys.push(key);
            }
        }
        if keys.is_empty() {
            return key_err("JWKS holds no usable signature key");
        }
        Ok(KeySet { keys })
    }

    fn jwk(obj: &Map<String, Value>) -> Result<Option<Key>, KeyError> {
        let text = |f: &str| -> Result<Option<&str>, KeyError> {
            match obj.get(f) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.as_str())),
                Some(_) => key_err(format!("JWK field {f:?} must be a string")),
            }
        };
        if text("use")?.is_some_and(|u| u != "sig") {
            return Ok(None);
        }
        let alg = match text("alg")? {
            Some(name) => match Alg::from_name(name) {
                Some(a) => Some(a),
                None => return Ok(None),
            },
            None => None,
        };
        let kid = text("kid")?.map(str::to_owned);
        let material = match text("kty")? {
            Some("oct") => Material::hmac(&jwk_bytes(obj, "k")?),
            Some("RSA") => Material::rsa(&jwk_bytes(obj, "n")?, &jwk_bytes(obj, "e")?)?,
            Some("EC") => {
                let size = match text("crv")? {
                    Some("P-256") => 32,
                    Some("P-384") => 48,
                    _ => return Ok(None),
                };
                let x = jwk_bytes(obj, "x")?;
                let y = jwk_bytes(obj, "y")?;
                if x.len() != size || y.len() != size {
                    return key_err("EC coordinates have the wrong length for the curve");
                }
                let mut p = Vec::with_capacity(1 + 2 * size);
                p.push(4);
                p.extend_from_slice(&x);
                p.extend_from_slice(&y);
                if size == 32 {
                    Material::P256(p)
                } else {
                    Material::P384(p)
                }
            }
            Some("OKP") => {
                if text("crv")? != Some("Ed25519") {
                    return Ok(None);
                }
                let x = jwk_bytes(obj, "x")?;
                if x.len() != 32 {
                    return key_err("Ed25519 key must be 32 bytes");
                }
                Material::Ed25519(x)
            }
            Some(_) => return Ok(None),
            None => return key_err("JWK has no \"kty\""),
        };
        let key = Key { kid, alg, material };
        if let Some(a) = alg {
            if !key.material.fits(a) {
                return key_err(format!("JWK alg {} does not fit its key type", a.name()));
            }
        }
        Ok(Some(key))
    }

    /// Loads one public key in PEM: `PUBLIC KEY` (`SubjectPublicKeyInfo`: RSA,
    /// P-256, P-384, Ed25519) or `RSA PUBLIC KEY` (PKCS#1).
    ///
    /// # Errors
    /// Not one PEM public key of a supported kind.
    pub fn from_pem(pem: &[u8], kid: Option<String>, alg: Option<Alg>) -> Result<KeySet, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError("PEM is not text".into()))?;
        let (label, der_bytes) = pem_rfc7468::decode_vec(text.trim().as_bytes())
            .map_err(|e| KeyError(format!("bad PEM: {e}")))?;
        let material = match label {
            "RSA PUBLIC KEY" => rsa_from_pkcs1(&der_bytes)?,
            "PUBLIC KEY" => {
                let info = spki::SubjectPublicKeyInfoRef::try_from(der_bytes.as_slice())
                    .map_err(|e| KeyError(format!("bad public key: {e}")))?;
                let raw = info
                    .subject_public_key
                    .as_bytes()
                    .ok_or_else(|| KeyError("public key bit string is not whole bytes".into()))?;
                let oid = info.algorithm.oid.to_string();
                match oid.as_str() {
                    OID_RSA => rsa_from_pkcs1(raw)?,
                    OID_EC => {
                        let curve = info
                            .algorithm
                            .parameters_oid()
                            .map_err(|_| KeyError("EC key without a named curve".into()))?
                            .to_string();
                        match (curve.as_str(), raw.len()) {
                            (OID_P256, 65) if raw[0] == 4 => Material::P256(raw.to_vec()),
                            (OID_P384, 97) if raw[0] == 4 => Material::P384(raw.to_vec()),
                            (OID_P256 | OID_P384, _) => {
                                return key_err("EC point must be uncompressed")
                            }
                            _ => return key_err(format!("unsupported EC curve {curve}")),
                        }
                    }
                    OID_ED25519 if raw.len() == 32 => Material::Ed25519(raw.to_vec()),
                    _ => return key_err(format!("unsupported public key algorithm {oid}")),
                }
            }
            other => return key_err(format!("PEM holds a {other:?}, not a public key")),
        };
        if let Some(a) = alg {
            if !material.fits(a) {
                return key_err(format!("algorithm {} does not fit this key", a.name()));
            }
        }
        Ok(KeySet {
            keys: vec![Key { kid, alg, material }],
        })
    }

    /// This set followed by `other`'s keys.
    #[must_use]
    pub fn union(&self, other: &KeySet) -> KeySet {
        KeySet {
            keys: self.keys.iter().chain(&other.keys).cloned().collect(),
        }
    }
}

/// What a verifier checks besides the signature.
#[derive(Debug, Clone, Default)]
pub struct Config {
    /// Algorithms accepted (never `none`).
    pub algorithms: Vec<Alg>,
    /// Accepted `iss` values; `None` skips the check.
    pub issuers: Option<Vec<String>>,
    /// Accepted `aud` values; `None` refuses tokens naming an audience.
    pub audiences: Option<Vec<String>>,
    /// Seconds of clock skew allowed on `exp`, `nbf` and `iat`.
    pub leeway: f64,
    /// Claims that must be present.
    pub require: Vec<String>,
}

/// The time claims of a verified token, kept to re-check a cached one.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Times {
    /// `iat`, if present.
    pub iat: Option<f64>,
    /// `nbf`, if present.
    pub nbf: Option<f64>,
    /// `exp`, if present.
    pub exp: Option<f64>,
}

impl Times {
    /// Checks the time claims at `now` (step 6 after the type checks).
    ///
    /// # Errors
    /// `NotYetValid` or `Expired`.
    pub fn check(&self, now: f64, leeway: f64) -> Result<(), JwtError> {
        if let Some(iat) = self.iat {
            if iat > now + leeway {
                return fail(
                    Reason::NotYetValid,
                    "token is not yet valid (iat is in the future)",
                );
            }
        }
        if let Some(nbf) = self.nbf {
            if nbf > now + leeway {
                return fail(Reason::NotYetValid, "token is not yet valid (nbf)");
            }
        }
        if let Some(exp) = self.exp {
            if exp <= now - leeway {
                return fail(Reason::Expired, "token has expired");
            }
        }
        Ok(())
    }
}

/// A token split, decoded and matched to keys, before its signature check.
#[derive(Debug)]
pub struct Prepared<'t> {
    /// The header's algorithm.
    pub alg: Alg,
    signing_input: &'t [u8],
    signature: Vec<u8>,
    payload: Vec<u8>,
    candidates: Vec<usize>,
}

#[derive(Deserialize)]
struct Header<'a> {
    #[serde(borrow, default)]
    alg: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    kid: Option<Cow<'a, str>>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

fn b64(part: &[u8], what: &str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD.decode(part).or_else(|_| {
        fail(
            Reason::Malformed,
            format!("token {what} is not valid base64url"),
        )
    })
}

/// Verifies tokens against one key set and one [`Config`].
#[derive(Debug)]
pub struct Verifier {
    keys: KeySet,
    cfg: Config,
    allowed: u16,
}

impl Verifier {
    /// A verifier.
    ///
    /// # Errors
    /// No algorithm allowed, or a negative or non-finite leeway.
    pub fn new(keys: KeySet, cfg: Config) -> Result<Verifier, KeyError> {
        if cfg.algorithms.is_empty() {
            return key_err("at least one algorithm must be allowed");
        }
        if !(cfg.leeway.is_finite() && cfg.leeway >= 0.0) {
            return key_err("leeway must be a finite number of seconds >= 0");
        }
        let allowed = cfg.algorithms.iter().fold(0, |acc, a| acc | a.bit());
        Ok(Verifier { keys, cfg, allowed })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Steps 1 to 4 up to (not including) the signature check.
    ///
    /// # Errors
    /// `Malformed`, `UnsupportedAlg` or `UnknownKid`.
    pub fn prepare<'t>(&self, token: &'t [u8]) -> Result<Prepared<'t>, JwtError> {
        let mut parts = token.splitn(4, |&b| b == b'.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return fail(
                Reason::Malformed,
                "token must have three dot-separated parts",
            );
        };
        let header_json = b64(h, "header")?;
        if header_json.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return fail(Reason::Malformed, "token header is not a JSON object");
        }
        // Checked as a whole: serde skips unknown fields without checking
        // their UTF-8.
        let header_text = std::str::from_utf8(&header_json)
            .or_else(|_| fail(Reason::Malformed, "token header is not UTF-8"))?;
        let header: Header<'_> = serde_json::from_str(header_text)
            .or_else(|e| fail(Reason::Malformed, format!("token header is not valid: {e}")))?;
        if header.crit.is_some() {
            return fail(
                Reason::Malformed,
                "the crit header parameter is not supported",
            );
        }
        let Some(alg_name) = header.alg else {
            return fail(Reason::Malformed, "token header has no alg");
        };
        let Some(alg) = Alg::from_name(&alg_name) else {
            return fail(
                Reason::UnsupportedAlg,
                format!("algorithm {alg_name:?} is not supported"),
            );
        };
        if self.allowed & alg.bit() == 0 {
            return fail(
                Reason::UnsupportedAlg,
                format!("algorithm {} is not allowed", alg.name()),
            );
        }
        let keys = self.keys.keys();
        let candidates: Vec<usize> = match &header.kid {
            Some(kid) => {
                let mut same: Vec<usize> = (0..keys.len())
                    .filter(|&i| keys[i].kid.as_deref() == Some(kid.as_ref()))
                    .collect();
                if same.is_empty() {
                    // Keys without a kid (a PEM or secret from configuration)
                    // stand for any kid.
                    same = (0..keys.len()).filter(|&i| keys[i].kid.is_none()).collect();
                }
                if same.is_empty() {
                    return fail(Reason::UnknownKid, format!("no key has kid {kid:?}"));
                }
                same.into_iter().filter(|&i| keys[i].accepts(alg)).collect()
            }
            None => (0..keys.len()).filter(|&i| keys[i].accepts(alg)).collect(),
        };
        if candidates.is_empty() {
            if keys.is_empty() {
                return fail(Reason::UnknownKid, "no key is configured");
            }
            return fail(
                Reason::UnsupportedAlg,
                format!("no key for algorithm {}", alg.name()),
            );
        }
        let signature = b64(s, "signature")?;
        let payload = b64(p, "payload")?;
        Ok(Prepared {
            alg,
            signing_input: &token[..h.len() + 1 + p.len()],
            signature,
            payload,
            candidates,
        })
    }

    /// Step 4's signature check: CPU-heavy for public-key algorithms.
    ///
    /// # Errors
    /// `BadSignature`.
    pub fn check_signature(&self, p: &Prepared<'_>) -> Result<(), JwtError> {
        let keys = self.keys.keys();
        if p.candidates.iter().any(|&i| {
            keys[i]
                .material
                .verify(p.alg, p.signing_input, &p.signature)
        }) {
            Ok(())
        } else {
            fail(Reason::BadSignature, "signature verification failed")
        }
    }

    /// Steps 5 to 8: the claims, checked at `now`.
    ///
    /// # Errors
    /// As listed in the module documentation.
    pub fn claims(
        &self,
        p: &Prepared<'_>,
        now: f64,
    ) -> Result<(Map<String, Value>, Times), JwtError> {
        if p.payload.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
            return fail(Reason::Malformed, "token payload is not a JSON object");
        }
        let claims: Map<String, Value> = serde_json::from_slice(&p.payload).or_else(|e| {
            fail(
                Reason::Malformed,
                format!("token payload is not valid JSON: {e}"),
            )
        })?;
        for name in &self.cfg.require {
            if !claims.contains_key(name) {
                return fail(Reason::MissingClaim, format!("token has no {name:?} claim"));
            }
        }
        let number = |name: &str| -> Result<Option<f64>, JwtError> {
            match claims.get(name) {
                None => Ok(None),
                Some(Value::Number(n)) => Ok(n.as_f64()),
                Some(_) => fail(
                    Reason::Malformed,
                    format!("{name:?} claim must be a number"),
                ),
            }
        };
        let times = Times {
            iat: number("iat")?,
            nbf: number("nbf")?,
            exp: number("exp")?,
        };
        times.check(now, self.cfg.leeway)?;
        if let Some(issuers) = &self.cfg.issuers {
            match claims.get("iss") {
                None => return fail(Reason::MissingClaim, "token has no \"iss\" claim"),
                Some(Value::String(s)) if issuers.iter().any(|i| i == s) => {}
                Some(_) => return fail(Reason::BadIssuer, "token issuer is not accepted"),
            }
        }
        match (&self.cfg.audiences, claims.get("aud")) {
            (None, None) => {}
            (None, Some(_)) => {
                return fail(
                    Reason::BadAudience,
                    "token names an audience but none is configured",
                )
            }
            (Some(_), None) => return fail(Reason::MissingClaim, "token has no \"aud\" claim"),
            (Some(accepted), Some(aud)) => {
                let ok = match aud {
                    Value::String(s) => accepted.iter().any(|a| a == s),
                    Value::Array(items) => {
                        if !items.iter().all(Value::is_string) {
                            return fail(
                                Reason::BadAudience,
                                "aud must be a string or a list of strings",
                            );
                        }
                        items
                            .iter()
                            .any(|v| v.as_str().is_some_and(|s| accepted.iter().any(|a| a == s)))
                    }
                    _ => {
                        return fail(
                            Reason::BadAudience,
                            "aud must be a string or a list of strings",
                        )
                    }
                };
                if !ok {
                    return fail(Reason::BadAudience, "token audience is not accepted");
                }
            }
        }
        Ok((claims, times))
    }

    /// All steps: the claims of a valid token.
    ///
    /// # Errors
    /// The first failing step's reason.
    pub fn verify(&self, token: &[u8], now: f64) -> Result<(Map<String, Value>, Times), JwtError> {
        let p = self.prepare(token)?;
        self.check_signature(&p)?;
        self.claims(&p, now)
    }
}

/// Tokens longer than this are verified but never cached.
pub const MAX_CACHED_TOKEN: usize = 8192;

/// A cached token's value and time claims.
type Cached<V> = (V, Times);

/// An LRU of verified tokens, each kept with its time claims so a hit is
/// re-checked at the caller's `now`. `V` is what the caller keeps (the
/// binding keeps the Python dict of claims).
pub struct TokenCache<V> {
    lru: Option<lru::LruCache<Box<[u8]>, Cached<V>>>,
}

impl<V> TokenCache<V> {
    /// A cache of at most `size` tokens (0 disables it).
    #[must_use]
    pub fn new(size: usize) -> TokenCache<V> {
        TokenCache {
            lru: std::num::NonZeroUsize::new(size).map(lru::LruCache::new),
        }
    }

    /// The value for `token` if cached and still valid at `now`; a cached
    /// token that is no longer valid is dropped (the caller then verifies it
    /// in full, which gives the right error).
    pub fn get(&mut self, token: &[u8], now: f64, leeway: f64) -> Option<&V> {
        let lru = self.lru.as_mut()?;
        let valid = lru.peek(token)?.1.check(now, leeway).is_ok();
        if !valid {
            lru.pop(token);
            return None;
        }
        lru.get(token).map(|(v, _)| v)
    }

    /// True when `put` would keep a token of this length.
    #[must_use]
    pub fn accepts(&self, token: &[u8]) -> bool {
        self.lru.is_some() && token.len() <= MAX_CACHED_TOKEN
    }

    /// Remembers a verified token (if [`TokenCache::accepts`] it).
    pub fn put(&mut self, token: &[u8], value: V, times: Times) {
        if !self.accepts(token) {
            return;
        }
        if let Some(lru) = self.lru.as_mut() {
            lru.put(token.into(), (value, times));
        }
    }

    /// Number of cached tokens.
    #[must_use]
    pub fn len(&self) -> usize {
        self.lru.as_ref().map_or(0, lru::LruCache::len)
    }

    /// True when nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets every token.
    pub fn clear(&mut self) {
        if let Some(lru) = self.lru.as_mut() {
            lru.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign_hs256(secret: &[u8], header: &str, payload: &str) -> String {
        let h = URL_SAFE_NO_PAD.encode(header);
        let p = URL_SAFE_NO_PAD.encode(payload);
        let input = format!("{h}.{p}");
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, secret), input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(tag.as_ref()))
    }

    fn verifier(cfg: Config) -> Verifier {
        Verifier::new(KeySet::from_secret(SECRET, Some("k1".into()), None), cfg).unwrap()
    }

    fn hs_cfg() -> Config {
        Config {
            algorithms: vec![Alg::HS256],
            ..Config::default()
        }
    }

    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";

    #[test]
    fn valid_hs256_gives_claims() {
        let t = sign_hs256(SECRET, r#"{"alg":"HS256"}"#, r#"{"sub":"u1","exp":2000}"#);
        let (claims, times) = verifier(hs_cfg()).verify(t.as_bytes(), 1000.0).unwrap();
        assert_eq!(claims["sub"], "u1");
        assert_eq!(times.exp, Some(2000.0));
    }

    fn reason(v: &Verifier, token: &str, now: f64) -> Reason {
        v.verify(token.as_bytes(), now).unwrap_err().reason
    }

    /// (header, payload, signing secret, now, expected refusal)
    type Case<'a> = (&'a str, &'a str, &'a [u8], f64, Option<Reason>);

    #[test]
    fn each_failure_has_its_reason() {
        let v = verifier(Config {
            algorithms: vec![Alg::HS256],
            issuers: Some(vec!["iss-a".into()]),
            audiences: Some(vec!["aud-a".into()]),
            leeway: 5.0,
            require: vec!["exp".into()],
        });
        let ok = r#"{"exp":2000,"iss":"iss-a","aud":["x","aud-a"]}"#;
        let h = r#"{"alg":"HS256"}"#;
        let cases: &[Case<'_>] = &[
            (h, ok, SECRET, 1000.0, None),
            (h, ok, SECRET, 2004.9, None),
            (h, ok, SECRET, 2005.0, Some(Reason::Expired)),
            (h, ok, b"other", 1000.0, Some(Reason::BadSignature)),
            (
                r#"{"alg":"none"}"#,
                ok,
                SECRET,
                1000.0,
                Some(Reason::UnsupportedAlg),
            ),
            (
                r#"{"alg":"HS512"}"#,
                ok,
                SECRET,
                1000.0,
                Some(Reason::UnsupportedAlg),
            ),
            (
                r#"{"alg":"HS256","kid":"k9"}"#,
                ok,
                SECRET,
                1000.0,
                Some(Reason::UnknownKid),
            ),
            (
                h,
                r#"{"iss":"iss-a","aud":"aud-a"}"#,
                SECRET,
                1000.0,
                Some(Reason::MissingClaim),
            ),
            (
                h,
                r#"{"exp":2000,"nbf":1500,"iss":"iss-a","aud":"aud-a"}"#,
                SECRET,
                1000.0,
                Some(Reason::NotYetValid),
            ),
            (
                h,
                r#"{"exp":2000,"iss":"x","aud":"aud-a"}"#,
                SECRET,
                1000.0,
                Some(Reason::BadIssuer),
            ),
            (
                h,
                r#"{"exp":2000,"iss":"iss-a","aud":"b"}"#,
                SECRET,
                1000.0,
                Some(Reason::BadAudience),
            ),
            (
                h,
                r#"{"exp":"2000","iss":"iss-a","aud":"aud-a"}"#,
                SECRET,
                1000.0,
                Some(Reason::Malformed),
            ),
            (h, "[1]", SECRET, 1000.0, Some(Reason::Malformed)),
            ("[\"HS256\"]", ok, SECRET, 1000.0, Some(Reason::Malformed)),
            (
                r#"{"alg":"HS256","crit":["x"]}"#,
                ok,
                SECRET,
                1000.0,
                Some(Reason::Malformed),
            ),
        ];
        for &(header, payload, secret, now, want) in cases {
            let got = v
                .verify(sign_hs256(secret, header, payload).as_bytes(), now)
                .err()
                .map(|e| e.reason);
            assert_eq!(got, want, "{header} {payload} at {now}");
        }
        for bad in ["a.b", "a.b.c.d", &format!("{}=", sign_hs256(SECRET, h, ok))] {
            assert_eq!(reason(&v, bad, 1000.0), Reason::Malformed, "{bad}");
        }
    }

    #[test]
    fn hmac_token_against_rsa_key_is_refused() {
        // The classic confusion: an HS256 token whose "secret" is the RSA
        // public key. An RSA-only key set has no key for HS256.
        let n = vec![0xC5_u8; 256];
        let keys = KeySet {
            keys: vec![Key {
                kid: None,
                alg: None,
                material: Material::rsa(&n, &[1, 0, 1]).unwrap(),
            }],
        };
        let v = Verifier::new(
            keys,
            Config {
                algorithms: vec![Alg::HS256, Alg::RS256],
                ..Config::default()
            },
        )
        .unwrap();
        let t = sign_hs256(&n, r#"{"alg":"HS256"}"#, "{}");
        assert_eq!(
            v.verify(t.as_bytes(), 0.0).unwrap_err().reason,
            Reason::UnsupportedAlg
        );
    }

    #[test]
    fn weak_rsa_keys_are_refused() {
        assert!(Material::rsa(&[0xC5; 128], &[1, 0, 1]).is_err());
        assert!(Material::rsa(&[0xC5; 256], &[2]).is_err());
    }

    #[test]
    fn jwks_skips_unusable_keys_and_rejects_bad_ones() {
        let jwks = br#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"a"},{"kty":"RSA","use":"enc","n":"AA","e":"AQAB"},{"kty":"OKP","crv":"Ed448","x":"AA"}]}"#;
        let ks = KeySet::from_jwks(jwks).unwrap();
        assert_eq!(ks.keys().len(), 1);
        assert!(
            KeySet::from_jwks(br#"{"keys":[{"kty":"EC","crv":"P-256","x":"AA","y":"AA"}]}"#)
                .is_err()
        );
        assert!(KeySet::from_jwks(b"[]").is_err());
        assert!(KeySet::from_jwks(br#"{"keys":[]}"#).is_err());
        assert!(KeySet::from_pem(
            b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
            None,
            None
        )
        .is_err());
    }

    #[test]
    fn cache_rechecks_time() {
        let mut c: TokenCache<u32> = TokenCache::new(2);
        c.put(
            b"t1",
            1,
            Times {
                exp: Some(100.0),
                ..Times::default()
            },
        );
        assert_eq!(c.get(b"t1", 50.0, 0.0), Some(&1));
        assert_eq!(c.get(b"t1", 100.0, 0.0), None);
        assert!(c.is_empty());
        c.put(b"a", 1, Times::default());
        c.put(b"b", 2, Times::default());
        c.put(b"c", 3, Times::default());
        assert_eq!(c.len(), 2);
        assert_eq!(c.get(b"a", 0.0, 0.0), None);
    }
}
