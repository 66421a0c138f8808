//! The release pipeline without GitLab: `.gitlab-ci.yml` is read as GitLab would read it
//! (jobs with `extends` merged in) and held to what docs/release.md promises, and every
//! script it calls is run here, with `--dry-run` where a registry or a cluster would be needed.
//!
//! - the file parses; every job runs in a declared stage, needs only jobs of earlier stages,
//!   and calls the project's scripts, each of which exists, is executable and answers `--help`;
//! - the ingest goes to `dev` from the default branch by itself and to `prod` from a release
//!   tag by hand, each through the overlay of its GitLab environment, pinned to the image
//!   tag `ingest-image` pushes; the dev fleet waits for its packages and for the ingest;
//! - no job prints a secret; `scripts/build-image --dry-run` shows the buildah commands and
//!   not the registry password;
//! - `scripts/deploy-ingest --dry-run` renders every overlay with `kubectl kustomize` with the
//!   image pinned, and leaves the repository's overlays as they were;
//! - `scripts/rollout-fleet` goes canary first, the rest after, and stops at a canary that
//!   fails, before any other host: run against the fixtures' sshd, like the provisioning tests.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail, ensure};
use capture_tests::fixtures::{Agent, Sshd, free_port, repo_root};
use serde::Deserialize as _;
use serde_yaml::{Mapping, Value};

const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Top-level keys of a GitLab CI file that are not jobs.
const GLOBAL_KEYWORDS: [&str; 10] = [
    "default",
    "include",
    "stages",
    "variables",
    "workflow",
    "image",
    "services",
    "cache",
    "before_script",
    "after_script",
];
/// What GitLab puts a job without `stage:` in.
const DEFAULT_STAGE: &str = "test";
/// Variables that hold secrets: a job may hand them to a program, never print them.
const SECRET_VARIABLES: [&str; 3] = ["CI_REGISTRY_PASSWORD", "KUBECONFIG_INGEST", "FLEET_SSH_KEY"];

/// One job of the pipeline, with its `extends` templates merged in.
#[derive(Debug)]
struct Job {
    name: String,
    stage: String,
    /// before_script, script and after_script, in that order.
    lines: Vec<String>,
    environment: Option<String>,
    needs: Vec<String>,
    definition: Value,
}

impl Job {
    /// The lines that run `program` (a path relative to the repository), split into words.
    fn calls(&self, program: &str) -> Vec<Vec<String>> {
        self.lines
            .iter()
            .map(|line| words(line))
            .filter(|w| w.first().map(String::as_str) == Some(program))
            .collect()
    }

    /// The value after `option` in the one call of `program`, with `$CI_ENVIRONMENT_NAME`
    /// replaced by the job's environment, as GitLab does.
    fn option(&self, program: &str, option: &str) -> Result<String> {
        let calls = self.calls(program);
        ensure!(
            calls.len() == 1,
            "{}: {} calls of {program}",
            self.name,
            calls.len()
        );
        let call = &calls[0];
        let at = call
            .iter()
            .position(|w| w == option)
            .with_context(|| format!("{}: {program} without {option}", self.name))?;
        let value = call
            .get(at + 1)
            .with_context(|| format!("{}: {option} without a value", self.name))?;
        Ok(match &self.environment {
            Some(env) => value.replace("$CI_ENVIRONMENT_NAME", env),
            None => value.clone(),
        })
    }

