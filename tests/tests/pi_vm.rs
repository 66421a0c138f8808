//! The real package on an emulated Raspberry Pi: Debian bookworm arm64 under systemd in
//! `qemu-system-aarch64 -M virt` (tests/src/fixtures/pi_vm.rs), provisioned with
//! `provisioning/provision` over SSH from the cross-built `.deb`, recording from two `vivid`
//! V4L2 devices, against the real cloud side of tests/src/system.rs (Mosquitto, Garage,
//! PostgreSQL, RabbitMQ, cloud-ingest) on this machine's loopback.
//!
//! One test, in phases: provision and wait for `online`; `capture-agent cameras`; one order
//! end to end; `systemd-analyze security`; the watchdog restarting a SIGSTOPped agent;
//! `systemctl restart` during a recording; a guest reboot; then power cuts (qemu SIGKILLed)
//! at random moments, each followed by a boot, `PRAGMA integrity_check` of the spool, and at
//! the end the end-to-end audit ([`System::audit`]).
//!
//! `CAPTURE_VM_CUTS` sets the number of power cuts (3 here; `scripts/pi-vm-powercuts` runs
//! 20 or more), `CAPTURE_VM_SEED` replays a run's random moments, `CAPTURE_VM_DEB` uses a
//! given arm64 `.deb` instead of building one with `scripts/cross-build` and
//! `scripts/package`. Each run appends its figures to `pi-vm-figures.jsonl` in cargo's test
//! temporary directory.
//!
//! Size: longer than the project's 600 lines on purpose. Each file under `tests/` is a test
//! binary of its own, linked against every fixture and their dependencies; the scenarios here
//! share their setup helpers, and splitting them would add one more such binary to build and
//! link in every CI run.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use capture_tests::fixtures::{PiVm, package_deb, repo_root};
use capture_tests::system::{CAMERAS, Cloud, ENV, STATION, System, SystemOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};

/// The Pi's device id in the inventory.
const DEVICE: &str = "pi-vm";
/// The agent's metrics port on the guest's loopback.
const METRICS_PORT: u16 = 9464;
/// How long the station has to come back after a boot (kernel, systemd, the agent's start
/// with its GStreamer pipelines, all under software emulation).
const BACK_ONLINE: Duration = Duration::from_secs(300);
/// How long every clip may take to reach an outcome once the faults are over.
const SETTLE: Duration = Duration::from_secs(300);
/// A recording cut by a power cut may lose its last fragment (1 s) and what was written
/// since the last fdatasync (about 1 s); beyond that is a loss.
const MAX_LOST_VIDEO: Duration = Duration::from_millis(2500);

