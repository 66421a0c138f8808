//! Upload benchmark: one large file to Garage on loopback, through the agent's uploader,
//! `rclone copyto` and `aws s3 cp`, side by side in one run (DESIGN.md section 8).
//!
//! ```text
//! cargo bench -p capture-agent --bench upload -- [SIZE_MIB] [ROUNDS]     (scripts/bench-upload)
//! ```
//!
//! The bench starts its own Garage (the test fixture), writes SIZE_MIB (default 1024) of
//! random bytes, and uploads the file with each side in turn, ROUNDS times (default 1), each
//! side in a process of its own run under `/usr/bin/time`: wall seconds, CPU seconds (user +
//! sys) and peak RSS of that process alone (Garage is another process, not counted). The
//! agent's side is this same binary started again in child mode: it opens a spool, seals a
//! clip row for the file (size, sha256 and part MD5s known, as after recording: the seal
//! computes them in its one read) and runs the `Uploader` until the clip is `uploaded`.
//! Every upload is checked by HEAD (size).
//!
//! It also times the seal's read alone ([`digest_file`]: sha256 and the MD5 of each 8 MiB
//! part in one pass), the cost the agent pays once per clip at seal time so that the
//! uploader reads each byte only to send it.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use capture_agent::digest::{PartDigests, digest_file};
use capture_agent::spool::{self, ClipState, NewClip, Sealed, Spool, clips};
use capture_agent::telemetry::Metrics;
use capture_agent::uploader::{Uploader, UploaderSettings};
use capture_tests::fixtures::Garage;
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

const MIB: u64 = 1 << 20;
const CHILD: &str = "UPLOAD_BENCH_CHILD";

fn main() -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if std::env::var_os(CHILD).is_some() {
        return runtime.block_on(child());
    }
    let numbers: Vec<u64> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let size_mib = numbers.first().copied().unwrap_or(1024);
    let rounds = numbers.get(1).copied().unwrap_or(1);
    runtime.block_on(bench(size_mib * MIB, rounds))
}

/// One side's measurement.
#[derive(Debug, Clone, Copy)]
struct Measured {
    wall: f64,
    cpu: f64,
    rss_kib: f64,
}

