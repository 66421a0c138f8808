//! `capture-agent validate` and `generate-config` through the real binary.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

/// Runs `capture-agent validate --config CONFIG`.
fn validate(config: &std::path::Path) -> std::process::Output {
    agent()
        .arg("validate")
        .arg("--config")
        .arg(config)
        .output()
        .expect("running capture-agent validate")
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_capture-agent"))
}

/// The generated default with its secret files pointed into `dir` (created, mode 0600).
fn generated_config_in(dir: &std::path::Path) -> String {
    let output = agent()
        .arg("generate-config")
        .output()
        .expect("running capture-agent generate-config");
    assert!(output.status.success());
    let mut text = String::from_utf8(output.stdout).expect("the config is UTF-8");
    for name in [
        "mqtt-password",
        "obs-access-key-id",
        "obs-secret-access-key",
    ] {
        let path = dir.join(name);
        std::fs::write(&path, "x\n").expect("writing a secret file");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).expect("chmod 600");
        let path = path.to_str().expect("a UTF-8 temporary path");
        text = text.replace(&format!("/etc/capture-agent/{name}"), path);
    }
    text
}

#[test]
fn the_generated_config_validates_once_its_secret_files_exist() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, generated_config_in(dir.path())).unwrap();
    let output = validate(&config);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("valid (device pi-01, station pack-01, env dev, 1 camera(s))"));
}

#[test]
fn a_bad_config_lists_every_problem_and_exits_78() {
    let dir = tempfile::tempdir().unwrap();
    let text = generated_config_in(dir.path())
        .replace("device = \"pi-01\"", "device = \"PI 01\"")
        .replace("max_bytes = \"20GiB\"", "max_bytes = \"512KiB\"")
        .replace("resolution = \"1280x720\"", "resolution = \"1281x720\"");
    let secret = dir.path().join("obs-secret-access-key");
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, text).unwrap();

    let output = validate(&config);
    assert_eq!(output.status.code(), Some(78));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("has 4 problem(s)"), "{stderr}");
    for key in [
        "agent.device:",
        "disk.max_bytes:",
        "camera[0]:",
        "store.secret_access_key_file:",
    ] {
        assert!(stderr.contains(key), "{key} missing from:\n{stderr}");
    }
}

#[test]
fn broken_toml_and_a_missing_file_exit_78_with_the_reason() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "[agent\ndevice = 1\n").unwrap();
    let output = validate(&config);
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("agent.toml"));

    let output = agent()
        .args(["validate", "--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(78));
    assert!(String::from_utf8_lossy(&output.stderr).contains("No such file"));
}
