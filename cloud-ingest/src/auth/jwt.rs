//! Verifying an OIDC bearer JWT, without I/O: parse, pick the key, check the signature (ring),
//! check the claims, map them to a [`Principal`].
//!
//! # The checks, in order
//!
//! 1. **Shape.** A compact JWS: three base64url parts (no padding) separated by dots, at most
//!    [`MAX_TOKEN_LEN`] bytes. The header is a JSON object with `alg`; a `crit` header (an
//!    extension we would have to understand) is refused.
//! 2. **Algorithm.** `alg` must be one of the configured algorithms. `none` (an unsigned
//!    token) and the HMAC family (`HS256`..., whose "key" would be public) can never be
//!    configured, so a token cannot choose its own way around the signature.
//! 3. **Key.** The key named by `kid` in the provider's key set, and it must fit the
//!    algorithm: RSA keys for `RS*`/`PS*` (2048 to 8192 bits), P-256 for `ES256`, P-384 for
//!    `ES384`, Ed25519 for `EdDSA`; a key that names its own `alg` must name this one. A token
//!    without `kid` is accepted only when exactly one key fits. A `kid` the set does not know
//!    makes the caller ([`super::jwks`]) fetch the set again.
//! 4. **Signature** over `header.payload` as sent, with ring.
//! 5. **Claims.** `iss` equals the configured issuer; `aud` (a string or an array) contains
//!    the configured audience; `exp` is required and `nbf` optional, both with the configured
//!    clock skew.
//!
//! Every failure is a [`JwtError`] whose message is fixed text: nothing the caller sent (a
//! `kid`, an `alg`, a claim) ends up in a response header or a log line.
//!
//! Size: under 470 lines of code; the rest of the file is the tests of every refusal above,
//! kept beside the checks they hold to.

use std::collections::{BTreeMap, BTreeSet};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde::Deserialize;
use serde_json::{Map, Value};

pub use crate::jwa::Algorithm;
use crate::principal::{Principal, Scope, Via};

/// Longer tokens are refused before any decoding.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The claims of a verified token.
pub type Claims = Map<String, Value>;

/// Why a token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JwtError {
    Malformed,
    Unsigned,
    Algorithm,
    Critical,
    UnknownKey,
    Signature,
    Expired,
    NotYetValid,
    Issuer,
    Audience,
    Subject,
}

impl JwtError {
    /// Fixed text, safe for a response's `error_description` and for logs.
    pub fn reason(self) -> &'static str {
        match self {
            JwtError::Malformed => "malformed token",
            JwtError::Unsigned => "unsigned token (alg none)",
            JwtError::Algorithm => "signature algorithm not accepted",
            JwtError::Critical => "token uses critical header extensions",
            JwtError::UnknownKey => "no key of the issuer fits the token",
            JwtError::Signature => "signature does not verify",
            JwtError::Expired => "token expired",
            JwtError::NotYetValid => "token not valid yet",
            JwtError::Issuer => "wrong issuer",
            JwtError::Audience => "wrong audience",
            JwtError::Subject => "token has no subject",
        }
    }
}

impl std::fmt::Display for JwtError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.reason())
    }
}

impl std::error::Error for JwtError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
}

/// The public part of one key of the provider's set.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Material {
    Rsa {
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// The uncompressed point `04 || x || y`.
    Ec {
        curve: Curve,
        point: Vec<u8>,
    },
    Ed25519(Vec<u8>),
}

/// One verification key (a JWK of the provider's set).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Key {
    kid: Option<String>,
    /// The algorithm the key is restricted to, when the JWK names one.
    alg: Option<String>,
    material: Material,
}