async fn bench(size: u64, rounds: u64) -> Result<()> {
    let time = Path::new("/usr/bin/time");
    if !time.exists() {
        bail!("needs /usr/bin/time (apt-get install time)");
    }
    let aws = Path::new("/usr/bin/aws");
    let rclone = Path::new("/usr/bin/rclone");
    for (tool, package) in [(aws, "awscli"), (rclone, "rclone")] {
        if !tool.exists() {
            bail!(
                "needs {} (apt-get install -y {package}; scripts/bench-upload does this)",
                tool.display()
            );
        }
    }

    let garage = Garage::start().await?;
    let work = tempfile::tempdir()?;
    let file = work.path().join("clip.mp4");
    eprintln!("writing {} MiB of random bytes...", size / MIB);
    let sha256 = write_random_file(&file, size)?;
    let settings = garage.settings();
    let secret_file = work.path().join("secret");
    std::fs::write(&secret_file, &settings.secret_access_key)?;
    std::fs::set_permissions(&secret_file, std::fs::Permissions::from_mode(0o600))?;
    let aws_config = work.path().join("aws-config");
    std::fs::write(
        &aws_config,
        "[default]\nregion = garage\ns3 =\n    addressing_style = path\n",
    )?;

    let md5_cpu_before = process_cpu_seconds()?;
    let md5_started = Instant::now();
    let digests = digest_file(&file, 8 * MIB)?;
    let md5_secs = md5_started.elapsed().as_secs_f64();
    let md5_cpu = process_cpu_seconds()? - md5_cpu_before;
    if digests.sha256 != sha256 {
        bail!(
            "the seal's read hashed {} to another sha256",
            file.display()
        );
    }

    let mut results: Vec<(&str, Measured)> = Vec::new();
    for round in 0..rounds {
        for side in ["capture-agent uploader", "rclone copyto", "aws s3 cp"] {
            let key = format!("bench/{round}/{}.mp4", side.replace(' ', "-"));
            let mut command = Command::new(time);
            // Only what each side is given below: no AWS_* or RCLONE_* setting of this
            // machine (a CA bundle, a profile) changes what a side does.
            command
                .env_clear()
                .env("PATH", std::env::var_os("PATH").unwrap_or_default())
                .env("HOME", work.path())
                .arg("-f")
                .arg("%e %U %S %M")
                .arg("-o")
                .arg(work.path().join("time"));
            match side {
                "capture-agent uploader" => {
                    command
                        .arg(std::env::current_exe()?)
                        .env(CHILD, "1")
                        .env("UPLOAD_BENCH_ENDPOINT", garage.endpoint())
                        .env("UPLOAD_BENCH_BUCKET", garage.bucket())
                        .env("UPLOAD_BENCH_KEY_ID", &settings.access_key_id)
                        .env("UPLOAD_BENCH_SECRET_FILE", &secret_file)
                        .env("UPLOAD_BENCH_FILE", &file)
                        .env("UPLOAD_BENCH_SHA256", &sha256)
                        .env(
                            "UPLOAD_BENCH_PART_SIZE",
                            digests.parts.part_size.to_string(),
                        )
                        .env(
                            "UPLOAD_BENCH_PART_MD5S",
                            hex::encode(digests.parts.to_blob()),
                        );
                }
                "rclone copyto" => {
                    command
                        .arg(rclone)
                        .arg("copyto")
                        .arg("--ignore-times")
                        .arg("-q")
                        .arg(&file)
                        .arg(format!(":s3:{}/{key}", garage.bucket()))
                        .env("RCLONE_CONFIG", "/dev/null")
                        .env("RCLONE_S3_PROVIDER", "Other")
                        .env("RCLONE_S3_ENDPOINT", garage.endpoint())
                        .env("RCLONE_S3_REGION", "garage")
                        .env("RCLONE_S3_FORCE_PATH_STYLE", "true")
                        .env("RCLONE_S3_ACCESS_KEY_ID", &settings.access_key_id)
                        .env("RCLONE_S3_SECRET_ACCESS_KEY", &settings.secret_access_key);
                }
                _ => {
                    command
                        .arg(aws)
                        .arg("--endpoint-url")
                        .arg(garage.endpoint())
                        .arg("s3")
                        .arg("cp")
                        .arg("--only-show-errors")
                        .arg(&file)
                        .arg(format!("s3://{}/{key}", garage.bucket()))
                        .env("AWS_CONFIG_FILE", &aws_config)
                        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
                        .env("AWS_EC2_METADATA_DISABLED", "true")
                        .env("AWS_ACCESS_KEY_ID", &settings.access_key_id)
                        .env("AWS_SECRET_ACCESS_KEY", &settings.secret_access_key);
                }
            }
            eprintln!("round {}: {side}...", round + 1);
            let output = command
                .output()
                .with_context(|| format!("running {side}"))?;
            if !output.status.success() {
                bail!(
                    "{side} failed ({}): {}{}",
                    output.status,
                    String::from_utf8_lossy(&output.stdout),
                    String::from_utf8_lossy(&output.stderr)
                );
            }
            let measured = parse_time(&std::fs::read_to_string(work.path().join("time"))?)?;
            // The agent's key is the clip's object key; the child checked it. The peers'
            // objects are checked here.
            if side != "capture-agent uploader" {
                let head = garage
                    .client()
                    .head_object()
                    .bucket(garage.bucket())
                    .key(&key)
                    .send()
                    .await?;
                if head.content_length() != Some(i64::try_from(size)?) {
                    bail!(
                        "{side} stored {:?} bytes, not {size}",
                        head.content_length()
                    );
                }
            }
            results.push((side, measured));
        }
    }

    let machine = format!(
        "{} cores, {}, load average {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|c| c
                .lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_owned()))
            .unwrap_or_default(),
        std::fs::read_to_string("/proc/loadavg")
            .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
            .unwrap_or_default()
    );
    let mut table = String::new();
    writeln!(
        table,
        "\nUpload of {} MiB to Garage on loopback ({machine})\n",
        size / MIB
    )?;
    writeln!(
        table,
        "| round | side | wall s | MB/s | CPU s (user+sys) | peak RSS MiB |"
    )?;
    writeln!(table, "| --- | --- | --- | --- | --- | --- |")?;
    for (index, (side, m)) in results.iter().enumerate() {
        writeln!(
            table,
            "| {} | {side} | {:.2} | {:.1} | {:.2} | {:.1} |",
            index / 3 + 1,
            m.wall,
            size as f64 / 1e6 / m.wall,
            m.cpu,
            m.rss_kib / 1024.0
        )?;
    }
    writeln!(
        table,
        "\nThe seal's read alone (sha256 and the MD5 of each 8 MiB part, one pass, in this \
         process; paid once per clip at seal time, not by the uploader): {md5_secs:.2} s wall, \
         {md5_cpu:.2} CPU s ({:.0} MB per CPU second)",
        size as f64 / 1e6 / md5_cpu.max(0.01)
    )?;
    // Per round, against the faster peer of that round: the machine is shared and a peer
    // run that coincides with another session's build says nothing about the agent.
    let mut wall_ratios = Vec::new();
    let mut cpu_ratios = Vec::new();
    for round in results.chunks(3) {
        let [(_, agent), (_, rclone_side), (_, aws_side)] = round else {
            continue;
        };
        let (faster_name, faster) = if rclone_side.wall < aws_side.wall {
            ("rclone copyto", rclone_side)
        } else {
            ("aws s3 cp", aws_side)
        };
        let (wall, cpu) = (agent.wall / faster.wall, agent.cpu / faster.cpu);
        writeln!(
            table,
            "round {}: agent / faster peer ({faster_name}): wall {wall:.2}x, CPU {cpu:.2}x",
            wall_ratios.len() + 1
        )?;
        wall_ratios.push(wall);
        cpu_ratios.push(cpu);
    }
    let median = |values: &mut Vec<f64>| {
        values.sort_by(f64::total_cmp);
        values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
    };
    writeln!(
        table,
        "median: wall {:.2}x (goal <= 1.0x), CPU {:.2}x (goal <= 1.0x)",
        median(&mut wall_ratios),
        median(&mut cpu_ratios)
    )?;
    println!("{table}");
    Ok(())
}