/// A random source whose seed is printed, so that a run can be replayed with
/// `CAPTURE_VM_SEED`.
fn rng() -> StdRng {
    let seed = std::env::var("CAPTURE_VM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random::<u64>);
    println!("pi-vm: CAPTURE_VM_SEED={seed}");
    StdRng::seed_from_u64(seed)
}

fn cuts() -> u32 {
    std::env::var("CAPTURE_VM_CUTS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3)
}

/// Prints how long a phase took, for the figures and tests/README.md.
#[derive(Debug)]
struct Clock {
    start: Instant,
    last: Instant,
    phases: Vec<(String, f64)>,
}

impl Clock {
    fn new() -> Self {
        let now = Instant::now();
        Clock {
            start: now,
            last: now,
            phases: Vec::new(),
        }
    }

    fn phase(&mut self, name: &str) {
        let now = Instant::now();
        let seconds = (now - self.last).as_secs_f64();
        println!(
            "pi-vm: {name}: {seconds:.1} s (total {:.1} s)",
            (now - self.start).as_secs_f64()
        );
        self.phases.push((name.to_owned(), seconds));
        self.last = now;
    }
}

/// The arm64 package: `CAPTURE_VM_DEB`, else built from this tree with scripts/cross-build
/// (cached in the cargo target directory, as CI's own cross-build after the tests is) and
/// scripts/package.
async fn arm64_package() -> Result<PathBuf> {
    if let Some(deb) = std::env::var_os("CAPTURE_VM_DEB") {
        let deb = PathBuf::from(deb);
        ensure!(deb.is_file(), "CAPTURE_VM_DEB={} is no file", deb.display());
        return Ok(deb);
    }
    let root = repo_root();
    let cross = tokio::process::Command::new(root.join("scripts/cross-build"))
        .output()
        .await
        .context("running scripts/cross-build")?;
    ensure!(
        cross.status.success(),
        "scripts/cross-build failed:\n{}{}",
        String::from_utf8_lossy(&cross.stdout),
        String::from_utf8_lossy(&cross.stderr)
    );
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pi-vm-dist");
    package_deb(&["--arch".as_ref(), "arm64".as_ref()], &out).await
}

fn write_mode(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(path, text)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// The fleet configuration and inventory of one station on the emulated Pi, as an operator
/// writes them: the broker and the store as the Pi reaches them (the host's loopback is
/// 10.0.2.2 in the guest), the monitor watching from here.
fn write_fleet(dir: &Path, cloud: &Cloud, vm: &PiVm, deb: &Path) -> Result<()> {
    let store = cloud.garage.settings();
    write_mode(&dir.join("passwd"), "", 0o600)?;
    write_mode(&dir.join("acl"), "", 0o644)?;
    write_mode(&dir.join("secrets/key-id"), &store.access_key_id, 0o600)?;
    write_mode(&dir.join("secrets/secret"), &store.secret_access_key, 0o600)?;
    let host = PiVm::HOST;
    let fleet = format!(
        r#"state_dir = "state"
jobs = 1
online_timeout = "{online}s"

[ssh]
user = "pi"
port = {ssh_port}
identity_file = "{key}"
known_hosts = "{known_hosts}"
strict_host_key_checking = "accept-new"
connect_timeout = "20s"
extra_options = ["-F", "/dev/null"]

[package]
arm64 = "{deb}"

[agent]
max_recording = "2m"

[disk]
max_bytes = "1GiB"
min_free_percent = 0

[metrics]
listen = "127.0.0.1:{METRICS_PORT}"

# vivid's webcam input: raw frames; small and slow, for software emulation.
[camera]
input_format = "raw"
resolution = "320x180"
fps = 10
bitrate = "300kbps"
encoder = "x264"
preroll = "1s"
postroll = "0s"

[env.{ENV}.broker]
host = "{host}"
port = {mqtt_port}
password_file = "passwd"
acl_file = "acl"
monitor_host = "127.0.0.1"
monitor_port = {mqtt_port}

[env.{ENV}.store]
endpoint = "http://{host}:{s3_port}"
region = "{region}"
bucket = "{bucket}"
path_style = true
retry_max = "5s"
confirm_timeout = "2s"
confirm_timeout_max = "5s"
access_key_id_file = "secrets/key-id"
secret_access_key_file = "secrets/secret"

[[env.{ENV}.account]]
user = "line-{ENV}"
role = "line"

[[env.{ENV}.account]]
user = "ingest-{ENV}"
role = "ingest"
"#,
        online = BACK_ONLINE.as_secs(),
        ssh_port = vm.ssh_port(),
        key = vm.key().display(),
        known_hosts = vm.known_hosts().display(),
        deb = deb.display(),
        mqtt_port = cloud.broker.port(),
        s3_port = cloud.garage.s3_port(),
        region = store.region,
        bucket = cloud.garage.bucket(),
    );
    write_mode(&dir.join("fleet.toml"), &fleet, 0o644)?;
    let cameras = CAMERAS
        .iter()
        .enumerate()
        .map(|(i, name)| format!("{name}=v4l2:/dev/video{i}"))
        .collect::<Vec<_>>()
        .join(" ");
    let inventory = format!(
        "# the emulated Pi\nhost,device,station,env,cameras\n127.0.0.1,{DEVICE},{STATION},{ENV},{cameras}\n"
    );
    write_mode(&dir.join("inventory.csv"), &inventory, 0o644)
}

/// `provisioning/provision` as an operator runs it; its exit code and everything it printed.
async fn provision(dir: &Path) -> Result<(i32, String)> {
    let command = tokio::process::Command::new(repo_root().join("provisioning/provision"))
        .arg("--fleet")
        .arg(dir.join("fleet.toml"))
        .arg("--inventory")
        .arg(dir.join("inventory.csv"))
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(900), command)
        .await
        .context("provisioning did not finish within 900 s")??;
    let mut text = String::from_utf8_lossy(&output.stdout).into_owned();
    text += &String::from_utf8_lossy(&output.stderr);
    Ok((output.status.code().unwrap_or(-1), text))
}

/// The service's main process id and restart count, from systemd.
async fn service_state(vm: &PiVm) -> Result<(u32, u32, String)> {
    let text = vm
        .ssh("systemctl show capture-agent.service -p MainPID -p NRestarts -p ActiveState")
        .await?;
    let mut pid = None;
    let mut restarts = None;
    let mut active = String::new();
    for line in text.lines() {
        match line.split_once('=') {
            Some(("MainPID", v)) => pid = v.parse().ok(),
            Some(("NRestarts", v)) => restarts = v.parse().ok(),
            Some(("ActiveState", v)) => active = v.to_owned(),
            _ => {}
        }
    }
    Ok((
        pid.context("no MainPID")?,
        restarts.context("no NRestarts")?,
        active,
    ))
}

/// A failure message with what the guest saw: the agent's journal and the console.
async fn guest_context(system: &System<PiVm>) -> String {
    format!(
        "agent journal:\n{}\nconsole tail:\n{}",
        system.agent.journal(60).await,
        system.agent.console_tail(40)
    )
}

/// What one power cut interrupted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Moment {
    /// While both cameras recorded an order.
    Recording,
    /// Right after the stop was answered: the clips are being sealed.
    Sealing,
    /// Up to 3 s after the stop: the clips are being uploaded (or waiting for it).
    Uploading,
    /// Right after the start was answered: the clips exist, hardly a frame on disk.
    Answered,
}

impl Moment {
    const ALL: [Moment; 4] = [
        Moment::Recording,
        Moment::Sealing,
        Moment::Uploading,
        Moment::Answered,
    ];

    fn name(self) -> &'static str {
        match self {
            Moment::Recording => "recording",
            Moment::Sealing => "sealing",
            Moment::Uploading => "uploading",
            Moment::Answered => "answered",
        }
    }
}

