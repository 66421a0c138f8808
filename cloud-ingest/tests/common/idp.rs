//! A local identity provider for the OIDC tests: a real HTTP server (axum, on a free port)
//! that publishes a JSON Web Key Set the test can change (key rotation), counts how often it
//! is fetched, and the signing keys that go with it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::{Context, Result, anyhow};
use axum::Router;
use axum::routing::get;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::SystemRandom;
use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use tokio::task::JoinHandle;

/// The RSA key pair of RFC 7515, appendix A.2: a published test key, so the tests need no
/// key generation, and a known answer ([`RFC7515_SIGNATURE`]) proves it is transcribed right.
const RFC7515_N: &str = "ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ";
const RFC7515_E: &str = "AQAB";
const RFC7515_D: &str = "Eq5xpGnNCivDflJsRQBXHx1hdR1k6Ulwe2JZD50LpXyWPEAeP88vLNO97IjlA7_GQ5sLKMgvfTeXZx9SE-7YwVol2NXOoAJe46sui395IW_GO-pWJ1O0BkTGoVEn2bKVRUCgu-GjBVaYLU6f3l9kJfFNS3E0QbVdxzubSu3Mkqzjkn439X0M_V51gfpRLI9JYanrC4D4qAdGcopV_0ZHHzQlBjudU2QvXt4ehNYTCBr6XCLQUShb1juUO1ZdiYoFaFQT5Tw8bGUl_x_jTj3ccPDVZFD9pIuhLhBOneufuBiB4cS98l2SR_RQyGWSeWjnczT0QU91p1DhOVRuOopznQ";
const RFC7515_P: &str = "4BzEEOtIpmVdVEZNCqS7baC4crd0pqnRH_5IB3jw3bcxGn6QLvnEtfdUdiYrqBdss1l58BQ3KhooKeQTa9AB0Hw_Py5PJdTJNPY8cQn7ouZ2KKDcmnPGBY5t7yLc1QlQ5xHdwW1VhvKn-nXqhJTBgIPgtldC-KDV5z-y2XDwGUc";
const RFC7515_Q: &str = "uQPEfgmVtjL0Uyyx88GZFF1fOunH3-7cepKmtH4pxhtCoHqpWmT8YAmZxaewHgHAjLYsp1ZSe7zFYHj7C6ul7TjeLQeZD_YwD66t62wDmpe_HlB-TnBA-njbglfIsRLtXlnDzQkv5dTltRJ11BKBBypeeF6689rjcJIDEz9RWdc";
const RFC7515_DP: &str = "BwKfV3Akq5_MFZDFZCnW-wzl-CCo83WoZvnLQwCTeDv8uzluRSnm71I3QCLdhrqE2e9YkxvuxdBfpT_PI7Yz-FOKnu1R6HsJeDCjn12Sk3vmAktV2zb34MCdy7cpdTh_YVr7tss2u6vneTwrA86rZtu5Mbr1C1XsmvkxHQAdYo0";
const RFC7515_DQ: &str = "h_96-mK1R_7glhsum81dZxjTnYynPbZpHziZjeeHcXYsXaaMwkOlODsWa7I9xXDoRwbKgB719rrmI2oKr6N3Do9U0ajaHF-NKJnwgjMd2w9cjz3_-kyNlxAr2v4IKhGNpmM5iIgOS1VZnOZ68m6_pbLBSp3nssTdlqvd0tIiTHU";
const RFC7515_QI: &str = "IYd7DHOhrWvxkwPQsRM2tOgrjbcrfvtQJipd-DlcxyVuuM9sQLdgjVk2oy26F0EmpScGLq2MowX7fhd_QJQ3ydy5cY7YIBi87w93IKLEdfnbJtoOPLUW0ITrJReOgo1cq9SbsxYawBgfp_gh6A5603k2-ZQwVK0JKSHuLFkuQ3U";
/// The signing input and signature of the RFC 7515 A.2 example.
pub const RFC7515_SIGNING_INPUT: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";
pub const RFC7515_SIGNATURE: &str = "cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

fn b64(text: &str) -> Result<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).context("base64url")
}

enum Pair {
    Rsa(ring::rsa::KeyPair),
    Ec(EcdsaKeyPair),
}

/// A key the provider signs tokens with.
pub struct SigningKey {
    pub kid: String,
    pair: Pair,
    jwk: Value,
}