impl Key {
    /// Whether this key may verify `alg` signatures.
    fn fits(&self, alg: Algorithm) -> bool {
        if self.alg.as_deref().is_some_and(|named| named != alg.name()) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Rsa { .. }, alg) => alg.rsa().is_some(),
            (Material::Ec { curve, .. }, Algorithm::ES256) => *curve == Curve::P256,
            (Material::Ec { curve, .. }, Algorithm::ES384) => *curve == Curve::P384,
            (Material::Ed25519(_), Algorithm::EdDSA) => true,
            _ => false,
        }
    }

    fn verify(&self, alg: Algorithm, message: &[u8], sig: &[u8]) -> bool {
        if !self.fits(alg) {
            return false;
        }
        match &self.material {
            Material::Rsa { n, e } => alg.rsa().is_some_and(|params| {
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, sig)
                    .is_ok()
            }),
            Material::Ec { curve, point } => {
                let algorithm = match curve {
                    Curve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    Curve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(algorithm, point)
                    .verify(message, sig)
                    .is_ok()
            }
            Material::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, sig)
                .is_ok(),
        }
    }
}

/// The provider's key set (JWKS), as far as it holds signature keys we can use.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeySet {
    keys: Vec<Key>,
}

#[derive(Deserialize)]
struct JwkSetDoc {
    keys: Vec<Value>,
}

#[derive(Deserialize)]
struct JwkDoc {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(rename = "use", default)]
    use_: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

impl KeySet {
    /// Reads a JWKS document. Keys that cannot verify signatures (encryption keys, symmetric
    /// keys, unknown types or curves) are left out; their count is returned beside the set.
    pub fn from_json(body: &[u8]) -> Result<(KeySet, usize), serde_json::Error> {
        let doc: JwkSetDoc = serde_json::from_slice(body)?;
        let total = doc.keys.len();
        let keys: Vec<Key> = doc
            .keys
            .into_iter()
            .filter_map(|value| Key::from_jwk(serde_json::from_value(value).ok()?))
            .collect();
        let skipped = total - keys.len();
        Ok((KeySet { keys }, skipped))
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The key for a token's `kid` and `alg`: the one with that id, or, for a token without
    /// `kid`, the only key that fits.
    pub fn find(&self, kid: Option<&str>, alg: Algorithm) -> Option<&Key> {
        match kid {
            Some(kid) => self
                .keys
                .iter()
                .find(|key| key.kid.as_deref() == Some(kid) && key.fits(alg)),
            None => {
                let mut fitting = self.keys.iter().filter(|key| key.fits(alg));
                let only = fitting.next()?;
                fitting.next().is_none().then_some(only)
            }
        }
    }
}

impl Key {
    fn from_jwk(jwk: JwkDoc) -> Option<Key> {
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return None;
        }
        let bytes = |field: &Option<String>| URL_SAFE_NO_PAD.decode(field.as_deref()?).ok();
        let material = match jwk.kty.as_str() {
            "RSA" => {
                let n = bytes(&jwk.n)?;
                let e = bytes(&jwk.e)?;
                // Big-endian integers: a leading zero byte is legal in some encoders, not in ring.
                let strip = |v: Vec<u8>| {
                    let start = v.iter().position(|b| *b != 0).unwrap_or(v.len());
                    v[start..].to_vec()
                };
                Material::Rsa {
                    n: strip(n),
                    e: strip(e),
                }
            }
            "EC" => {
                let (curve, size) = match jwk.crv.as_deref()? {
                    "P-256" => (Curve::P256, 32),
                    "P-384" => (Curve::P384, 48),
                    _ => return None,
                };
                let (x, y) = (bytes(&jwk.x)?, bytes(&jwk.y)?);
                if x.len() != size || y.len() != size {
                    return None;
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                Material::Ec { curve, point }
            }
            "OKP" if jwk.crv.as_deref() == Some("Ed25519") => {
                let x = bytes(&jwk.x)?;
                (x.len() == 32).then_some(())?;
                Material::Ed25519(x)
            }
            _ => return None,
        };
        Some(Key {
            kid: jwk.kid,
            alg: jwk.alg,
            material,
        })
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// A token whose shape and algorithm are acceptable, its signature not yet checked.
#[derive(Debug)]
pub struct Unverified<'a> {
    pub alg: Algorithm,
    pub kid: Option<String>,
    signing_input: &'a str,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

/// Reads a compact JWS and checks its header against the accepted algorithms.
pub fn parse<'a>(token: &'a str, accepted: &[Algorithm]) -> Result<Unverified<'a>, JwtError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(JwtError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let decode = |part: &str| {
        URL_SAFE_NO_PAD
            .decode(part)
            .map_err(|_| JwtError::Malformed)
    };
    let header: Header =
        serde_json::from_slice(&decode(header)?).map_err(|_| JwtError::Malformed)?;
    if header.alg.eq_ignore_ascii_case("none") {
        return Err(JwtError::Unsigned);
    }
    let alg = Algorithm::from_name(&header.alg)
        .filter(|alg| accepted.contains(alg))
        .ok_or(JwtError::Algorithm)?;
    if header.crit.is_some() {
        return Err(JwtError::Critical);
    }
    let signature = decode(signature)?;
    if signature.is_empty() {
        return Err(JwtError::Unsigned);
    }
    // Exactly two dots (checked above): the signature covers everything before the last.
    let signing_input = token.rsplit_once('.').map_or("", |(input, _)| input);
    Ok(Unverified {
        alg,
        kid: header.kid,
        signing_input,
        payload: decode(payload)?,
        signature,
    })
}

