//! Who may call the ingest's HTTP API. Every scenario runs the real binary against real
//! PostgreSQL, Garage, Mosquitto and RabbitMQ, creates service tokens with the real `token`
//! CLI, signs JWTs with keys a local identity provider publishes over HTTP, and ends by reading
//! the binary's whole log (at `debug`): no token, no JWT, no URL signature may be in it.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

mod common;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use capture_protocol::Uploaded;
use capture_tests::fixtures::HttpReply;
use capture_tests::fixtures::{
    Garage, Mosquitto, PgDatabase, RabbitMq, free_port, unique_name, wait_until,
};
use cloud_ingest::catalog::{self, Decision, Entry, Pool};
use common::binary::{IngestBinary, create_token, token_cli};
use common::idp::{IdentityProvider, RFC7515_SIGNATURE, RFC7515_SIGNING_INPUT, SigningKey};
use common::{DEADLINE, Servers, clip, http_get, put};
use serde_json::{Value, json};

/// Verbose enough to catch a token in a library's debug output as well as in ours.
const RUST_LOG: &str = "debug";

struct Stack {
    // Held so that the servers and the config's directory live as long as the test.
    _broker: Mosquitto,
    garage: Garage,
    db: PgDatabase,
    _rabbit: RabbitMq,
    _dir: tempfile::TempDir,
    config: PathBuf,
    http_port: u16,
}

impl Stack {
    /// The servers, and an ingest configuration with `extra_tables` (e.g. `[auth.oidc]`).
    async fn start(extra_tables: &str) -> Result<Stack> {
        let (broker, garage, db) =
            tokio::try_join!(Mosquitto::start(), Garage::start(), PgDatabase::create())?;
        let rabbit = RabbitMq::shared();
        let dir = tempfile::tempdir()?;
        let http_port = free_port()?;
        let exchange = rabbit.names().exchange;
        let text = common::config_text(
            &Servers {
                broker: &broker,
                garage: &garage,
                pg_url: db.url(),
                amqp_url: rabbit.url(),
                exchange: &exchange,
                secrets: &dir,
            },
            &unique_name("ingest-auth"),
            http_port,
            "",
            extra_tables,
        )?;
        let config = dir.path().join("ingest.toml");
        std::fs::write(&config, text)?;
        Ok(Stack {
            _broker: broker,
            garage,
            db,
            _rabbit: rabbit,
            _dir: dir,
            config,
            http_port,
        })
    }

    async fn ingest(&self, env: &[(&str, &str)]) -> Result<IngestBinary> {
        let mut all = vec![("RUST_LOG", RUST_LOG)];
        all.extend_from_slice(env);
        IngestBinary::start(&self.config, self.http_port, &all).await
    }

    /// An accepted clip of `order` in the store and the catalog; its content.
    async fn clip_in_catalog(&self, order: &str) -> Result<(Uploaded, Vec<u8>)> {
        let (content, mut uploaded) = clip(order, 4096);
        put(&self.garage, &mut uploaded, content.clone()).await?;
        let pool = Pool::new(self.db.url(), None, 1, Duration::from_secs(5))?;
        catalog::migrate(&pool).await?;
        let entry = Entry {
            raw: serde_json::to_string(&uploaded)?,
            uploaded: uploaded.clone(),
            decision: Decision::Accepted,
        };
        catalog::commit(&pool, &common::env(), &[entry], &[]).await?;
        Ok((uploaded, content))
    }
}

/// The error code and `WWW-Authenticate` of a refusal.
fn refusal(reply: &HttpReply) -> Result<(u16, String, String)> {
    let body = reply.json()?;
    Ok((
        reply.status,
        body["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        reply
            .header("www-authenticate")
            .unwrap_or_default()
            .to_owned(),
    ))
}

/// Fails if any secret, or the secret half of one, appears in the log.
fn assert_log_holds_none_of(log: &str, secrets: &[(&str, &str)]) {
    for (what, secret) in secrets {
        assert!(!secret.is_empty(), "{what}: empty secret in the test");
        assert!(
            !log.contains(secret),
            "{what} appears in the log of the run"
        );
    }
}

/// The parts of a service token or JWT that must never be logged: the whole, and the
/// secret part (the service token's secret, the JWT's payload and signature).
fn secret_parts(token: &str) -> Vec<&str> {
    let mut parts = vec![token];
    if let Some((_, secret)) = cloud_ingest::auth::tokens::split(token) {
        parts.push(secret);
    } else {
        parts.extend(token.split('.').skip(1).filter(|p| p.len() > 8));
    }
    parts
}

fn audit_lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|line| line["target"] == json!("audit"))
        .collect()
}