impl SigningKey {
    /// The RFC 7515 RSA key (RS256).
    pub fn rfc7515_rsa(kid: &str) -> Result<SigningKey> {
        let (n, e) = (b64(RFC7515_N)?, b64(RFC7515_E)?);
        let components = ring::rsa::KeyPairComponents {
            public_key: ring::rsa::PublicKeyComponents {
                n: n.as_slice(),
                e: e.as_slice(),
            },
            d: b64(RFC7515_D)?,
            p: b64(RFC7515_P)?,
            q: b64(RFC7515_Q)?,
            dP: b64(RFC7515_DP)?,
            dQ: b64(RFC7515_DQ)?,
            qInv: b64(RFC7515_QI)?,
        };
        let pair = ring::rsa::KeyPair::from_components(&components)
            .map_err(|e| anyhow!("RFC 7515 key: {e}"))?;
        Ok(SigningKey {
            kid: kid.to_owned(),
            pair: Pair::Rsa(pair),
            jwk: json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256",
                "n": RFC7515_N, "e": RFC7515_E}),
        })
    }

    /// A fresh P-256 key (ES256).
    pub fn new_es256(kid: &str) -> Result<SigningKey> {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .map_err(|e| anyhow!("generating a P-256 key: {e}"))?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .map_err(|e| anyhow!("P-256 key: {e}"))?;
        let point = pair.public_key().as_ref().to_vec();
        Ok(SigningKey {
            kid: kid.to_owned(),
            jwk: json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": URL_SAFE_NO_PAD.encode(&point[1..33]), "y": URL_SAFE_NO_PAD.encode(&point[33..])}),
            pair: Pair::Ec(pair),
        })
    }

    /// The public key as the provider publishes it.
    pub fn jwk(&self) -> Value {
        self.jwk.clone()
    }

    fn alg(&self) -> &'static str {
        match self.pair {
            Pair::Rsa(_) => "RS256",
            Pair::Ec(_) => "ES256",
        }
    }

    /// A signature of `input`, base64url.
    pub fn signature(&self, input: &str) -> Result<String> {
        let rng = SystemRandom::new();
        let bytes = match &self.pair {
            Pair::Rsa(pair) => {
                let mut sig = vec![0; pair.public().modulus_len()];
                pair.sign(
                    &ring::signature::RSA_PKCS1_SHA256,
                    &rng,
                    input.as_bytes(),
                    &mut sig,
                )
                .map_err(|e| anyhow!("RSA signing: {e}"))?;
                sig
            }
            Pair::Ec(pair) => pair
                .sign(&rng, input.as_bytes())
                .map_err(|e| anyhow!("ECDSA signing: {e}"))?
                .as_ref()
                .to_vec(),
        };
        Ok(URL_SAFE_NO_PAD.encode(bytes))
    }

    /// A JWT of `claims`, with this key's `alg` and `kid`.
    pub fn sign(&self, claims: &Value) -> Result<String> {
        self.sign_with_header(
            &json!({"alg": self.alg(), "kid": self.kid, "typ": "JWT"}),
            claims,
        )
    }

    /// A JWT with the given header (which may lie about `alg` or `kid`).
    pub fn sign_with_header(&self, header: &Value, claims: &Value) -> Result<String> {
        let input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        );
        let signature = self.signature(&input)?;
        Ok(format!("{input}.{signature}"))
    }
}

/// The provider: publishes a key set at [`IdentityProvider::jwks_url`].
pub struct IdentityProvider {
    addr: SocketAddr,
    keys: Arc<Mutex<Vec<Value>>>,
    fetches: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

impl IdentityProvider {
    /// Serves an empty key set on a free port.
    pub async fn start() -> Result<IdentityProvider> {
        let keys: Arc<Mutex<Vec<Value>>> = Arc::default();
        let fetches: Arc<AtomicUsize> = Arc::default();
        let (served, counted) = (keys.clone(), fetches.clone());
        let app = Router::new().route(
            "/realms/factory/protocol/openid-connect/certs",
            get(move || {
                let (served, counted) = (served.clone(), counted.clone());
                async move {
                    counted.fetch_add(1, Ordering::SeqCst);
                    let keys = served.lock().map(|k| k.clone()).unwrap_or_default();
                    axum::Json(json!({ "keys": keys }))
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(IdentityProvider {
            addr,
            keys,
            fetches,
            task,
        })
    }

    pub fn issuer(&self) -> String {
        format!("http://{}/realms/factory", self.addr)
    }

    pub fn jwks_url(&self) -> String {
        format!("{}/protocol/openid-connect/certs", self.issuer())
    }

    /// Adds a key to the published set.
    pub fn publish(&self, key: &SigningKey) {
        if let Ok(mut keys) = self.keys.lock() {
            keys.push(key.jwk());
        }
    }

    /// How often the key set was fetched.
    pub fn fetches(&self) -> usize {
        self.fetches.load(Ordering::SeqCst)
    }
}

impl Drop for IdentityProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}