impl Unverified<'_> {
    /// Checks the signature with `key`; returns the claims.
    pub fn verify(self, key: &Key) -> Result<Claims, JwtError> {
        if !key.verify(self.alg, self.signing_input.as_bytes(), &self.signature) {
            return Err(JwtError::Signature);
        }
        serde_json::from_slice(&self.payload).map_err(|_| JwtError::Malformed)
    }
}

/// What the claims of a verified token must say.
#[derive(Debug, Clone)]
pub struct ClaimRules {
    pub issuer: String,
    pub audience: String,
    /// Tolerance on `exp` and `nbf`, in seconds.
    pub leeway: i64,
}

/// A NumericDate claim (seconds since the epoch; fractions allowed, rounded down).
fn numeric_date(claims: &Claims, name: &str) -> Result<Option<i64>, JwtError> {
    match claims.get(name) {
        None => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .or_else(|| n.as_f64().map(|f| f.floor() as i64))
            .map(Some)
            .ok_or(JwtError::Malformed),
        Some(_) => Err(JwtError::Malformed),
    }
}

impl ClaimRules {
    /// Checks issuer, audience and validity period at `now` (seconds since the epoch).
    pub fn check(&self, claims: &Claims, now: i64) -> Result<(), JwtError> {
        if claims.get("iss").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(JwtError::Issuer);
        }
        let audience_ok = match claims.get("aud") {
            Some(Value::String(aud)) => *aud == self.audience,
            Some(Value::Array(auds)) => auds
                .iter()
                .any(|aud| aud.as_str() == Some(self.audience.as_str())),
            _ => false,
        };
        if !audience_ok {
            return Err(JwtError::Audience);
        }
        let exp = numeric_date(claims, "exp")?.ok_or(JwtError::Malformed)?;
        if now >= exp.saturating_add(self.leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = numeric_date(claims, "nbf")?
            && now.saturating_add(self.leeway) < nbf
        {
            return Err(JwtError::NotYetValid);
        }
        Ok(())
    }
}

/// How the claims of a verified token become a [`Principal`].
#[derive(Debug, Clone)]
pub struct ClaimMapping {
    /// Path of the claim holding scopes or roles.
    pub scopes_claim: String,
    /// Claim value -> scopes it grants.
    pub roles: BTreeMap<String, Vec<Scope>>,
    pub name_claim: String,
    pub environments_claim: Option<String>,
}

/// A claim by path: the whole path as one claim name first (names may contain dots, e.g. a
/// URL), then as a path into nested objects (`realm_access.roles`).
fn claim<'a>(claims: &'a Claims, path: &str) -> Option<&'a Value> {
    if let Some(value) = claims.get(path) {
        return Some(value);
    }
    let mut parts = path.split('.');
    let mut value = claims.get(parts.next()?)?;
    for part in parts {
        value = value.as_object()?.get(part)?;
    }
    Some(value)
}

