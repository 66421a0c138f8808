//! The real binary: `validate` lists every problem with its key and exits 78;
//! `generate-config` prints a default that validates.

use std::process::Command;

use anyhow::Result;

const BIN: &str = env!("CARGO_BIN_EXE_cloud-ingest");

#[test]
fn generate_config_prints_a_default_that_validates() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let generated = Command::new(BIN).arg("generate-config").output()?;
    assert!(generated.status.success());
    let path = dir.path().join("ingest.toml");
    std::fs::write(&path, &generated.stdout)?;
    let validated = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .env_remove("CLOUD_INGEST_ENV")
        .output()?;
    assert_eq!(
        validated.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&validated.stderr)
    );
    Ok(())
}

#[test]
fn validate_lists_every_problem_with_its_key_and_exits_78() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let default = String::from_utf8(Command::new(BIN).arg("generate-config").output()?.stdout)?;
    let broken = default
        .replace(r#"env = "dev""#, r#"env = "Prod!""#)
        .replace("pool_size = 8", "pool_size = 0")
        .replace(
            r#"# secret_access_key_file = "/run/secrets/s3-secret""#,
            r#"secret_access_key_file = "/nonexistent/s3-secret""#,
        )
        .replace("# [auth.oidc]\n", "[auth.oidc]\n")
        .replace(
            r#"# issuer = "https://login.factory.internal/realms/factory""#,
            r#"issuer = "https://login.factory.internal/realms/factory""#,
        )
        .replace(
            r#"# audience = "cloud-ingest""#,
            r#"audience = "cloud-ingest""#,
        )
        .replace(
            r#"# jwks_url = "https://login"#,
            r#"jwks_url = "http://login"#,
        )
        .replace(r#"# algorithms = ["RS256"]"#, r#"algorithms = ["none"]"#);
    let path = dir.path().join("ingest.toml");
    std::fs::write(&path, broken)?;
    let output = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&path)
        .output()?;
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8(output.stderr)?;
    for key in [
        "env:",
        "postgres.pool_size:",
        "store.secret_access_key_file:",
        "auth.oidc.jwks_url:",
        "auth.oidc.algorithms:",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }

    // An environment override is applied before validation, and can fix or break a file.
    let output = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(dir.path().join("missing.toml"))
        .output()?;
    assert_eq!(
        output.status.code(),
        Some(78),
        "an unreadable file is a config error"
    );
    let good = dir.path().join("good.toml");
    std::fs::write(&good, &default)?;
    let output = Command::new(BIN)
        .args(["validate", "--config"])
        .arg(&good)
        .env("CLOUD_INGEST_HTTP_LISTEN", "not an address")
        .output()?;
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8(output.stderr)?.contains("http.listen:"));
    Ok(())
}
