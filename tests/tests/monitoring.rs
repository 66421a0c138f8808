//! Fleet monitoring (`deploy/monitoring/`): the alert rules, their unit tests, the Prometheus
//! configuration and the ingest's PodMonitor, checked with the real tools.
//!
//! `promtool` (Debian's `prometheus` package, installed by `scripts/setup`) runs the rules'
//! unit tests (`promtool test rules`) and checks the rules and the example configuration with
//! its file_sd target list (`promtool check rules`, `promtool check config`). A missing
//! promtool fails these tests: the setup script installs it, so its absence is a broken
//! machine, not a reason to skip.
//!
//! Beyond what promtool checks, the tests here hold the rules to the project's own contract:
//! every alert has a severity and a summary and description for the operator, and every alert
//! has a unit test in which it fires and one in which it stays silent.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, ensure};
use capture_tests::fixtures::repo_root;
use serde::Deserialize as _;
use serde_yaml::Value;

fn monitoring_dir() -> PathBuf {
    repo_root().join("deploy/monitoring")
}

/// The files with `extension` directly in `dir`, sorted.
fn files_in(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .map(|entry| entry.map(|e| e.path()))
        .collect::<Result<_, _>>()?;
    files.retain(|p| p.extension().is_some_and(|e| e == extension));
    files.sort();
    ensure!(
        !files.is_empty(),
        "no .{extension} file in {}",
        dir.display()
    );
    Ok(files)
}

fn yaml(path: &Path) -> Result<Value> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    serde_yaml::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// promtool with `args`, run from the repository root.
fn promtool(args: &[&str]) -> Result<String> {
    capture_tests::fixtures::promtool(args, &repo_root())
}