/// User + system CPU seconds of this process so far (`/proc/self/stat`, clock ticks of
/// 1/100 s).
fn process_cpu_seconds() -> Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .context("/proc/self/stat")?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line; after the name, field 3 is first.
    let ticks = |index: usize| -> Result<f64> {
        Ok(fields
            .get(index)
            .context("/proc/self/stat is short")?
            .parse::<f64>()?)
    };
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

fn parse_time(text: &str) -> Result<Measured> {
    // /usr/bin/time may prefix a "Command exited with non-zero status" line.
    let line = text.lines().last().context("empty time output")?;
    let fields: Vec<f64> = line
        .split_whitespace()
        .map(str::parse)
        .collect::<Result<_, _>>()
        .with_context(|| format!("time printed {line:?}"))?;
    let [wall, user, sys, rss] = fields[..] else {
        bail!("time printed {line:?}");
    };
    Ok(Measured {
        wall,
        cpu: user + sys,
        rss_kib: rss,
    })
}

fn write_random_file(path: &Path, size: u64) -> Result<String> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; MIB as usize];
    let mut rng = rand::rng();
    let mut left = size;
    while left > 0 {
        let n = usize::try_from(left.min(MIB))?;
        rng.fill_bytes(&mut buffer[..n]);
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n])?;
        left -= n as u64;
    }
    file.flush()?;
    Ok(hex::encode(hasher.finalize()))
}

