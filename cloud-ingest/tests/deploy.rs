//! The Kubernetes manifests under `deploy/`: the base is structurally sound (replicas, probes,
//! non-root, selectors that match, config that validates) and each overlay, merged onto the
//! base, gives a valid configuration for its own environment. The overlays are also rendered
//! with `kubectl kustomize` (installed by `scripts/setup`) and the output checked.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};
use cloud_ingest::config::{Config, ENV_OVERRIDES};
use serde::Deserialize as _;
use serde_yaml::Value;

const SECRETS_DIR: &str = "/run/secrets/cloud-ingest/";
const SECRET_KEYS: [&str; 4] = [
    "mqtt-password",
    "s3-secret-access-key",
    "postgres-password",
    "amqp-password",
];

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy")
}

fn yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

fn get<'a>(value: &'a Value, path: &str) -> Result<&'a Value> {
    let mut current = value;
    for part in path.split('.') {
        current = match part.parse::<usize>() {
            Ok(i) => current.get(i),
            Err(_) => current.get(part),
        }
        .with_context(|| format!("no {path} (at {part})"))?;
    }
    Ok(current)
}

fn string_map(value: &Value) -> BTreeMap<String, String> {
    value
        .as_mapping()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.as_str()?.to_owned(), v.as_str()?.to_owned())))
                .collect()
        })
        .unwrap_or_default()
}