fn relative(path: &Path) -> String {
    path.strip_prefix(repo_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// Every alerting rule in `deploy/monitoring/rules/`: name -> the rule.
fn alert_rules() -> Result<BTreeMap<String, Value>> {
    let mut alerts = BTreeMap::new();
    for file in files_in(&monitoring_dir().join("rules"), "yml")? {
        let doc = yaml(&file)?;
        for group in doc["groups"].as_sequence().context("groups")? {
            for rule in group["rules"].as_sequence().context("rules")? {
                if let Some(name) = rule["alert"].as_str() {
                    ensure!(
                        alerts.insert(name.to_owned(), rule.clone()).is_none(),
                        "alert {name} is defined twice"
                    );
                }
            }
        }
    }
    Ok(alerts)
}

#[test]
fn every_alert_rule_passes_its_promtool_unit_tests() -> Result<()> {
    let tests = files_in(&monitoring_dir().join("tests"), "yml")?;
    let mut args = vec!["test".to_owned(), "rules".to_owned()];
    args.extend(tests.iter().map(|p| relative(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = promtool(&args)?;
    assert_eq!(
        output.matches("SUCCESS").count(),
        tests.len(),
        "one SUCCESS per test file:\n{output}"
    );
    Ok(())
}

#[test]
fn rules_and_the_example_configuration_pass_promtool_checks() -> Result<()> {
    let rules = files_in(&monitoring_dir().join("rules"), "yml")?;
    let mut args = vec!["check".to_owned(), "rules".to_owned()];
    args.extend(rules.iter().map(|p| relative(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let output = promtool(&args)?;
    assert_eq!(output.matches("SUCCESS").count(), rules.len(), "{output}");

    // Also reads every file_sd target list the configuration names, and every rule file.
    let output = promtool(&["check", "config", "deploy/monitoring/prometheus.yml"])?;
    assert!(
        output.contains(&format!("SUCCESS: {} rule files found", rules.len())),
        "the configuration loads every rule file:\n{output}"
    );
    Ok(())
}

#[test]
fn every_alert_tells_the_operator_what_to_do_and_is_tested_firing_and_silent() -> Result<()> {
    let alerts = alert_rules()?;
    for (name, rule) in &alerts {
        let severity = rule["labels"]["severity"].as_str();
        assert!(
            matches!(severity, Some("critical" | "warning")),
            "{name}: severity {severity:?}"
        );
        let summary = rule["annotations"]["summary"].as_str().unwrap_or("");
        let description = rule["annotations"]["description"].as_str().unwrap_or("");
        assert!(!summary.is_empty(), "{name}: no summary");
        assert!(
            description.len() > 120,
            "{name}: the description must say what to do, not only what happened: {description:?}"
        );
    }

    // From the unit tests: the alerts expected to fire at some evaluation, and those checked
    // to be silent at another.
    let mut fired = BTreeSet::new();
    let mut silent = BTreeSet::new();
    for file in files_in(&monitoring_dir().join("tests"), "yml")? {
        let doc = yaml(&file)?;
        for test in doc["tests"].as_sequence().context("tests")? {
            let checks = test["alert_rule_test"].as_sequence();
            for check in checks.into_iter().flatten() {
                let name = check["alertname"].as_str().context("alertname")?.to_owned();
                let expected = check["exp_alerts"].as_sequence().map_or(0, Vec::len);
                if expected == 0 {
                    silent.insert(name);
                } else {
                    fired.insert(name);
                }
            }
        }
    }
    let defined: BTreeSet<String> = alerts.keys().cloned().collect();
    let never_fired: Vec<_> = defined.difference(&fired).collect();
    let never_silent: Vec<_> = defined.difference(&silent).collect();
    assert!(
        never_fired.is_empty(),
        "never fire in a test: {never_fired:?}"
    );
    assert!(
        never_silent.is_empty(),
        "never checked to stay silent: {never_silent:?}"
    );
    let unknown: Vec<_> = fired
        .union(&silent)
        .filter(|a| !defined.contains(*a))
        .collect();
    assert!(
        unknown.is_empty(),
        "tests of alerts that do not exist: {unknown:?}"
    );
    // The operator's questions of issue 9, each answered by an alert.
    for expected in [
        "CaptureStationOffline",
        "CaptureClipUnconfirmed",
        "CaptureUploadsFailing",
        "CaptureDiskFreeLow",
        "CaptureClockNotSynced",
        "CaptureCameraRestarting",
        "IngestRejectionsRising",
        "IngestOutboxBacklogGrowing",
        "IngestDependencyUnreachable",
    ] {
        assert!(defined.contains(expected), "no alert {expected}");
    }
    Ok(())
}

#[test]
fn the_pod_monitor_scrapes_the_ingest_pods_every_overlay_renders() -> Result<()> {
    let monitor = yaml(&monitoring_dir().join("kubernetes/podmonitor.yaml"))?;
    assert_eq!(monitor["kind"].as_str(), Some("PodMonitor"));
    assert_eq!(
        monitor["spec"]["namespaceSelector"]["any"].as_bool(),
        Some(true)
    );
    let selector = monitor["spec"]["selector"]["matchLabels"]
        .as_mapping()
        .context("matchLabels")?;
    let endpoint = &monitor["spec"]["podMetricsEndpoints"][0];
    let port = endpoint["port"].as_str().context("port")?;
    // The alert rules select the ingest by job="cloud-ingest" and group by env.
    let relabelings = endpoint["relabelings"]
        .as_sequence()
        .context("relabelings")?;
    let sets = |label: &str| {
        relabelings
            .iter()
            .find(|r| r["targetLabel"].as_str() == Some(label))
    };
    assert_eq!(
        sets("job").and_then(|r| r["replacement"].as_str()),
        Some("cloud-ingest")
    );
    assert_eq!(
        sets("env").and_then(|r| r["sourceLabels"][0].as_str()),
        Some("__meta_kubernetes_pod_label_capture_factory_env")
    );

    for overlay in ["dev", "prod"] {
        let dir = repo_root()
            .join("cloud-ingest/deploy/overlays")
            .join(overlay);
        let output = Command::new("kubectl")
            .arg("kustomize")
            .arg(&dir)
            .output()
            .context("running kubectl kustomize")?;
        ensure!(
            output.status.success(),
            "kubectl kustomize {overlay}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let text = String::from_utf8(output.stdout)?;
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&text)
            .map(Value::deserialize)
            .collect::<Result<_, _>>()?;
        let deployment = docs
            .iter()
            .find(|d| d["kind"].as_str() == Some("StatefulSet"))
            .context("no StatefulSet")?;
        let pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
            .as_mapping()
            .context("pod labels")?;
        for (key, value) in selector {
            assert_eq!(pod_labels.get(key), Some(value), "{overlay}: {key:?}");
        }
        assert_eq!(
            pod_labels
                .get("capture.factory/env")
                .and_then(Value::as_str),
            Some(overlay),
            "the env label the PodMonitor copies"
        );
        let ports = deployment["spec"]["template"]["spec"]["containers"][0]["ports"]
            .as_sequence()
            .context("ports")?;
        assert!(
            ports.iter().any(|p| p["name"].as_str() == Some(port)),
            "{overlay}: no container port named {port}"
        );
        // The headless Service for DNS discovery selects the same pods, on the same port.
        let headless = docs
            .iter()
            .find(|d| d["metadata"]["name"].as_str() == Some("cloud-ingest-metrics"))
            .context("no cloud-ingest-metrics Service")?;
        assert_eq!(headless["spec"]["clusterIP"].as_str(), Some("None"));
        assert_eq!(
            headless["spec"]["ports"][0]["targetPort"].as_str(),
            Some(port)
        );
        for (key, value) in headless["spec"]["selector"]
            .as_mapping()
            .context("selector")?
        {
            assert_eq!(pod_labels.get(key), Some(value), "{overlay}: {key:?}");
        }
    }
    Ok(())
}

/// The values the dashboards' template variables stand for in the checks below.
const VARIABLES: [(&str, &str); 3] = [
    ("${datasource}", "prometheus"),
    ("$station", "pack-01"),
    ("$env", "test"),
];

/// PromQL keywords that read like metric names but are not.
const KEYWORDS: [&str; 6] = ["and", "or", "unless", "bool", "offset", "inf"];
/// Keywords followed by a list of label names in parentheses.
const LABEL_LISTS: [&str; 6] = [
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

/// The metric names a PromQL expression reads: every identifier outside label matchers,
/// range selectors, strings and label lists that is not a function, an aggregation or a
/// keyword.
fn metric_names(expr: &str) -> BTreeSet<String> {
    // Selectors ({...}), ranges ([...]) and strings say nothing about which metric is read.
    let mut plain = String::new();
    let mut chars = expr.chars().peekable();
    while let Some(c) = chars.next() {
        let close = match c {
            '{' => '}',
            '[' => ']',
            '"' | '\'' | '`' => c,
            _ => {
                plain.push(c);
                continue;
            }
        };
        for inner in chars.by_ref() {
            if inner == close {
                break;
            }
        }
        plain.push(' ');
    }
    // Tokens: identifiers (names may contain ':'), numbers (1e6, 0.5), single characters.
    let mut tokens: Vec<String> = Vec::new();
    let mut chars = plain.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_alphanumeric() || c == '_' || c == ':' {
            let mut token = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_alphanumeric()
                    || c == '_'
                    || c == ':'
                    || (token.starts_with(|d: char| d.is_ascii_digit()) && c == '.')
                {
                    token.push(c);
                    chars.next();
                } else {
                    break;
                }
            }
            tokens.push(token);
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            chars.next();
        }
    }
    let mut names = BTreeSet::new();
    let mut i = 0;
    while i < tokens.len() {
        let token = &tokens[i];
        // A function, or an aggregation with its grouping first (`sum by (env) (...)`).
        let called = tokens
            .get(i + 1)
            .is_some_and(|t| t == "(" || t == "by" || t == "without");
        if LABEL_LISTS.contains(&token.as_str()) && called {
            // Skip the label list up to its closing parenthesis.
            while i < tokens.len() && tokens[i] != ")" {
                i += 1;
            }
        } else if token.starts_with(|c: char| c.is_alphabetic() || c == '_' || c == ':')
            && !called
            && !KEYWORDS.contains(&token.to_lowercase().as_str())
        {
            names.insert(token.clone());
        }
        i += 1;
    }
    names
}

/// A Grafana query with its variables replaced by example values.
fn substituted(query: &str) -> String {
    VARIABLES
        .iter()
        .fold(query.to_owned(), |q, (var, value)| q.replace(var, value))
}

/// The PromQL of a `label_values(selector, label)` variable query: its selector.
fn label_values_selector(query: &str) -> Result<String> {
    let inner = query
        .trim()
        .strip_prefix("label_values(")
        .and_then(|q| q.strip_suffix(')'))
        .with_context(|| format!("not label_values(selector, label): {query}"))?;
    let (selector, label) = inner
        .rsplit_once(',')
        .with_context(|| format!("label_values without a label: {query}"))?;
    ensure!(!label.trim().is_empty(), "{query}");
    Ok(selector.trim().to_owned())
}

/// Every panel of a dashboard, those inside rows included.
fn panels(dashboard: &serde_json::Value) -> Vec<&serde_json::Value> {
    let mut all = Vec::new();
    let mut stack: Vec<&serde_json::Value> = dashboard["panels"]
        .as_array()
        .map(|p| p.iter().collect())
        .unwrap_or_default();
    while let Some(panel) = stack.pop() {
        if let Some(inner) = panel["panels"].as_array() {
            stack.extend(inner);
        }
        all.push(panel);
    }
    all
}

/// Metric names on a Prometheus text page, as Prometheus stores them (a summary `x` is
/// `x_sum` and `x_count`).
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                if kind == "summary" || kind == "histogram" {
                    names.insert(format!("{name}_sum"));
                    names.insert(format!("{name}_count"));
                } else {
                    names.insert(name.to_owned());
                }
            }
        } else if let Some(sample) = line.split(['{', ' ']).next()
            && !sample.is_empty()
            && !line.starts_with('#')
        {
            names.insert(sample.to_owned());
        }
    }
    names
}

#[test]
fn metric_names_are_found_in_promql_and_nothing_else() {
    let names = |e: &str| metric_names(e).into_iter().collect::<Vec<_>>();
    assert_eq!(
        names(
            r#"sum by (env, station) (rate(capture_upload_bytes_total{job="capture-agent", env=~"a|b"}[5m])) * 60"#
        ),
        ["capture_upload_bytes_total"]
    );
    assert_eq!(
        names("up{job=\"x\"} == 0 or capture_mqtt_connected == 0 and on (instance) foo:bar"),
        ["capture_mqtt_connected", "foo:bar", "up"]
    );
    assert_eq!(
        names("topk(20, x_total) / ignoring(state) group_left(camera) y offset 5m > 1e6"),
        ["x_total", "y"]
    );
    assert_eq!(
        label_values_selector("label_values(up{job=\"capture-agent\", env=\"$env\"}, station)")
            .expect("a label_values query"),
        "up{job=\"capture-agent\", env=\"$env\"}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboards_and_rules_query_only_metrics_a_running_agent_and_ingest_export() -> Result<()> {
    use capture_tests::fixtures::{
        Agent, AgentOptions, Ingest, IngestOptions, Mosquitto, PgDatabase, RabbitMq,
    };

    // A real agent and a real ingest, scraped as Prometheus scrapes them.
    let broker = Mosquitto::start().await?;
    let database = PgDatabase::create().await?;
    let rabbit = RabbitMq::shared();
    let agent = Agent::start(AgentOptions::new(broker.host(), broker.port())).await?;
    let ingest = Ingest::start(IngestOptions {
        env: "test".into(),
        client_id: "ingest-monitoring".into(),
        mqtt_host: broker.host().into(),
        mqtt_port: broker.port(),
        // Nothing is verified here: the store is never asked.
        store: capture_objstore::StoreSettings::new("http://127.0.0.1:9", "garage", "GK0", "-")
            .with_path_style(true),
        bucket: "factory-media".into(),
        postgres_url: database.url().into(),
        amqp_url: rabbit.url().into(),
        exchange: rabbit.names().exchange,
    })
    .await?;
    let mut available = exported(&agent.metrics().await?);
    let agent_count = available.len();
    available.extend(exported(&ingest.metrics().await?));
    // Prometheus's own, for every target.
    available.insert("up".to_owned());
    ensure!(
        agent_count > 15 && available.len() > agent_count + 10,
        "too few metrics scraped: {available:?}"
    );

    // Every query of every dashboard, and its variables' queries.
    let mut queries: Vec<(String, String)> = Vec::new();
    let mut uids = BTreeSet::new();
    for file in files_in(&monitoring_dir().join("dashboards"), "json")? {
        let name = relative(&file);
        let dashboard: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file)?)
            .with_context(|| format!("{name} is not JSON"))?;
        let uid = dashboard["uid"].as_str().context("uid")?;
        ensure!(uids.insert(uid.to_owned()), "{name}: uid {uid} used twice");
        ensure!(dashboard["title"].as_str().is_some(), "{name}: no title");
        let mut ids = BTreeSet::new();
        for panel in panels(&dashboard) {
            let title = panel["title"].as_str().unwrap_or("?");
            ensure!(
                panel["gridPos"]["w"].as_u64().is_some()
                    && panel["gridPos"]["h"].as_u64().is_some(),
                "{name}: panel {title} has no size"
            );
            if let Some(id) = panel["id"].as_u64() {
                ensure!(ids.insert(id), "{name}: panel id {id} used twice");
            }
            if panel["type"] == "row" {
                continue;
            }
            let targets = panel["targets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            ensure!(!targets.is_empty(), "{name}: panel {title} queries nothing");
            for target in targets {
                let expr = target["expr"].as_str().context("a target without expr")?;
                queries.push((format!("{name}: {title}"), substituted(expr)));
            }
        }
        for variable in dashboard["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if variable["type"] == "query" {
                let query = variable["query"]["query"]
                    .as_str()
                    .or_else(|| variable["query"].as_str())
                    .context("a query variable without query")?;
                let var = variable["name"].as_str().unwrap_or("?");
                queries.push((
                    format!("{name}: variable {var}"),
                    substituted(&label_values_selector(query)?),
                ));
            }
        }
    }
    // The per-station view: a station variable that its panels use.
    let station: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(
        monitoring_dir().join("dashboards/capture-station.json"),
    )?)?;
    let variables: Vec<&str> = station["templating"]["list"]
        .as_array()
        .context("variables")?
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    assert!(variables.contains(&"station"), "{variables:?}");
    let station_queries = panels(&station)
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["expr"]
                .as_str()
                .is_some_and(|e| e.contains("station=\"$station\""))
        })
        .count();
    assert!(
        station_queries > 15,
        "{station_queries} queries select $station"
    );

    // And every alert rule's expression.
    for (name, rule) in alert_rules()? {
        queries.push((
            format!("alert {name}"),
            rule["expr"].as_str().context("expr")?.to_owned(),
        ));
    }

    let mut unknown = Vec::new();
    for (place, query) in &queries {
        let names = metric_names(query);
        ensure!(!names.is_empty(), "{place}: reads no metric: {query}");
        for name in names.difference(&available) {
            unknown.push(format!("{place}: {name}"));
        }
    }
    assert!(
        unknown.is_empty(),
        "queries read metrics that nothing exports:\n{}\nexported: {available:?}",
        unknown.join("\n")
    );

    // Each query parses as PromQL: promtool checks them as recording rules.
    let dir = tempfile::tempdir()?;
    let mut rules = String::from("groups:\n  - name: dashboard-queries\n    rules:\n");
    for (i, (_, query)) in queries.iter().enumerate() {
        rules += &format!(
            "      - record: dashboard_query_{i}\n        expr: {}\n",
            serde_json::to_string(query)?
        );
    }
    std::fs::write(dir.path().join("queries.yml"), rules)?;
    let output = capture_tests::fixtures::promtool(&["check", "rules", "queries.yml"], dir.path())?;
    assert!(
        output.contains(&format!("SUCCESS: {} rules found", queries.len())),
        "{output}"
    );

    // Grafana loads the dashboards from files, as the provisioning file says.
    let provider = yaml(&monitoring_dir().join("grafana/dashboards.yml"))?;
    assert_eq!(provider["apiVersion"].as_u64(), Some(1));
    let provider = &provider["providers"][0];
    assert_eq!(provider["type"].as_str(), Some("file"));
    assert!(provider["options"]["path"].as_str().is_some());
    Ok(())
}