/// The orders whose recording a power cut interrupted: how long they had recorded by then.
type CutRecordings = Vec<(String, Duration)>;

/// Cuts the power at `moment` of an order, boots again and waits for the station; checks the
/// spool's integrity. Returns the order's recorded time when the cut fell in a recording.
async fn power_cut(
    system: &mut System<PiVm>,
    rng: &mut StdRng,
    cut: u32,
    moment: Moment,
) -> Result<Option<(String, Duration)>> {
    let order = format!("SO-VM-CUT-{cut}");
    let start = system.command_for("start", &order);
    let reply = system.command(start).await?;
    ensure!(reply["ok"] == true, "start {order}: {reply}");
    let started = Instant::now();
    let mut stopped = false;
    let delay = match moment {
        Moment::Recording => {
            let recorded = Duration::from_millis(rng.random_range(1500..6000));
            tokio::time::sleep(recorded).await;
            Duration::ZERO
        }
        Moment::Answered => Duration::from_millis(rng.random_range(0..200)),
        Moment::Sealing | Moment::Uploading => {
            tokio::time::sleep(Duration::from_millis(rng.random_range(2000..4000))).await;
            let stop = system.command_for("stop", &order);
            let reply = system.command(stop).await?;
            ensure!(reply["ok"] == true, "stop {order}: {reply}");
            stopped = true;
            if moment == Moment::Sealing {
                Duration::from_millis(rng.random_range(0..300))
            } else {
                Duration::from_millis(rng.random_range(300..3000))
            }
        }
    };
    tokio::time::sleep(delay).await;
    let recorded = started.elapsed();
    system.pump(Duration::ZERO).await?;
    system.agent.power_cut()?;
    system.ledger.faults += 1;
    println!(
        "pi-vm: power cut {cut} of {order} while {} ({:.1} s after the start was answered)",
        moment.name(),
        recorded.as_secs_f64()
    );
    let boot = SystemTime::now();
    system.agent.boot().await?;
    system
        .wait_online_since(boot, BACK_ONLINE)
        .await
        .with_context(|| format!("the station after power cut {cut}"))?;
    let integrity = system.agent.spool_integrity().await?;
    ensure!(
        integrity == "ok",
        "PRAGMA integrity_check after power cut {cut}: {integrity}"
    );
    if !stopped {
        // The boot sealed what was cut; the line's stop finds nothing recording, or stops
        // a recording the agent took up again.
        let stop = system.command_for("stop", &order);
        let reply = system.command(stop).await?;
        ensure!(
            reply["ok"] == true || reply["error"]["code"] == "not_recording",
            "stop {order} after the cut: {reply}"
        );
    }
    Ok((!stopped).then_some((order, recorded)))
}