/// `name=value` pairs of a container's literal env vars.
fn env_vars(container: &Value) -> Vec<(String, String)> {
    container
        .get("env")
        .and_then(Value::as_sequence)
        .map(|vars| {
            vars.iter()
                .filter_map(|v| {
                    Some((
                        v.get("name")?.as_str()?.to_owned(),
                        v.get("value")?.as_str()?.to_owned(),
                    ))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// The `valueFrom` of the container's env var `name`.
fn env_source(container: &Value, name: &str) -> Result<Value> {
    container
        .get("env")
        .and_then(Value::as_sequence)
        .and_then(|vars| {
            vars.iter()
                .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        })
        .and_then(|v| v.get("valueFrom"))
        .cloned()
        .with_context(|| format!("no env var {name} with valueFrom"))
}

/// The base config with its secret paths pointed at real files, parsed with `vars`.
fn config_with(vars: &[(String, String)]) -> Result<Config> {
    let secrets = tempfile::tempdir()?;
    for key in SECRET_KEYS {
        std::fs::write(secrets.path().join(key), "secret")?;
    }
    let text = std::fs::read_to_string(deploy_dir().join("base/ingest.toml"))?
        .replace(SECRETS_DIR, &format!("{}/", secrets.path().display()));
    Config::parse(&text, vars).map_err(|e| anyhow::anyhow!("{e}"))
}

#[test]
fn the_base_is_a_sound_highly_available_deployment() -> Result<()> {
    let base = deploy_dir().join("base");
    let kustomization = yaml(&base.join("kustomization.yaml"))?;
    let resources: Vec<&str> = get(&kustomization, "resources")?
        .as_sequence()
        .context("resources")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    for resource in &resources {
        assert!(
            base.join(resource).exists(),
            "{resource} is listed but missing"
        );
    }
    let deployment = yaml(&base.join("statefulset.yaml"))?;
    let service = yaml(&base.join("service.yaml"))?;
    let pdb = yaml(&base.join("pdb.yaml"))?;
    assert_eq!(get(&deployment, "kind")?.as_str(), Some("StatefulSet"));
    // Stable pod names are the replicas' MQTT client ids (docs/ingest.md, "Replicas and MQTT
    // sessions"): a replacement pod resumes its predecessor's session.
    let client_id = env_source(
        get(&deployment, "spec.template.spec.containers.0")?,
        "CLOUD_INGEST_MQTT_CLIENT_ID",
    )?;
    assert_eq!(
        get(&client_id, "fieldRef.fieldPath")?.as_str(),
        Some("metadata.name")
    );
    let service_name = get(&deployment, "spec.serviceName")?.as_str();
    let metrics_service = yaml(&base.join("service-metrics.yaml"))?;
    assert_eq!(
        service_name,
        get(&metrics_service, "metadata.name")?.as_str()
    );
    assert_eq!(
        get(&metrics_service, "spec.clusterIP")?.as_str(),
        Some("None"),
        "a StatefulSet's service is headless"
    );
    assert_eq!(get(&service, "kind")?.as_str(), Some("Service"));
    assert_eq!(get(&pdb, "kind")?.as_str(), Some("PodDisruptionBudget"));

    assert!(get(&deployment, "spec.replicas")?.as_u64() >= Some(2));
    let pod_labels = string_map(get(&deployment, "spec.template.metadata.labels")?);
    for (what, selector) in [
        ("deployment", get(&deployment, "spec.selector.matchLabels")?),
        ("service", get(&service, "spec.selector")?),
        ("pdb", get(&pdb, "spec.selector.matchLabels")?),
    ] {
        let selector = string_map(selector);
        assert!(!selector.is_empty(), "{what} selects nothing");
        for (k, v) in &selector {
            assert_eq!(pod_labels.get(k), Some(v), "{what} selector {k}={v}");
        }
    }
    assert!(get(&pdb, "spec.minAvailable")?.as_u64() >= Some(1));

    let pod = get(&deployment, "spec.template.spec")?;
    assert_eq!(
        get(pod, "securityContext.runAsNonRoot")?.as_bool(),
        Some(true)
    );
    let container = get(pod, "containers.0")?;
    assert_eq!(
        get(container, "readinessProbe.httpGet.path")?.as_str(),
        Some("/readyz")
    );
    assert_eq!(
        get(container, "livenessProbe.httpGet.path")?.as_str(),
        Some("/healthz")
    );
    assert_eq!(
        get(container, "securityContext.readOnlyRootFilesystem")?.as_bool(),
        Some(true)
    );
    let port = get(container, "ports.0.containerPort")?.as_u64();
    assert_eq!(port, Some(8080));
    assert_eq!(
        get(&service, "spec.ports.0.targetPort")?.as_str(),
        Some("http")
    );
    // /metrics on its own port: scraped there, never behind the Service.
    assert_eq!(get(container, "ports.1.name")?.as_str(), Some("metrics"));
    let metrics_port = get(container, "ports.1.containerPort")?
        .as_u64()
        .context("metrics port")?;
    assert_eq!(
        get(&deployment, "spec.template.metadata.annotations")?
            .get("prometheus.io/port")
            .and_then(Value::as_str),
        Some(metrics_port.to_string().as_str())
    );
    let service_ports = get(&service, "spec.ports")?
        .as_sequence()
        .context("service ports")?;
    assert_eq!(service_ports.len(), 1, "the Service exposes the API only");
    let client_id = container
        .get("env")
        .and_then(Value::as_sequence)
        .and_then(|vars| {
            vars.iter().find(|v| {
                v.get("name").and_then(Value::as_str) == Some("CLOUD_INGEST_MQTT_CLIENT_ID")
            })
        })
        .context("client id from the pod name")?;
    assert_eq!(
        get(client_id, "valueFrom.fieldRef.fieldPath")?.as_str(),
        Some("metadata.name")
    );

    // The config the ConfigMap carries validates, and the Secret holds every file it names.
    let generator = get(&kustomization, "configMapGenerator.0")?;
    let config_map = get(generator, "name")?.as_str().context("name")?;
    let volumes = get(pod, "volumes")?.as_sequence().context("volumes")?;
    assert!(volumes.iter().any(|v| {
        v.get("configMap")
            .and_then(|c| c.get("name"))
            .and_then(Value::as_str)
            == Some(config_map)
    }));
    assert!(volumes.iter().any(|v| v.get("secret").is_some()));
    let args: Vec<&str> = get(container, "args")?
        .as_sequence()
        .context("args")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(args, ["run", "--config", "/etc/cloud-ingest/ingest.toml"]);
    let config = config_with(&[])?;
    assert_eq!(config.http.listen, "0.0.0.0:8080");
    assert_eq!(
        config.http.metrics_listen,
        Some(format!("0.0.0.0:{metrics_port}"))
    );
    let toml = std::fs::read_to_string(base.join("ingest.toml"))?;
    let named: Vec<&str> = SECRET_KEYS
        .iter()
        .copied()
        .filter(|key| toml.contains(&format!("{SECRETS_DIR}{key}")))
        .collect();
    assert_eq!(
        named, SECRET_KEYS,
        "every secret file is under the Secret mount"
    );
    Ok(())
}

/// The overlay's StatefulSet patch merged onto the base container's env, by name.
fn overlay_env(overlay: &str) -> Result<Vec<(String, String)>> {
    let dir = deploy_dir().join("overlays").join(overlay);
    let kustomization = yaml(&dir.join("kustomization.yaml"))?;
    let resources = get(&kustomization, "resources")?
        .as_sequence()
        .context("resources")?;
    assert!(resources.iter().any(|r| r.as_str() == Some("../../base")));
    let patches = get(&kustomization, "patches")?
        .as_sequence()
        .context("patches")?;
    let base = yaml(&deploy_dir().join("base/statefulset.yaml"))?;
    let base_container = get(&base, "spec.template.spec.containers.0")?;
    let mut env: BTreeMap<String, String> = env_vars(base_container).into_iter().collect();
    for patch in patches {
        let path = dir.join(get(patch, "path")?.as_str().context("path")?);
        let patch_doc = yaml(&path)?;
        assert_eq!(get(patch, "target.kind")?.as_str(), Some("StatefulSet"));
        assert_eq!(
            get(patch, "target.name")?.as_str(),
            get(&base, "metadata.name")?.as_str(),
            "the patch targets the base's StatefulSet"
        );
        assert_eq!(get(&patch_doc, "kind")?, get(&base, "kind")?);
        assert_eq!(
            get(&patch_doc, "metadata.name")?,
            get(&base, "metadata.name")?
        );
        if let Ok(replicas) = get(&patch_doc, "spec.replicas") {
            assert!(
                replicas.as_u64() >= Some(2),
                "{overlay}: at least 2 replicas"
            );
        }
        for container in get(&patch_doc, "spec.template.spec.containers")?
            .as_sequence()
            .context("containers")?
        {
            assert_eq!(
                container.get("name"),
                base_container.get("name"),
                "{overlay}: a patched container must exist in the base"
            );
            env.extend(env_vars(container));
        }
    }
    Ok(env.into_iter().collect())
}

#[test]
fn each_overlay_merged_onto_the_base_gives_a_valid_config_for_its_environment() -> Result<()> {
    let (mut buckets, mut audiences) = (Vec::new(), Vec::new());
    for overlay in ["dev", "prod"] {
        let env = overlay_env(overlay)?;
        let known: Vec<&str> = ENV_OVERRIDES.iter().map(|(var, _)| *var).collect();
        for (name, _) in &env {
            if name.starts_with("CLOUD_INGEST_") {
                assert!(
                    known.contains(&name.as_str()),
                    "{overlay}: unknown override {name}"
                );
            }
        }
        let config = config_with(&env)?;
        assert_eq!(config.env, overlay, "{overlay}: topics cap/{overlay}/...");
        assert!(config.postgres.url.contains(overlay));
        buckets.push(config.store.bucket);
        let oidc = config.auth.oidc.context("single sign-on configured")?;
        audiences.push(oidc.audience);
    }
    assert_ne!(buckets[0], buckets[1], "dev and prod never share a bucket");
    assert_ne!(
        audiences[0], audiences[1],
        "a dev person's token is refused by prod"
    );
    Ok(())
}

#[test]
fn overlays_render_with_kubectl_kustomize() -> Result<()> {
    let version = Command::new("kubectl")
        .args(["version", "--client"])
        .output();
    if !version.is_ok_and(|v| v.status.success()) {
        bail!("kubectl is not installed: run scripts/setup (it installs it)");
    }
    for overlay in ["dev", "prod"] {
        let output = Command::new("kubectl")
            .arg("kustomize")
            .arg(deploy_dir().join("overlays").join(overlay))
            .output()?;
        if !output.status.success() {
            bail!(
                "kubectl kustomize {overlay}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        let text = String::from_utf8(output.stdout)?;
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect::<Result<_, _>>()?;
        let kinds: Vec<&str> = docs
            .iter()
            .filter_map(|d| d.get("kind").and_then(Value::as_str))
            .collect();
        for kind in ["ConfigMap", "Service", "StatefulSet", "PodDisruptionBudget"] {
            assert!(kinds.contains(&kind), "{overlay}: no {kind} in {kinds:?}");
        }
        for doc in &docs {
            assert_eq!(
                get(doc, "metadata.namespace")?.as_str(),
                Some(format!("capture-{overlay}").as_str())
            );
        }
        let deployment = docs
            .iter()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some("StatefulSet"))
            .context("deployment")?;
        let container = get(deployment, "spec.template.spec.containers.0")?;
        let env: BTreeMap<String, String> = env_vars(container).into_iter().collect();
        assert_eq!(
            env.get("CLOUD_INGEST_ENV").map(String::as_str),
            Some(overlay)
        );
        assert!(get(deployment, "spec.replicas")?.as_u64() >= Some(2));
        // The generated ConfigMap name (with its hash) is what the StatefulSet mounts.
        let config_map = docs
            .iter()
            .find(|d| d.get("kind").and_then(Value::as_str) == Some("ConfigMap"))
            .context("config map")?;
        let name = get(config_map, "metadata.name")?;
        let volumes = get(deployment, "spec.template.spec.volumes")?
            .as_sequence()
            .context("volumes")?;
        assert!(
            volumes
                .iter()
                .any(|v| v.get("configMap").and_then(|c| c.get("name")) == Some(name))
        );
    }
    Ok(())
}