    /// The job's rules: (condition, when) pairs.
    fn rules(&self) -> Vec<(String, String)> {
        self.definition
            .get("rules")
            .and_then(Value::as_sequence)
            .map(|rules| {
                rules
                    .iter()
                    .map(|r| {
                        (
                            r.get("if").and_then(Value::as_str).unwrap_or("").to_owned(),
                            r.get("when")
                                .and_then(Value::as_str)
                                .unwrap_or("on_success")
                                .to_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A script line split into shell words, quotes removed (enough for this file's lines).
fn words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut quote = None;
    let mut in_word = false;
    for c in line.chars() {
        match (quote, c) {
            (None, '"' | '\'') => {
                quote = Some(c);
                in_word = true;
            }
            (Some(q), c) if c == q => quote = None,
            (None, c) if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut current));
                    in_word = false;
                }
            }
            (_, c) => {
                current.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(current);
    }
    words
}

/// GitLab's merge of a job onto its template: mappings merge key by key, anything else
/// (lists included) is replaced.
fn merge(base: &Value, over: &Value) -> Value {
    match (base, over) {
        (Value::Mapping(b), Value::Mapping(o)) => {
            let mut merged = b.clone();
            for (key, value) in o {
                let next = match b.get(key) {
                    Some(old) => merge(old, value),
                    None => value.clone(),
                };
                merged.insert(key.clone(), next);
            }
            Value::Mapping(merged)
        }
        _ => over.clone(),
    }
}

fn resolve(root: &Mapping, name: &str, depth: usize) -> Result<Value> {
    ensure!(depth < 10, "{name}: extends nests too deep (a cycle?)");
    let job = root
        .get(name)
        .with_context(|| format!("extends {name}: no such job or template"))?;
    let parents: Vec<String> = match job.get("extends") {
        None => Vec::new(),
        Some(Value::String(one)) => vec![one.clone()],
        Some(Value::Sequence(many)) => many
            .iter()
            .map(|v| v.as_str().map(str::to_owned).context("extends: not a name"))
            .collect::<Result<_>>()?,
        Some(other) => bail!("{name}: extends {other:?}"),
    };
    let mut merged = Value::Mapping(Mapping::new());
    for parent in parents {
        merged = merge(&merged, &resolve(root, &parent, depth + 1)?);
    }
    Ok(merge(&merged, job))
}

fn strings(value: Option<&Value>) -> Vec<String> {
    match value {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Sequence(items)) => items
            .iter()
            .filter_map(|item| match item {
                Value::String(s) => Some(s.clone()),
                // `needs: [{job: x, artifacts: true}]`
                Value::Mapping(m) => m.get("job").and_then(Value::as_str).map(str::to_owned),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[derive(Debug)]
struct Pipeline {
    stages: Vec<String>,
    jobs: Vec<Job>,
}

impl Pipeline {
    fn load() -> Result<Pipeline> {
        Self::parse(&std::fs::read_to_string(
            repo_root().join(".gitlab-ci.yml"),
        )?)
    }

    fn parse(text: &str) -> Result<Pipeline> {
        let root: Value = serde_yaml::from_str(text).context("parsing .gitlab-ci.yml")?;
        let root = root.as_mapping().context("the pipeline is not a mapping")?;
        let stages = strings(root.get("stages"));
        let mut jobs = Vec::new();
        for key in root.keys() {
            let name = key.as_str().context("a top-level key is not a string")?;
            if GLOBAL_KEYWORDS.contains(&name) || name.starts_with('.') {
                continue;
            }
            let definition = resolve(root, name, 0)?;
            let mut lines = Vec::new();
            for part in ["before_script", "script", "after_script"] {
                lines.extend(strings(definition.get(part)));
            }
            let environment = match definition.get("environment") {
                Some(Value::String(name)) => Some(name.clone()),
                Some(env) => env.get("name").and_then(Value::as_str).map(str::to_owned),
                None => None,
            };
            jobs.push(Job {
                name: name.to_owned(),
                stage: definition
                    .get("stage")
                    .and_then(Value::as_str)
                    .unwrap_or(DEFAULT_STAGE)
                    .to_owned(),
                lines,
                environment,
                needs: strings(definition.get("needs")),
                definition,
            });
        }
        Ok(Pipeline { stages, jobs })
    }

    fn job(&self, name: &str) -> Result<&Job> {
        self.jobs
            .iter()
            .find(|j| j.name == name)
            .with_context(|| format!("no job {name} in .gitlab-ci.yml"))
    }

    fn calling(&self, program: &str) -> Vec<&Job> {
        self.jobs
            .iter()
            .filter(|j| !j.calls(program).is_empty())
            .collect()
    }

    /// Every problem with the pipeline's structure, all at once.
    fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.stages.is_empty() {
            problems.push("no stages".to_owned());
        }
        if self.jobs.is_empty() {
            problems.push("no jobs".to_owned());
        }
        let stage_index = |stage: &str| self.stages.iter().position(|s| s == stage);
        for job in &self.jobs {
            let stage = stage_index(&job.stage);
            if stage.is_none() {
                problems.push(format!(
                    "{}: stage {} is not in stages {:?}",
                    job.name, job.stage, self.stages
                ));
            }
            for need in &job.needs {
                match self.jobs.iter().find(|j| &j.name == need) {
                    None => problems.push(format!("{}: needs {need}, which is no job", job.name)),
                    Some(other) if stage.is_some() && stage_index(&other.stage) > stage => problems
                        .push(format!(
                            "{}: needs {need} of the later stage {}",
                            job.name, other.stage
                        )),
                    Some(_) => {}
                }
            }
            let scripts = project_scripts(job);
            if scripts.is_empty() {
                problems.push(format!("{}: calls none of the project's scripts", job.name));
            }
            for script in scripts {
                let path = repo_root().join(&script);
                match std::fs::metadata(&path) {
                    Err(_) => problems.push(format!("{}: {script} does not exist", job.name)),
                    Ok(m) if !m.is_file() || m.permissions().mode() & 0o111 == 0 => {
                        problems.push(format!("{}: {script} is not an executable file", job.name));
                    }
                    Ok(_) => {}
                }
            }
        }
        problems
    }
}

/// The repository's programs a job runs: words that are paths under scripts/ or provisioning/.
fn project_scripts(job: &Job) -> BTreeSet<String> {
    job.lines
        .iter()
        .flat_map(|line| words(line))
        .filter(|w| w.starts_with("scripts/") || w.starts_with("provisioning/"))
        .collect()
}

fn run(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<(i32, String, String)> {
    let output = Command::new(repo_root().join(program))
        .args(args)
        .envs(env.iter().copied())
        .current_dir(repo_root())
        .output()
        .with_context(|| format!("running {program}"))?;
    Ok((
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    ))
}

#[test]
fn the_pipeline_parses_and_every_job_runs_project_scripts_in_a_declared_stage() -> Result<()> {
    let pipeline = Pipeline::load()?;
    assert_eq!(pipeline.stages, ["verify", "build", "deploy"]);
    let problems = pipeline.problems();
    assert!(
        problems.is_empty(),
        ".gitlab-ci.yml:\n  {}",
        problems.join("\n  ")
    );

    // Verify runs the README's test command and the checks it is made of, on every pipeline.
    let verify: Vec<&str> = pipeline
        .jobs
        .iter()
        .filter(|j| j.stage == "verify")
        .flat_map(|j| j.lines.iter().map(String::as_str))
        .collect();
    for line in ["scripts/test", "scripts/lint fmt", "scripts/lint clippy"] {
        assert!(verify.contains(&line), "no verify job runs {line}");
    }
    for job in pipeline.jobs.iter().filter(|j| j.stage == "verify") {
        assert!(
            job.rules().is_empty(),
            "{} does not run everywhere",
            job.name
        );
        assert_eq!(
            job.definition.get("image").and_then(Value::as_str),
            Some("rust:1.92-bookworm"),
            "{}: Debian bookworm with the workspace's Rust",
            job.name
        );
    }

    // Every script a job calls answers --help (and so parses its arguments) without doing
    // anything; scripts/test itself is what runs this test.
    let called: BTreeSet<String> = pipeline.jobs.iter().flat_map(project_scripts).collect();
    for script in &called {
        let (code, stdout, stderr) = run(script, &["--help"], &[])?;
        assert_eq!(code, 0, "{script} --help:\n{stdout}{stderr}");
        assert!(stdout.lines().count() >= 3, "{script} --help:\n{stdout}");
    }

    // A broken pipeline is caught: the checks above are not vacuous.
    let text = std::fs::read_to_string(repo_root().join(".gitlab-ci.yml"))?;
    let broken = Pipeline::parse(
        &text.replacen("stage: build", "stage: package", 1).replacen(
            "scripts/cross-build",
            "scripts/cross-compile",
            1,
        ),
    )?
    .problems();
    assert!(
        broken.iter().any(|p| p.contains("stage package")),
        "{broken:?}"
    );
    assert!(
        broken
            .iter()
            .any(|p| p.contains("scripts/cross-compile does not exist")),
        "{broken:?}"
    );
    assert!(Pipeline::parse("stages: [verify\n").is_err());
    Ok(())
}

#[test]
fn the_ingest_goes_to_dev_from_main_and_to_prod_from_a_tag_by_hand_through_existing_overlays()
-> Result<()> {
    let pipeline = Pipeline::load()?;
    let overlays_dir = repo_root().join("cloud-ingest/deploy/overlays");
    let overlays: BTreeSet<String> = std::fs::read_dir(&overlays_dir)?
        .map(|e| Ok(e?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_>>()?;

    let deploys = pipeline.calling("scripts/deploy-ingest");
    let mut deployed = BTreeSet::new();
    for job in &deploys {
        assert_eq!(job.stage, "deploy", "{}", job.name);
        let env = job.option("scripts/deploy-ingest", "--env")?;
        assert_eq!(
            job.environment.as_deref(),
            Some(env.as_str()),
            "{}: deploys to the overlay of its GitLab environment",
            job.name
        );
        assert!(
            overlays_dir.join(&env).join("kustomization.yaml").is_file(),
            "{}: no overlay cloud-ingest/deploy/overlays/{env}",
            job.name
        );
        assert_eq!(
            job.option("scripts/deploy-ingest", "--tag")?,
            "$CI_COMMIT_SHA",
            "{}: the image of this commit",
            job.name
        );
        deployed.insert(env);
    }
    assert_eq!(deployed, overlays, "every overlay is deployed by one job");

    // What ingest-image pushes is what the deploy jobs pin: same repository, same tag.
    let image = pipeline.job("ingest-image")?;
    assert_eq!(image.stage, "build");
    assert_eq!(
        image.option("scripts/build-image", "--tag")?,
        "$CI_COMMIT_SHA"
    );
    assert!(image.calls("scripts/build-image")[0].contains(&"--push".to_owned()));
    assert!(
        !image.lines.iter().any(|l| l.contains("docker ")),
        "no Docker daemon"
    );

    let main_only = "$CI_COMMIT_BRANCH == $CI_DEFAULT_BRANCH";
    let dev = pipeline.job("deploy-ingest-dev")?;
    assert_eq!(
        dev.rules(),
        [(main_only.to_owned(), "on_success".to_owned())]
    );
    assert!(
        dev.needs.contains(&"ingest-image".to_owned()),
        "{:?}",
        dev.needs
    );
    let prod = pipeline.job("deploy-ingest-prod")?;
    let rules = prod.rules();
    assert_eq!(rules.len(), 1, "{rules:?}");
    assert!(rules[0].0.starts_with("$CI_COMMIT_TAG"), "{rules:?}");
    assert_eq!(rules[0].1, "manual", "prod waits for a person");
    assert_eq!(
        prod.definition
            .get("allow_failure")
            .and_then(Value::as_bool),
        Some(false),
        "the pipeline stays blocked until prod is deployed or refused"
    );
    for job in [dev, prod] {
        assert!(job.needs.contains(&"test".to_owned()), "{}", job.name);
        assert!(
            job.lines
                .iter()
                .any(|l| l == "export KUBECONFIG=\"$KUBECONFIG_INGEST\""),
            "{}: the cluster comes from the environment's protected variable",
            job.name
        );
    }

    // The dev fleet: after the ingest, with the packages built for both Pi OS flavours.
    let fleet = pipeline.job("deploy-fleet-dev")?;
    assert_eq!(fleet.environment.as_deref(), Some("dev"));
    assert_eq!(
        fleet.rules(),
        [(main_only.to_owned(), "on_success".to_owned())]
    );
    assert!(
        !fleet
            .option("scripts/rollout-fleet", "--canary")?
            .is_empty()
    );
    assert_eq!(fleet.option("scripts/rollout-fleet", "--packages")?, "dist");
    assert!(fleet.needs.contains(&"deploy-ingest-dev".to_owned()));
    let mut architectures = BTreeSet::new();
    for job in pipeline.calling("scripts/package") {
        assert!(
            fleet.needs.contains(&job.name),
            "deploy-fleet-dev does not wait for {}",
            job.name
        );
        assert_eq!(job.option("scripts/package", "--out")?, "dist");
        let artifacts = strings(job.definition.get("artifacts").and_then(|a| a.get("paths")));
        assert_eq!(artifacts, ["dist/"], "{}", job.name);
        architectures.insert(job.option("scripts/package", "--arch")?);
    }
    let expected: BTreeSet<String> = ["arm64", "armhf"].map(str::to_owned).into();
    assert_eq!(architectures, expected, "both Pi OS flavours are packaged");
    Ok(())
}

#[test]
fn no_job_prints_a_secret() -> Result<()> {
    let pipeline = Pipeline::load()?;
    for job in &pipeline.jobs {
        for line in &job.lines {
            let first = words(line).into_iter().next().unwrap_or_default();
            assert!(
                !line.contains("set -x"),
                "{}: traces its commands: {line}",
                job.name
            );
            for secret in SECRET_VARIABLES {
                if line.contains(secret) {
                    assert!(
                        !["echo", "printf", "cat", "env", "printenv"].contains(&first.as_str()),
                        "{}: prints ${secret}: {line}",
                        job.name
                    );
                }
            }
        }
    }
    // The registry password goes to buildah on stdin, even in what a dry run shows.
    let password = format!("registry-password-{}", rand::random::<u64>());
    let (code, stdout, stderr) = run(
        "scripts/build-image",
        &["--dry-run", "--push", "--tag", "0123abcd"],
        &[
            ("CI_REGISTRY", "registry.factory.internal"),
            ("CI_REGISTRY_USER", "gitlab-ci-token"),
            ("CI_REGISTRY_PASSWORD", &password),
        ],
    )?;
    assert_eq!(code, 0, "{stdout}{stderr}");
    assert!(!stdout.contains(&password) && !stderr.contains(&password));
    assert!(
        stdout.contains("--password-stdin registry.factory.internal"),
        "{stdout}"
    );
    Ok(())
}

/// The manifests `scripts/deploy-ingest --dry-run` prints, and its closing comment.
fn render(env: &str, tag: &str, repository: &str) -> Result<(Vec<Value>, String)> {
    let (code, stdout, stderr) = run(
        "scripts/deploy-ingest",
        &["--env", env, "--tag", tag, "--dry-run"],
        &[("INGEST_IMAGE", repository)],
    )?;
    ensure!(
        code == 0,
        "deploy-ingest --env {env} --dry-run exited {code}:\n{stderr}"
    );
    let (manifests, summary) = stdout
        .rsplit_once("\n---\n# dry run:")
        .with_context(|| format!("no dry-run summary in:\n{stdout}"))?;
    let docs = serde_yaml::Deserializer::from_str(manifests)
        .map(Value::deserialize)
        .collect::<Result<Vec<_>, _>>()
        .context("parsing the rendered manifests")?;
    Ok((docs, summary.trim().to_owned()))
}

fn kind<'a>(docs: &'a [Value], kind: &str) -> Result<&'a Value> {
    docs.iter()
        .find(|d| d.get("kind").and_then(Value::as_str) == Some(kind))
        .with_context(|| format!("no {kind} rendered"))
}

/// Every file under `dir` with its content.
fn tree(dir: &Path) -> Result<BTreeMap<PathBuf, Vec<u8>>> {
    let mut files = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            files.extend(tree(&path)?);
        } else {
            files.insert(path.clone(), std::fs::read(&path)?);
        }
    }
    Ok(files)
}

#[test]
fn deploy_ingest_dry_run_renders_each_overlay_with_the_image_ci_pushed() -> Result<()> {
    let kubectl = Command::new("kubectl")
        .args(["kustomize", "--help"])
        .output();
    ensure!(
        kubectl.is_ok_and(|o| o.status.success()),
        "kubectl is not installed: run scripts/setup (it installs it)"
    );
    let deploy = repo_root().join("cloud-ingest/deploy");
    let before = tree(&deploy)?;
    let repository = "gitlab.factory.internal:5050/capture/capture/cloud-ingest";
    let tag = format!("{:040x}", rand::random::<u128>());

    // The reference build-image would push, exactly.
    let (code, stdout, stderr) = run(
        "scripts/build-image",
        &["--dry-run", "--push", "--tag", &tag],
        &[("INGEST_IMAGE", repository)],
    )?;
    assert_eq!(code, 0, "{stderr}");
    let pushed = stdout
        .lines()
        .last()
        .context("build-image printed nothing")?;
    assert_eq!(pushed, format!("{repository}:{tag}"));
    assert!(
        stdout.contains(&format!(
            "buildah --storage-driver vfs push {pushed} docker://{pushed}"
        )),
        "{stdout}"
    );
    assert!(
        stdout.contains("--file cloud-ingest/Dockerfile") && stdout.contains("--isolation chroot"),
        "{stdout}"
    );

    for env in ["dev", "prod"] {
        let (docs, summary) = render(env, &tag, repository)?;
        let namespace = format!("capture-{env}");
        for doc in &docs {
            assert_eq!(
                doc.get("metadata")
                    .and_then(|m| m.get("namespace"))
                    .and_then(Value::as_str),
                Some(namespace.as_str()),
                "{env}: {doc:?}"
            );
        }
        let deployment = kind(&docs, "StatefulSet")?;
        let containers = deployment["spec"]["template"]["spec"]["containers"]
            .as_sequence()
            .context("containers")?;
        assert!(!containers.is_empty());
        for container in containers {
            assert_eq!(container["image"].as_str(), Some(pushed), "{env}");
            let env_var = container["env"]
                .as_sequence()
                .and_then(|vars| {
                    vars.iter()
                        .find(|v| v["name"].as_str() == Some("CLOUD_INGEST_ENV"))
                })
                .context("CLOUD_INGEST_ENV")?;
            assert_eq!(env_var["value"].as_str(), Some(env));
        }
        for other in ["Service", "ConfigMap", "PodDisruptionBudget"] {
            kind(&docs, other)?;
        }
        assert!(
            summary.contains(&format!("namespace {namespace}")) && summary.contains(pushed),
            "{summary}"
        );
    }
    assert!(
        tree(&deploy)? == before,
        "deploy-ingest changed the repository's manifests"
    );

    // Wrong inputs stop it before kubectl runs.
    for (args, expected) in [
        (
            vec!["--env", "staging", "--tag", "abc"],
            "no overlay cloud-ingest/deploy/overlays/staging",
        ),
        (vec!["--env", "dev", "--tag", "-x"], "image tag \"-x\""),
        (vec!["--env", "dev"], "--tag is required"),
    ] {
        let (code, stdout, stderr) = run("scripts/deploy-ingest", &args, &[])?;
        assert_eq!(code, 64, "{args:?}: {stdout}{stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
    }
    Ok(())
}

/// A fleet of two Pis, both reached through `hosts`, in a directory of the test's own; the
/// [package] table is empty: the packages come from `--packages`, as in CI.
fn write_fleet(dir: &Path, ssh: Option<&Sshd>, hosts: [&str; 2]) -> Result<()> {
    let secrets = dir.join("secrets");
    std::fs::create_dir_all(&secrets)?;
    for (name, text) in [("key-id", "GK0000"), ("secret", "not-a-real-secret")] {
        std::fs::write(secrets.join(name), text)?;
        std::fs::set_permissions(secrets.join(name), std::fs::Permissions::from_mode(0o600))?;
    }
    std::fs::write(dir.join("passwd"), "")?;
    std::fs::write(dir.join("acl"), "")?;
    let mut toml = String::from(
        "state_dir = \"state\"\njobs = 2\nonline_timeout = \"10s\"\n\n[ssh]\n\
         connect_timeout = \"5s\"\nextra_options = [\"-F\", \"/dev/null\"]\n",
    );
    if let Some(sshd) = ssh {
        toml += &format!(
            "user = \"{}\"\nidentity_file = \"{}\"\nknown_hosts = \"{}\"\n",
            sshd.user(),
            sshd.client_key().display(),
            sshd.known_hosts().display()
        );
    }
    toml += &format!(
        r#"
[package]

[env.dev.broker]
host = "127.0.0.1"
port = {port}
password_file = "passwd"
acl_file = "acl"

[env.dev.store]
endpoint = "http://127.0.0.1:9"
region = "garage"
bucket = "factory-media-dev"
path_style = true
access_key_id_file = "secrets/key-id"
secret_access_key_file = "secrets/secret"
"#,
        port = free_port()?
    );
    std::fs::write(dir.join("fleet.toml"), toml)?;
    std::fs::write(
        dir.join("inventory.csv"),
        format!(
            "host,device,station,env,cameras\n{},pi-01,pack-01,dev,top=test\n\
             {},pi-02,pack-02,dev,top=test\n",
            hosts[0], hosts[1]
        ),
    )?;
    Ok(())
}

/// This machine's package of the workspace's agent, in `dir/dist`, as CI's build jobs leave it.
fn build_package(dir: &Path) -> Result<()> {
    let arch = Command::new("dpkg").arg("--print-architecture").output()?;
    let arch = String::from_utf8_lossy(&arch.stdout).trim().to_owned();
    let binary = Agent::binary()?;
    let out = dir.join("dist");
    let (code, stdout, stderr) = run(
        "scripts/package",
        &[
            "--arch",
            &arch,
            "--binary",
            binary.to_str().context("binary path")?,
            "--out",
            out.to_str().context("out path")?,
            "--fast",
        ],
        &[],
    )?;
    ensure!(code == 0, "scripts/package failed:\n{stdout}{stderr}");
    Ok(())
}

fn rollout(dir: &Path, extra: &[&str]) -> Result<(i32, String)> {
    let path = |name: &str| dir.join(name).to_string_lossy().into_owned();
    let mut args = vec![
        "--fleet".to_owned(),
        path("fleet.toml"),
        "--inventory".to_owned(),
        path("inventory.csv"),
        "--canary".to_owned(),
        "pi-01".to_owned(),
        "--packages".to_owned(),
        path("dist"),
    ];
    args.extend(extra.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (code, stdout, stderr) = run("scripts/rollout-fleet", &args, &[])?;
    Ok((code, format!("{stdout}{stderr}")))
}

#[tokio::test]
async fn rollout_fleet_stops_at_a_canary_that_fails_before_any_other_host() -> Result<()> {
    let dir = tempfile::Builder::new().prefix("rollout-").tempdir()?;
    let canary = format!("127.0.0.1:{}", free_port()?);
    let other = format!("127.0.0.2:{}", free_port()?);
    write_fleet(dir.path(), None, [&canary, &other])?;
    build_package(dir.path())?;

    let (code, output) = rollout(dir.path(), &[])?;
    assert_eq!(code, 1, "{output}");
    assert!(
        output.contains("rollout step 1 of 2: canary pi-01"),
        "{output}"
    );
    assert!(
        output
            .lines()
            .any(|l| l.starts_with(&format!("{canary} ")) && l.contains("FAILED: unreachable")),
        "{output}"
    );
    assert!(output.contains("rollout STOPPED"), "{output}");
    assert!(!output.contains("step 2 of 2"), "{output}");
    assert!(
        !output.contains(&other) && !output.contains("pi-02]"),
        "the rest of the fleet was touched:\n{output}"
    );

    // Bad input stops it before any host, with provision's exit code.
    let (code, output) = rollout(dir.path(), &["--package", "mips=/dev/null"])?;
    assert_eq!(code, 64, "{output}");
    assert!(
        output.contains("rollout STOPPED before any host"),
        "{output}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_fleet_dry_run_goes_to_the_canary_first_then_to_the_rest() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        if std::env::var_os("CAPTURE_SKIP_INSTALL_TESTS").is_some() {
            eprintln!("skipped: CAPTURE_SKIP_INSTALL_TESTS is set");
            return Ok(());
        }
        bail!(
            "the dry run probes this machine through SSH as root, like the provisioning tests: \
             run it as root (CI does), or set CAPTURE_SKIP_INSTALL_TESTS=1 to skip it"
        );
    }
    let sshd = Sshd::start().await?;
    let dir = tempfile::Builder::new().prefix("rollout-").tempdir()?;
    // Two inventory rows, one sshd: the host column differs, the machine is the same.
    let port = sshd.port();
    let canary = sshd.destination();
    let other = format!("127.0.0.1:{port}");
    write_fleet(dir.path(), Some(&sshd), [&canary, &other])?;
    build_package(dir.path())?;

    let (code, output) = rollout(dir.path(), &["--dry-run"])?;
    assert_eq!(code, 0, "{output}\nsshd log:\n{}", sshd.log());
    let (first, rest) = output
        .split_once("rollout step 2 of 2")
        .with_context(|| format!("no second step:\n{output}"))?;
    let row = |text: &str, host: &str| {
        text.lines()
            .rev()
            .find(|l| l.starts_with(&format!("{host} ")))
            .map(str::to_owned)
    };
    let canary_row = row(first, &canary).with_context(|| format!("no canary row:\n{first}"))?;
    assert!(
        canary_row.contains(&format!("{VERSION}-1")) || canary_row.contains("unchanged"),
        "the canary gets the package from --packages: {canary_row}"
    );
    assert!(
        row(first, &other).is_none(),
        "step 1 went beyond the canary:\n{first}"
    );
    assert!(
        row(rest, &canary).is_some() && row(rest, &other).is_some(),
        "{rest}"
    );
    assert!(output.contains("nothing was changed"), "{output}");
    assert!(output.contains("rollout complete"), "{output}");
    assert!(
        !dir.path().join("state").exists(),
        "a dry run generated credentials"
    );
    Ok(())
}