fn var(name: &str) -> Result<String> {
    std::env::var(name).with_context(|| format!("{name} is not set"))
}

/// Child mode: upload one file with the agent's uploader, as the daemon would.
async fn child() -> Result<()> {
    let file = PathBuf::from(var("UPLOAD_BENCH_FILE")?);
    let size = std::fs::metadata(&file)?.len();
    let secret = std::fs::read_to_string(var("UPLOAD_BENCH_SECRET_FILE")?)?;
    let mut store = capture_objstore::StoreSettings::new(
        var("UPLOAD_BENCH_ENDPOINT")?,
        "garage",
        var("UPLOAD_BENCH_KEY_ID")?,
        secret.trim(),
    )
    .with_path_style(true);
    store.max_attempts = 1;
    let dir = tempfile::tempdir()?;
    let spool = Spool::open(&spool::database_path(dir.path()))?;
    let clip_id = ulid::Ulid::new().to_string();
    let clip = NewClip {
        clip_id: clip_id.clone(),
        order: "SO-BENCH-000001".into(),
        camera: "top".into(),
        kind: "video".into(),
        state: ClipState::Recording,
        path: file.display().to_string(),
        started_at: capture_protocol::Timestamp::now().to_string(),
        preroll_ms: 0,
        clock_synced: true,
        meta: None,
    };
    let parts = PartDigests::from_blob(
        var("UPLOAD_BENCH_PART_SIZE")?.parse()?,
        &hex::decode(var("UPLOAD_BENCH_PART_MD5S")?)?,
        size,
    )
    .map_err(anyhow::Error::msg)?;
    let sealed = Sealed {
        path: file.display().to_string(),
        size: i64::try_from(size)?,
        sha256: var("UPLOAD_BENCH_SHA256")?,
        parts,
        duration_ms: 1000,
        ended_at: capture_protocol::Timestamp::now().to_string(),
        truncated: false,
    };
    let id = clip_id.clone();
    spool
        .call(move |c| {
            clips::insert(c, &clip)?;
            clips::seal(c, &id, &sealed)
        })
        .await?;

    let mut settings = UploaderSettings::new(
        "bench".parse()?,
        "pi-bench".parse()?,
        "bench".parse()?,
        var("UPLOAD_BENCH_BUCKET")?,
    );
    if let Ok(parts) = std::env::var("UPLOAD_BENCH_PARTS_IN_FLIGHT") {
        settings.parts_in_flight = parts.parse()?;
    }
    let metrics = Arc::new(Metrics::default());
    let uploader = Uploader::start(
        settings,
        capture_objstore::client(&store),
        spool.clone(),
        metrics.clone(),
        Arc::new(tokio::sync::Notify::new()),
        Arc::new(|| {}),
    );
    let deadline = Instant::now() + Duration::from_secs(600);
    while metrics.uploads.load(std::sync::atomic::Ordering::Relaxed) == 0 {
        if Instant::now() > deadline {
            let id = clip_id.clone();
            let row = spool.call(move |c| clips::get(c, &id)).await?;
            bail!(
                "not uploaded within 600 s; last error: {:?}",
                row.and_then(|r| r.last_error)
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let id = clip_id.clone();
    let row = spool
        .call(move |c| clips::get(c, &id))
        .await?
        .context("the clip vanished")?;
    if row.state != ClipState::Uploaded {
        bail!("the clip is {}, not uploaded", row.state.as_str());
    }
    uploader.shutdown().await;
    if metrics
        .upload_bytes
        .load(std::sync::atomic::Ordering::Relaxed)
        != size
    {
        bail!("the uploader counted another number of bytes than the file has");
    }
    Ok(())
}