/// The log collector's configurations (Vector, deploy/monitoring/logs/). Vector is in none of
/// the package registries this project's machines reach, so `vector validate` cannot run
/// here: this checks what can be checked without it.
#[test]
fn log_collector_configurations_read_both_programs_and_produce_the_documented_fields() -> Result<()>
{
    let documented = ["timestamp", "level", "message", "target"];
    for (file, source_type) in [
        ("vector-pi.yaml", "journald"),
        ("vector-cluster.yaml", "kubernetes_logs"),
    ] {
        let config = yaml(&monitoring_dir().join("logs").join(file))?;
        let mut names = BTreeSet::new();
        for section in ["sources", "transforms", "sinks"] {
            let components = config[section]
                .as_mapping()
                .with_context(|| format!("{file}: no {section}"))?;
            for (name, component) in components {
                let name = name.as_str().context("component name")?;
                ensure!(
                    names.insert(name.to_owned()),
                    "{file}: {name} defined twice"
                );
                ensure!(
                    component["type"].as_str().is_some(),
                    "{file}: {name} has no type"
                );
            }
        }
        // Every input is a component defined before it in the flow, and every sink is fed.
        for section in ["transforms", "sinks"] {
            for (name, component) in config[section].as_mapping().context(section)? {
                let inputs = component["inputs"].as_sequence().context("inputs")?;
                ensure!(!inputs.is_empty(), "{file}: {name:?} has no inputs");
                for input in inputs {
                    let input = input.as_str().context("input")?;
                    ensure!(
                        names.contains(input),
                        "{file}: {name:?} reads {input}, which is not defined"
                    );
                }
            }
        }
        let sources = config["sources"].as_mapping().context("sources")?;
        let (_, source) = sources.iter().next().context("a source")?;
        assert_eq!(source["type"].as_str(), Some(source_type), "{file}");
        let remap = config["transforms"]
            .as_mapping()
            .context("transforms")?
            .values()
            .find(|t| t["type"].as_str() == Some("remap"))
            .context("a remap transform")?;
        let program = remap["source"].as_str().context("remap source")?;
        // JSON lines are parsed into the record.
        assert!(program.contains("parse_json(.message)"), "{file}");
        for field in documented {
            let produced = match field {
                // Vector's sources set these two themselves.
                "timestamp" | "message" => true,
                _ => program.contains(&format!(".{field} =")),
            };
            assert!(produced, "{file}: does not set {field}");
        }
        for (_, sink) in config["sinks"].as_mapping().context("sinks")? {
            for (label, value) in sink["labels"].as_mapping().into_iter().flatten() {
                let value = value.as_str().context("label value")?;
                if let Some(field) = value
                    .strip_prefix("{{ ")
                    .and_then(|v| v.strip_suffix(" }}"))
                {
                    assert!(
                        documented.contains(&field) || program.contains(&format!(".{field} =")),
                        "{file}: label {label:?} uses {field}, which the record lacks"
                    );
                }
            }
        }
    }

    // The Pi's collector reads the unit the package installs, and maps every native journal
    // field of the agent to its documented name.
    let pi = yaml(&monitoring_dir().join("logs/vector-pi.yaml"))?;
    let units = pi["sources"]["agent_journal"]["include_units"]
        .as_sequence()
        .context("include_units")?;
    assert_eq!(units.len(), 1);
    let unit = units[0].as_str().context("unit")?;
    assert!(repo_root().join("systemd").join(unit).is_file(), "{unit}");
    let program = pi["transforms"]["agent_fields"]["source"]
        .as_str()
        .context("remap")?;
    for field in ["order", "clip_id", "station", "device", "env", "target"] {
        let native = field.to_uppercase();
        assert!(
            program.contains(&format!(".{field} = del(.{native})")),
            "{native} -> {field}"
        );
    }

    // The cluster's collector selects the ingest's pods by a label every overlay's pods carry.
    let cluster = yaml(&monitoring_dir().join("logs/vector-cluster.yaml"))?;
    let selector = cluster["sources"]["ingest_pods"]["extra_label_selector"]
        .as_str()
        .context("extra_label_selector")?;
    let (key, value) = selector.split_once('=').context("key=value")?;
    let base = yaml(&repo_root().join("cloud-ingest/deploy/base/kustomization.yaml"))?;
    let common = &base["labels"][0]["pairs"];
    assert_eq!(common[key].as_str(), Some(value), "{selector}");
    Ok(())
}