/// The values of a claim that is a space-separated string or an array of strings.
fn values(value: Option<&Value>) -> Vec<&str> {
    match value {
        Some(Value::String(s)) => s.split_whitespace().collect(),
        Some(Value::Array(items)) => items.iter().filter_map(Value::as_str).collect(),
        _ => Vec::new(),
    }
}

impl ClaimMapping {
    /// The caller a verified token stands for.
    pub fn principal(&self, claims: &Claims) -> Result<Principal, JwtError> {
        let subject = claims.get("sub").and_then(Value::as_str);
        let name = claims
            .get(&self.name_claim)
            .and_then(Value::as_str)
            .or(subject)
            .filter(|name| !name.is_empty())
            .ok_or(JwtError::Subject)?;
        let mut scopes = BTreeSet::new();
        for value in values(claim(claims, &self.scopes_claim)) {
            if let Ok(scope) = value.parse::<Scope>() {
                scopes.insert(scope);
            }
            if let Some(granted) = self.roles.get(value) {
                scopes.extend(granted.iter().copied());
            }
        }
        let environments = self.environments_claim.as_ref().map(|path| {
            values(claim(claims, path))
                .into_iter()
                .map(str::to_owned)
                .collect()
        });
        Ok(Principal {
            name: name.to_owned(),
            via: Via::Oidc,
            scopes,
            environments,
        })
    }
}

#[cfg(test)]
mod tests {
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
    use serde_json::json;

    use super::*;

    /// The RSA key of RFC 7515, appendix A.2 (public part).
    const RFC7515_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddx\
        HmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMs\
        D1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSH\
        SXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdV\
        MTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8\
        NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
    /// The RS256 example token of RFC 7515, appendix A.2.
    const RFC7515_TOKEN: &str = "eyJhbGciOiJSUzI1NiJ9.\
        eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.\
        cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5\
        jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1\
        L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOY\
        EUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

    fn rfc_keys() -> KeySet {
        let jwks = json!({"keys": [{"kty": "RSA", "kid": "rfc", "n": RFC7515_N, "e": "AQAB"}]});
        KeySet::from_json(jwks.to_string().as_bytes())
            .expect("jwks")
            .0
    }

    /// A fresh P-256 key pair and its JWK.
    fn es256_key(kid: &str) -> (EcdsaKeyPair, Value) {
        let rng = SystemRandom::new();
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).expect("key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .expect("key pair");
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
            "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])});
        (pair, jwk)
    }