#[tokio::test]
async fn service_tokens_let_in_only_a_live_token_with_the_routes_scope() -> Result<()> {
    let stack = Stack::start("").await?;
    let metrics_port = free_port()?;
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut ingest = stack
        .ingest(&[("CLOUD_INGEST_HTTP_METRICS_LISTEN", &metrics_listen)])
        .await?;
    let (uploaded, content) = stack.clip_in_catalog("SO-AUTH-1").await?;
    let clips = "/v1/orders/SO-AUTH-1/clips";

    let core = create_token(
        &stack.config,
        "core-system",
        &["--scope", "clips:read,stations:read"],
    )?;
    let board = create_token(&stack.config, "fleet-board", &["--scope", "stations:read"])?;
    let short = create_token(
        &stack.config,
        "short-lived",
        &["--scope", "clips:read", "--expires-in", "2s"],
    )?;
    let dev_only = create_token(
        &stack.config,
        "dev-only",
        &["--scope", "clips:read", "--env", "dev"],
    )?;
    let (core_id, _) = cloud_ingest::auth::tokens::split(&core).context("token format")?;
    let forged = format!("cit_{core_id}_{}", "A".repeat(43));

    // No token, a wrong one, the right id with a wrong secret, another scheme: 401.
    let (status, code, challenge) = refusal(&ingest.get(clips, None).await?)?;
    assert_eq!((status, code.as_str()), (401, "unauthenticated"));
    assert_eq!(challenge, r#"Bearer realm="cloud-ingest""#);
    for wrong in ["hello", forged.as_str(), "cit_nonsense"] {
        let (status, code, challenge) = refusal(&ingest.get(clips, Some(wrong)).await?)?;
        assert_eq!(
            (status, code.as_str()),
            (401, "invalid_token"),
            "{wrong:.8}"
        );
        assert!(
            challenge.starts_with(r#"Bearer realm="cloud-ingest", error="invalid_token""#),
            "{challenge}"
        );
    }
    // Unknown /v1/ paths do not tell strangers what exists.
    assert_eq!(ingest.get("/v1/nothing-here", None).await?.status, 401);
    assert_eq!(
        ingest.get("/v1/nothing-here", Some(&board)).await?.status,
        404
    );

    // A valid token without clips:read: 403 on clips, 200 on stations.
    let (status, code, challenge) = refusal(&ingest.get(clips, Some(&board)).await?)?;
    assert_eq!((status, code.as_str()), (403, "insufficient_scope"));
    assert!(
        challenge.contains(r#"error="insufficient_scope", scope="clips:read""#),
        "{challenge}"
    );
    assert_eq!(ingest.get("/v1/stations", Some(&board)).await?.status, 200);
    // A token for another environment: 403.
    let (status, code, _) = refusal(&ingest.get(clips, Some(&dev_only)).await?)?;
    assert_eq!((status, code.as_str()), (403, "env_not_allowed"));

    // The valid token: 200 with the clip, whose URL downloads it.
    let reply = ingest.get(clips, Some(&core)).await?;
    assert_eq!(reply.status, 200);
    let body = reply.json()?;
    let listed = body["clips"].as_array().context("clips")?;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["clip_id"], json!(uploaded.clip_id.as_str()));
    let url = listed[0]["url"].as_str().context("url")?.to_owned();
    assert!(
        url.contains("X-Amz-Expires=600"),
        "the configured 10m: {url}"
    );
    let (status, downloaded) = http_get(&url).await?;
    assert_eq!((status, downloaded), (200, content));
    let one = format!("/v1/clips/{}", uploaded.clip_id);
    assert_eq!(ingest.get(&one, Some(&core)).await?.status, 200);

    // The URL lifetime: shorter on request, never longer than the configuration.
    let short_url = ingest
        .get(&format!("{one}?ttl=30s"), Some(&core))
        .await?
        .json()?;
    assert!(
        short_url["url"]
            .as_str()
            .is_some_and(|u| u.contains("X-Amz-Expires=30&")),
        "{short_url}"
    );
    let capped = ingest
        .get(&format!("{one}?ttl=7d"), Some(&core))
        .await?
        .json()?;
    assert!(
        capped["url"]
            .as_str()
            .is_some_and(|u| u.contains("X-Amz-Expires=600&")),
        "{capped}"
    );
    let (status, code, _) = refusal(&ingest.get(&format!("{one}?ttl=soon"), Some(&core)).await?)?;
    assert_eq!((status, code.as_str()), (400, "bad_ttl"));

    // The short-lived token expires: 401 from then on. (Polled on a route it lacks the scope
    // for, 403 while it lives, so that the polling hands out no URLs.)
    let expired = wait_until("the 2s token expired", DEADLINE, || async {
        let reply = ingest.get("/v1/stations", Some(&short)).await?;
        Ok((reply.status == 401).then_some(reply))
    })
    .await?;
    assert_eq!(expired.json()?["error"]["message"], json!("token expired"));

    // Revoked: 401 on the next request.
    let revoked = token_cli(&stack.config, &["revoke", "core-system"])?;
    assert!(revoked.status.success());
    let reply = ingest.get(clips, Some(&core)).await?;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()?["error"]["message"], json!("token revoked"));

    // Health stays open; /metrics is on the internal address only.
    assert_eq!(ingest.get("/healthz", None).await?.status, 200);
    assert_eq!(ingest.get("/readyz", None).await?.status, 200);
    assert_eq!(ingest.get("/metrics", None).await?.status, 404);
    let (status, metrics) = http_get(&format!("http://{metrics_listen}/metrics")).await?;
    assert_eq!(status, 200);
    let metrics = String::from_utf8(metrics)?;
    assert!(
        metrics.contains("ingest_clip_urls_issued_total 4"),
        "{metrics}"
    );
    assert!(!metrics.contains("ingest_api_denied_total{status=\"401\"} 0"));
    assert!(!metrics.contains("ingest_api_denied_total{status=\"403\"} 0"));

    assert!(ingest.terminate().await?.success());
    let log = ingest.log()?;
    // Each URL handed out is audited with the caller and the order, without the URL.
    let audit = audit_lines(&log);
    assert_eq!(audit.len(), 4, "{audit:?}");
    for line in &audit {
        assert_eq!(line["message"], json!("clip URL issued"));
        assert_eq!(line["caller"], json!("core-system"));
        assert_eq!(line["via"], json!(format!("token {core_id}")));
        assert_eq!(line["order"], json!("SO-AUTH-1"));
        assert_eq!(line["clip_id"], json!(uploaded.clip_id.as_str()));
        assert_eq!(line["key"], json!(uploaded.key));
    }
    assert!(log.contains("API request refused"), "refusals are logged");
    let signature = url
        .split("X-Amz-Signature=")
        .nth(1)
        .context("signature in the URL")?;
    let mut secrets = vec![("the URL's signature", signature)];
    for token in [&core, &board, &short, &dev_only, &forged] {
        secrets.extend(
            secret_parts(token)
                .into_iter()
                .map(|p| ("a service token", p)),
        );
    }
    assert_log_holds_none_of(&log, &secrets);
    Ok(())
}

#[tokio::test]
async fn the_token_cli_shows_a_token_once_lists_without_it_and_revoke_locks_it_out() -> Result<()> {
    let stack = Stack::start("").await?;
    let ingest = stack.ingest(&[]).await?;

    let created = token_cli(
        &stack.config,
        &[
            "create",
            "--name",
            "nightly-export",
            "--scope",
            "clips:read",
            "--scope",
            "stations:read",
            "--expires-in",
            "90d",
        ],
    )?;
    assert!(created.status.success());
    let stdout = String::from_utf8(created.stdout)?;
    let stderr = String::from_utf8(created.stderr)?;
    assert_eq!(stdout.lines().count(), 1, "the token alone on stdout");
    let token = stdout.trim();
    let (id, secret) = cloud_ingest::auth::tokens::split(token).context("token format")?;
    assert!(
        stderr.contains("nightly-export") && stderr.contains(id),
        "{stderr}"
    );
    assert!(stderr.contains("shown only this once"), "{stderr}");
    assert!(!stderr.contains(secret), "the token is printed once");
    assert_eq!(ingest.get("/v1/stations", Some(token)).await?.status, 200);

    // The same live name twice, an unknown scope, no scope: refused.
    let again = token_cli(
        &stack.config,
        &[
            "create",
            "--name",
            "nightly-export",
            "--scope",
            "clips:read",
        ],
    )?;
    assert!(!again.status.success());
    assert!(String::from_utf8(again.stderr)?.contains("already named"));
    let unknown = token_cli(
        &stack.config,
        &["create", "--name", "x", "--scope", "clips:write"],
    )?;
    assert!(!unknown.status.success());
    assert!(String::from_utf8(unknown.stderr)?.contains("clips:write"));
    let none = token_cli(&stack.config, &["create", "--name", "x"])?;
    assert!(!none.status.success());

    // list, as text and JSON: the token's id, name and scopes, never the token.
    for args in [&["list"][..], &["list", "--json"][..]] {
        let listed = token_cli(&stack.config, args)?;
        assert!(listed.status.success());
        let text = String::from_utf8(listed.stdout)?;
        assert!(
            text.contains(id) && text.contains("nightly-export"),
            "{text}"
        );
        assert!(
            text.contains("clips:read") && text.contains("active"),
            "{text}"
        );
        assert!(!text.contains(secret), "list shows no secret");
    }
    let json: Value =
        serde_json::from_slice(&token_cli(&stack.config, &["list", "--json"])?.stdout)?;
    assert_eq!(json[0]["id"], json!(id));
    assert!(json[0]["expires_at"].is_string());

    // revoke by id: 401 from the next request on, and list says so.
    let revoked = token_cli(&stack.config, &["revoke", id])?;
    assert!(revoked.status.success(), "{:?}", revoked);
    let reply = ingest.get("/v1/stations", Some(token)).await?;
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()?["error"]["message"], json!("token revoked"));
    let listed = String::from_utf8(token_cli(&stack.config, &["list"])?.stdout)?;
    assert!(listed.contains("revoked"), "{listed}");
    let twice = token_cli(&stack.config, &["revoke", id])?;
    assert!(!twice.status.success());
    assert!(String::from_utf8(twice.stderr)?.contains("no live token"));
    // The name is free again.
    create_token(&stack.config, "nightly-export", &["--scope", "clips:read"])?;

    let mut ingest = ingest;
    assert!(ingest.terminate().await?.success());
    let secrets: Vec<(&str, &str)> = secret_parts(token)
        .into_iter()
        .map(|p| ("the service token", p))
        .collect();
    assert_log_holds_none_of(&ingest.log()?, &secrets);
    Ok(())
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// Standard claims of a person, with `changes` applied (a `null` removes a claim).
fn claims(idp: &IdentityProvider, changes: Value) -> Value {
    let mut claims = json!({
        "iss": idp.issuer(), "aud": ["account", "cloud-ingest"], "sub": "f3a1c0de",
        "preferred_username": "ana.lima", "iat": now(), "exp": now() + 300,
        "scope": "openid profile clips:read stations:read",
    });
    if let (Some(map), Some(changes)) = (claims.as_object_mut(), changes.as_object()) {
        for (key, value) in changes {
            if value.is_null() {
                map.remove(key);
            } else {
                map.insert(key.clone(), value.clone());
            }
        }
    }
    claims
}

/// `token` with one character of its signature changed.
fn tampered_signature(token: &str) -> String {
    let cut = token.rfind('.').unwrap_or(0) + 10;
    let mut bytes = token.as_bytes().to_vec();
    bytes[cut] = if bytes[cut] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap_or_default()
}

#[tokio::test]
async fn jwts_of_the_identity_provider_are_checked_against_its_published_keys() -> Result<()> {
    let idp = IdentityProvider::start().await?;
    let rsa = SigningKey::rfc7515_rsa("rsa-2024")?;
    assert_eq!(
        rsa.signature(RFC7515_SIGNING_INPUT)?,
        RFC7515_SIGNATURE,
        "the provider's key is the one of RFC 7515"
    );
    idp.publish(&rsa);
    let oidc = format!(
        r#"
[auth.oidc]
issuer = "{issuer}"
audience = "cloud-ingest"
jwks_url = "{jwks}"
algorithms = ["RS256", "ES256"]
clock_skew = "5s"
jwks_min_refresh = "1s"
scopes_claim = "scope"

[auth.oidc.roles]
"capture-viewer" = ["clips:read"]
"#,
        issuer = idp.issuer(),
        jwks = idp.jwks_url()
    );
    let stack = Stack::start(&oidc).await?;
    let mut ingest = stack.ingest(&[]).await?;
    let (uploaded, _) = stack.clip_in_catalog("SO-SSO-7").await?;
    let clips = "/v1/orders/SO-SSO-7/clips";

    let valid = rsa.sign(&claims(&idp, json!({})))?;
    for _ in 0..3 {
        let reply = ingest.get(clips, Some(&valid)).await?;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
    }
    assert_eq!(idp.fetches(), 1, "the keys are fetched once and cached");

    let mut jwts = vec![valid.clone()];
    let header =
        |alg: &str| URL_SAFE_NO_PAD.encode(json!({"alg": alg, "kid": "rsa-2024"}).to_string());
    let payload = URL_SAFE_NO_PAD.encode(claims(&idp, json!({})).to_string());
    let raised = URL_SAFE_NO_PAD.encode(claims(&idp, json!({"sub": "admin"})).to_string());
    let valid_signature = valid.rsplit('.').next().unwrap_or_default();
    let hmac_key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, rsa.jwk().to_string().as_bytes());
    let hmac_input = format!("{}.{payload}", header("HS256"));
    let hmac = URL_SAFE_NO_PAD.encode(ring::hmac::sign(&hmac_key, hmac_input.as_bytes()));
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "expired",
            rsa.sign(&claims(&idp, json!({"exp": now() - 60})))?,
            "token expired",
        ),
        (
            "not yet valid",
            rsa.sign(&claims(&idp, json!({"nbf": now() + 120})))?,
            "token not valid yet",
        ),
        (
            "wrong audience",
            rsa.sign(&claims(&idp, json!({"aud": "another-app"})))?,
            "wrong audience",
        ),
        (
            "no audience",
            rsa.sign(&claims(&idp, json!({"aud": null})))?,
            "wrong audience",
        ),
        (
            "wrong issuer",
            rsa.sign(&claims(
                &idp,
                json!({"iss": "http://127.0.0.1:1/realms/evil"}),
            ))?,
            "wrong issuer",
        ),
        (
            "tampered signature",
            tampered_signature(&valid),
            "signature does not verify",
        ),
        (
            "tampered claims",
            format!("{}.{raised}.{valid_signature}", header("RS256")),
            "signature does not verify",
        ),
        (
            "alg none",
            format!("{}.{payload}.", header("none")),
            "unsigned token (alg none)",
        ),
        (
            "HS256 keyed with the public key",
            format!("{hmac_input}.{hmac}"),
            "signature algorithm not accepted",
        ),
        (
            "not a JWT",
            "eyJhbGciOi.broken".to_owned(),
            "malformed token",
        ),
    ];
    for (case, jwt, reason) in cases {
        let reply = ingest.get(clips, Some(&jwt)).await?;
        let (status, code, challenge) = refusal(&reply)?;
        assert_eq!((status, code.as_str()), (401, "invalid_token"), "{case}");
        assert_eq!(reply.json()?["error"]["message"], json!(reason), "{case}");
        assert!(
            challenge.contains(&format!("error_description=\"{reason}\"")),
            "{case}: {challenge}"
        );
        jwts.push(jwt);
    }

    // Scopes: from the scope claim directly, or through a configured role.
    let no_scope = rsa.sign(&claims(&idp, json!({"scope": "openid profile"})))?;
    let (status, code, _) = refusal(&ingest.get(clips, Some(&no_scope)).await?)?;
    assert_eq!((status, code.as_str()), (403, "insufficient_scope"));
    let viewer = rsa.sign(&claims(&idp, json!({"scope": "openid capture-viewer"})))?;
    assert_eq!(ingest.get(clips, Some(&viewer)).await?.status, 200);
    assert_eq!(ingest.get("/v1/stations", Some(&viewer)).await?.status, 403);
    jwts.extend([no_scope, viewer]);

    // Key rotation: a token signed with a key the provider has not published yet is refused;
    // once the provider publishes it, the ingest fetches the keys again and lets it in.
    let rotated = SigningKey::new_es256("ec-2025")?;
    let next = rotated.sign(&claims(&idp, json!({"preferred_username": "rui.costa"})))?;
    let reply = ingest.get(clips, Some(&next)).await?;
    assert_eq!(reply.status, 401);
    assert_eq!(
        reply.json()?["error"]["message"],
        json!("no key of the issuer fits the token")
    );
    idp.publish(&rotated);
    wait_until("the rotated key is fetched", DEADLINE, || async {
        Ok((ingest.get(clips, Some(&next)).await?.status == 200).then_some(()))
    })
    .await?;
    assert!(idp.fetches() >= 2);
    assert_eq!(
        ingest.get(clips, Some(&valid)).await?.status,
        200,
        "the old key still works"
    );
    jwts.push(next);

    assert!(ingest.terminate().await?.success());
    let log = ingest.log()?;
    let callers: Vec<Value> = audit_lines(&log)
        .iter()
        .map(|line| json!([line["caller"], line["via"], line["order"]]))
        .collect();
    assert!(
        callers.contains(&json!(["ana.lima", "oidc", "SO-SSO-7"])),
        "{callers:?}"
    );
    assert!(
        callers.contains(&json!(["rui.costa", "oidc", "SO-SSO-7"])),
        "{callers:?}"
    );
    assert!(
        audit_lines(&log)
            .iter()
            .all(|l| l["clip_id"] == json!(uploaded.clip_id.as_str()))
    );
    let mut secrets = Vec::new();
    for jwt in &jwts {
        secrets.extend(secret_parts(jwt).into_iter().map(|p| ("a JWT", p)));
    }
    assert_log_holds_none_of(&log, &secrets);
    Ok(())
}