/// The completed clips of the orders a cut interrupted lost at most the last fragment: the
/// video a clip holds (its pre-roll included) falls short of the time recorded by at most
/// [`MAX_LOST_VIDEO`]. Returns the largest shortfall.
fn check_lost_video(system: &System<PiVm>, cut: &CutRecordings) -> Result<Duration> {
    let mut worst = Duration::ZERO;
    for (order, recorded) in cut {
        for (clip_id, clip) in system
            .ledger
            .clips
            .iter()
            .filter(|(_, c)| &c.order == order)
        {
            let Some((_, data)) = clip.completed.values().next() else {
                continue;
            };
            let held = Duration::from_millis(data["duration_ms"].as_u64().unwrap_or(0));
            let short = recorded.saturating_sub(held);
            worst = worst.max(short);
            ensure!(
                short <= MAX_LOST_VIDEO,
                "clip {clip_id} of {order} holds {held:?} of video, {recorded:?} were recorded when the power was cut"
            );
        }
    }
    Ok(worst)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_package_on_an_emulated_pi_records_v4l2_and_survives_the_watchdog_restarts_and_power_cuts()
 {
    if let Err(e) = run().await {
        panic!("{e:#}");
    }
}

async fn run() -> Result<()> {
    let mut rng = rng();
    let cuts = cuts();
    let mut clock = Clock::new();
    let deb = arm64_package().await?;
    clock.phase("arm64 package");
    PiVm::ensure_image().await?;
    clock.phase("image");
    let options = SystemOptions::default();
    let (cloud, vm) = tokio::join!(System::start_cloud(&options), PiVm::start());
    let (cloud, vm) = (cloud?, vm?);
    clock.phase("boot (and the cloud side)");

    // Provisioning, as on a Pi: the package over SSH, agent.toml, the service, `online`.
    let fleet = tempfile::Builder::new().prefix("pi-vm-fleet-").tempdir()?;
    write_fleet(fleet.path(), &cloud, &vm, &deb)?;
    let (code, output) = provision(fleet.path()).await?;
    println!("{output}");
    if code != 0 {
        bail!(
            "provisioning failed ({code}):\n{output}\nconsole:\n{}\njournal:\n{}",
            vm.console_tail(40),
            vm.journal(60).await
        );
    }
    ensure!(output.contains("online"), "{output}");
    clock.phase("provision");
    let mut system = System::with_station(cloud, vm).await?;

    // The cameras are real V4L2 devices, found by GStreamer's device provider.
    let cameras = system
        .agent
        .ssh(&PiVm::as_agent("capture-agent cameras"))
        .await?;
    println!("pi-vm: capture-agent cameras:\n{cameras}");
    for i in 0..CAMERAS.len() {
        ensure!(
            cameras.contains(&format!("/dev/video{i}")),
            "capture-agent cameras does not list /dev/video{i}:\n{cameras}"
        );
    }
    let security = system
        .agent
        .ssh("sudo -n systemd-analyze security --no-pager capture-agent.service")
        .await?;
    let exposure = security
        .lines()
        .find_map(|l| l.split_once("Overall exposure level for capture-agent.service: "))
        .map(|(_, score)| score.trim().to_owned())
        .context("no overall exposure in systemd-analyze security")?;
    println!("pi-vm: systemd-analyze security: {exposure}");

    // One order end to end from the V4L2 devices.
    system.ok("start", "SO-VM-1").await?;
    tokio::time::sleep(Duration::from_secs(4)).await;
    system.ok("stop", "SO-VM-1").await?;
    let figures = system.audit(SETTLE).await;
    let figures = match figures {
        Ok(f) => f,
        Err(e) => bail!("{e:#}\n{}", guest_context(&system).await),
    };
    ensure!(figures.completed == CAMERAS.len(), "{figures:?}");
    clock.phase("one order end to end");

    // The watchdog: a stopped agent sends no WATCHDOG=1; systemd kills and restarts it.
    let (pid, restarts, _) = service_state(&system.agent).await?;
    system
        .agent
        .ssh(&format!("sudo -n kill -STOP {pid}"))
        .await?;
    let stopped_at = Instant::now();
    let hung = SystemTime::now();
    system.ledger.faults += 1;
    loop {
        let (new_pid, new_restarts, active) = service_state(&system.agent).await?;
        if new_pid != pid && new_restarts > restarts && active == "active" {
            break;
        }
        if stopped_at.elapsed() > Duration::from_secs(180) {
            bail!(
                "the watchdog did not restart the SIGSTOPped agent within 180 s (MainPID {new_pid}, NRestarts {new_restarts}, {active})\n{}",
                guest_context(&system).await
            );
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let watchdog_restart = stopped_at.elapsed();
    system.wait_online_since(hung, BACK_ONLINE).await?;
    println!(
        "pi-vm: watchdog: restarted after {:.1} s, online after {:.1} s",
        watchdog_restart.as_secs_f64(),
        stopped_at.elapsed().as_secs_f64()
    );
    clock.phase("watchdog restart");

    // `systemctl restart` during a recording: SIGTERM seals the open clips, and the restart
    // returns once the new agent is READY again.
    system.ok("start", "SO-VM-RESTART").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let restart_at = Instant::now();
    system
        .agent
        .ssh("sudo -n systemctl restart capture-agent.service")
        .await?;
    let restart = restart_at.elapsed();
    let (_, _, active) = service_state(&system.agent).await?;
    ensure!(active == "active", "after systemctl restart: {active}");
    // Type=notify: `systemctl restart` returned on READY=1, which comes once the cameras
    // deliver frames.
    let metrics = system.agent.metrics(METRICS_PORT).await?;
    for camera in CAMERAS {
        ensure!(
            metrics.contains(&format!("capture_camera_up{{camera=\"{camera}\"}} 1\n")),
            "camera {camera} not up when systemctl restart returned:\n{metrics}"
        );
    }
    let stop = system.command_for("stop", "SO-VM-RESTART");
    let reply = system.command(stop).await?;
    ensure!(
        reply["ok"] == true || reply["error"]["code"] == "not_recording",
        "stop after the restart: {reply}"
    );
    println!(
        "pi-vm: systemctl restart during a recording returned after {:.1} s",
        restart.as_secs_f64()
    );
    clock.phase("systemctl restart");

    // A reboot with clips in flight: the station comes back and delivers them.
    system.ok("start", "SO-VM-REBOOT").await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    system.ok("stop", "SO-VM-REBOOT").await?;
    let reboot = SystemTime::now();
    system.agent.reboot().await?;
    system.wait_online_since(reboot, BACK_ONLINE).await?;
    clock.phase("reboot");

    // Power cuts at random moments.
    let mut cut_recordings = CutRecordings::new();
    let cuts_started = Instant::now();
    // The moments in turn from a random one: three cuts hit three kinds, four hit all.
    let first = rng.random_range(0..Moment::ALL.len());
    for cut in 0..cuts {
        let moment = Moment::ALL[(first + cut as usize) % Moment::ALL.len()];
        match power_cut(&mut system, &mut rng, cut, moment).await {
            Ok(Some(recording)) => cut_recordings.push(recording),
            Ok(None) => {}
            Err(e) => bail!("{e:#}\n{}", guest_context(&system).await),
        }
    }
    let per_cut = cuts_started.elapsed().as_secs_f64() / f64::from(cuts.max(1));
    clock.phase("power cuts");

    let figures = match system.audit(SETTLE).await {
        Ok(f) => f,
        Err(e) => bail!("{e:#}\n{}", guest_context(&system).await),
    };
    let worst_lost = check_lost_video(&system, &cut_recordings)?;
    clock.phase("audit");
    // Every clip the station failed, with the station's reason: the figures' `failed`
    // explained clip by clip.
    for (clip_id, clip) in &system.ledger.clips {
        for reason in &clip.failures {
            println!(
                "pi-vm: clip {clip_id} of {} ({}) failed on the station: {reason}",
                clip.order,
                clip.camera.as_deref().unwrap_or("?")
            );
        }
    }
    ensure!((figures.lost, figures.duplicates) == (0, 0), "{figures:?}");
    ensure!(
        figures.completed + figures.failed == figures.clips,
        "{figures:?}"
    );
    ensure!(
        figures.completed * 2 >= figures.clips,
        "only {} of {} clips completed: {figures:?}",
        figures.completed,
        figures.clips
    );
    ensure!(
        figures.accepted_on_station == figures.completed,
        "{figures:?}"
    );

    let mut line = figures.to_json(&format!("pi-vm: {cuts} power cuts"));
    line["cuts"] = json!(cuts);
    line["seconds_per_cut"] = json!((per_cut * 10.0).round() / 10.0);
    line["max_lost_video_ms"] = json!(worst_lost.as_millis() as u64);
    line["watchdog_restart_s"] = json!((watchdog_restart.as_secs_f64() * 10.0).round() / 10.0);
    line["systemctl_restart_s"] = json!((restart.as_secs_f64() * 10.0).round() / 10.0);
    line["security_exposure"] = json!(exposure);
    line["total_s"] = json!(clock.start.elapsed().as_secs());
    line["phases_s"] = Value::Object(
        clock
            .phases
            .iter()
            .map(|(name, s)| (name.clone(), json!((s * 10.0).round() / 10.0)))
            .collect(),
    );
    println!("pi-vm figures: {line}");
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join("pi-vm-figures.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)?;
    writeln!(file, "{line}")?;
    Ok(())
}