    fn es256_token(pair: &EcdsaKeyPair, header: Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let sig = pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("sign");
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn rules() -> ClaimRules {
        ClaimRules {
            issuer: "https://login.example/realms/factory".to_owned(),
            audience: "cloud-ingest".to_owned(),
            leeway: 60,
        }
    }

    fn claims(value: Value) -> Claims {
        value.as_object().cloned().expect("object")
    }

    #[test]
    fn the_rfc_7515_rs256_example_verifies_and_a_changed_byte_does_not() {
        let keys = rfc_keys();
        let token = parse(RFC7515_TOKEN, &[Algorithm::RS256]).expect("parses");
        assert_eq!(token.kid, None);
        let key = keys.find(None, Algorithm::RS256).expect("the only key");
        let claims = token.verify(key).expect("verifies");
        assert_eq!(claims["iss"], json!("joe"));

        let mut tampered = RFC7515_TOKEN.replace("eyJpc3MiOiJqb2Ui", "eyJpc3MiOiJqb2Yi");
        assert_ne!(tampered, RFC7515_TOKEN);
        let token = parse(&tampered, &[Algorithm::RS256]).expect("parses");
        assert_eq!(token.verify(key), Err(JwtError::Signature));
        tampered = format!("{}A", &RFC7515_TOKEN[..RFC7515_TOKEN.len() - 1]);
        let token = parse(&tampered, &[Algorithm::RS256]).expect("parses");
        assert_eq!(token.verify(key), Err(JwtError::Signature));
    }

    #[test]
    fn an_algorithm_not_configured_is_refused_before_any_key_is_looked_at() {
        assert_eq!(
            parse(RFC7515_TOKEN, &[Algorithm::ES256]).err(),
            Some(JwtError::Algorithm)
        );
    }

    #[test]
    fn unsigned_and_hmac_tokens_are_refused() {
        let claims = URL_SAFE_NO_PAD.encode(r#"{"iss":"x"}"#);
        for (alg, expected) in [
            ("none", JwtError::Unsigned),
            ("None", JwtError::Unsigned),
            ("HS256", JwtError::Algorithm),
        ] {
            let header = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}"}}"#));
            for token in [
                format!("{header}.{claims}."),
                format!("{header}.{claims}.c2lnbmF0dXJl"),
            ] {
                assert_eq!(
                    parse(&token, &Algorithm::ALL).err(),
                    Some(expected),
                    "{token}"
                );
            }
        }
        // A signature part that is present but empty is unsigned, whatever alg says.
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        assert_eq!(
            parse(&format!("{header}.{claims}."), &Algorithm::ALL).err(),
            Some(JwtError::Unsigned)
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let header = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256"}"#);
        let crit = URL_SAFE_NO_PAD.encode(r#"{"alg":"RS256","crit":["exp"]}"#);
        for (token, expected) in [
            ("".to_owned(), JwtError::Malformed),
            ("a.b".to_owned(), JwtError::Malformed),
            ("a.b.c.d".to_owned(), JwtError::Malformed),
            (format!("{header}=.e30.c2ln"), JwtError::Malformed),
            (format!("{header}.e30.c2ln=="), JwtError::Malformed),
            ("bm90IGpzb24.e30.c2ln".to_owned(), JwtError::Malformed),
            (format!("{crit}.e30.c2ln"), JwtError::Critical),
            ("a".repeat(MAX_TOKEN_LEN + 1), JwtError::Malformed),
        ] {
            assert_eq!(
                parse(&token, &Algorithm::ALL).err(),
                Some(expected),
                "{token:.60}"
            );
        }
    }

    #[test]
    fn keys_are_chosen_by_kid_and_must_fit_the_algorithm() {
        let (pair, jwk) = es256_key("ec-1");
        let rsa =
            json!({"kty": "RSA", "kid": "rsa-1", "n": RFC7515_N, "e": "AQAB", "alg": "RS256"});
        let enc = json!({"kty": "RSA", "kid": "enc", "use": "enc", "n": RFC7515_N, "e": "AQAB"});
        let hmac = json!({"kty": "oct", "kid": "hmac", "k": "c2VjcmV0"});
        let doc = json!({"keys": [jwk, rsa, enc, hmac]});
        let (keys, skipped) = KeySet::from_json(doc.to_string().as_bytes()).expect("jwks");
        assert_eq!((keys.len(), skipped), (2, 2));
        assert!(keys.find(Some("ec-1"), Algorithm::ES256).is_some());
        assert!(keys.find(Some("ec-1"), Algorithm::RS256).is_none());
        assert!(keys.find(Some("rsa-1"), Algorithm::RS256).is_some());
        assert!(
            keys.find(Some("rsa-1"), Algorithm::PS256).is_none(),
            "the JWK names RS256"
        );
        assert!(keys.find(Some("enc"), Algorithm::RS256).is_none());
        assert!(keys.find(Some("ec-9"), Algorithm::ES256).is_none());
        assert!(keys.find(None, Algorithm::ES256).is_some(), "one EC key");

        // An ES256 token signed by ec-1 verifies with ec-1 only.
        let token = es256_token(
            &pair,
            json!({"alg": "ES256", "kid": "ec-1"}),
            &json!({"sub": "a"}),
        );
        let parsed = parse(&token, &[Algorithm::ES256]).expect("parses");
        let key = keys.find(parsed.kid.as_deref(), parsed.alg).expect("key");
        assert_eq!(parsed.verify(key).expect("verifies")["sub"], json!("a"));
        let (_, other) = es256_key("ec-1");
        let other_keys = KeySet::from_json(json!({"keys": [other]}).to_string().as_bytes())
            .expect("jwks")
            .0;
        let parsed = parse(&token, &[Algorithm::ES256]).expect("parses");
        let key = other_keys
            .find(Some("ec-1"), Algorithm::ES256)
            .expect("key");
        assert_eq!(parsed.verify(key).err(), Some(JwtError::Signature));
    }

    #[test]
    fn claims_are_checked_with_the_clock_skew() {
        let rules = rules();
        let now = 1_800_000_000;
        let good =
            json!({"iss": rules.issuer, "aud": "cloud-ingest", "exp": now + 300, "sub": "a"});
        assert_eq!(rules.check(&claims(good.clone()), now), Ok(()));
        let mut aud_list = good.clone();
        aud_list["aud"] = json!(["account", "cloud-ingest"]);
        assert_eq!(rules.check(&claims(aud_list), now), Ok(()));

        let cases = [
            ("iss", json!("https://evil.example"), JwtError::Issuer),
            ("aud", json!("other"), JwtError::Audience),
            ("aud", json!(["a", "b"]), JwtError::Audience),
            ("exp", json!(now - 61), JwtError::Expired),
            ("exp", json!("tomorrow"), JwtError::Malformed),
            ("nbf", json!(now + 61), JwtError::NotYetValid),
        ];
        for (claim, value, expected) in cases {
            let mut bad = good.clone();
            bad[claim] = value;
            assert_eq!(rules.check(&claims(bad), now), Err(expected), "{claim}");
        }
        // Within the skew: expired 59 s ago, valid from 59 s on.
        let mut skewed = good.clone();
        skewed["exp"] = json!(now - 59);
        skewed["nbf"] = json!(now + 59);
        assert_eq!(rules.check(&claims(skewed), now), Ok(()));
        let mut no_exp = good.clone();
        no_exp.as_object_mut().expect("object").remove("exp");
        assert_eq!(rules.check(&claims(no_exp), now), Err(JwtError::Malformed));
        let mut no_aud = good;
        no_aud.as_object_mut().expect("object").remove("aud");
        assert_eq!(rules.check(&claims(no_aud), now), Err(JwtError::Audience));
    }

    #[test]
    fn scopes_come_from_the_claim_directly_or_through_roles() {
        let mapping = ClaimMapping {
            scopes_claim: "realm_access.roles".to_owned(),
            roles: BTreeMap::from([("capture-viewer".to_owned(), vec![Scope::ClipsRead])]),
            name_claim: "preferred_username".to_owned(),
            environments_claim: Some("capture_envs".to_owned()),
        };
        let keycloak = claims(json!({"sub": "f1", "preferred_username": "ana",
            "realm_access": {"roles": ["offline_access", "capture-viewer", "stations:read"]},
            "capture_envs": "dev prod"}));
        let principal = mapping.principal(&keycloak).expect("principal");
        assert_eq!(principal.name, "ana");
        assert_eq!(
            principal.scopes,
            BTreeSet::from([Scope::ClipsRead, Scope::StationsRead])
        );
        assert_eq!(
            principal.environments,
            Some(vec!["dev".into(), "prod".into()])
        );

        let azure = ClaimMapping {
            scopes_claim: "scp".to_owned(),
            roles: BTreeMap::new(),
            name_claim: "preferred_username".to_owned(),
            environments_claim: None,
        };
        let service = claims(json!({"sub": "b6c7", "scp": "clips:read openid"}));
        let principal = azure.principal(&service).expect("principal");
        assert_eq!(principal.name, "b6c7", "falls back to sub");
        assert_eq!(principal.scopes, BTreeSet::from([Scope::ClipsRead]));
        assert_eq!(principal.environments, None);
        assert_eq!(
            azure.principal(&claims(json!({"scp": "clips:read"}))).err(),
            Some(JwtError::Subject)
        );
        let nothing = azure
            .principal(&claims(json!({"sub": "x"})))
            .expect("principal");
        assert!(nothing.scopes.is_empty());
    }
}
