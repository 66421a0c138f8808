//! `capture-agent record`: one clip from one camera, through the daemon's engine.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use super::camera_args::{CameraArgs, parse_duration};
use super::runtime;
use crate::capture::pipeline::launch_equivalent;
use crate::capture::{Camera, EncoderKind, RecordingRequest};
use crate::hint::explain;

/// Options of `record`.
#[derive(Debug, Args)]
pub struct RecordArgs {
    #[command(flatten)]
    pub camera: CameraArgs,
    /// Seconds to record after the start (pre-roll and post-roll come on top).
    #[arg(long, default_value_t = 5)]
    pub seconds: u64,
    /// Output file; must end in .mp4. Written as OUT.part until sealed.
    #[arg(long)]
    pub out: PathBuf,
    /// Order id burned into the picture.
    #[arg(long, default_value = "TEST-ORDER")]
    pub order: String,
    /// Station name burned into the picture.
    #[arg(long, default_value = "bench")]
    pub station: String,
    /// Video before the start to include (the camera runs this long first). `0` for none.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub preroll: Duration,
    /// Video after the stop to include.
    #[arg(long, default_value = "0", value_parser = parse_duration)]
    pub postroll: Duration,
    /// Print the equivalent `gst-launch-1.0 -e` pipeline and exit (used by the benchmark).
    #[arg(long)]
    pub print_pipeline: bool,
}

/// Runs `record`.
pub fn record(args: RecordArgs) -> anyhow::Result<()> {
    let mut spec = args.camera.spec();
    spec.preroll = args.preroll;
    spec.postroll = args.postroll;
    spec.validate().map_err(explain)?;
    let (dir, clip_id) = split_output(&args.out)?;
    let label = format!("{} | {} | {}", args.order, args.station, spec.name);

    if args.print_pipeline {
        gstreamer::init()?;
        let kind = EncoderKind::resolve(&spec).map_err(explain)?;
        println!(
            "{}",
            launch_equivalent(&spec, kind, &label, &args.out.display().to_string())
        );
        return Ok(());
    }

    let rt = runtime()?;
    rt.block_on(async {
        let camera = Camera::start(spec.clone()).map_err(explain)?;
        println!(
            "camera {} ({}) starting, encoder {}",
            spec.name,
            spec.source,
            camera.encoder_kind()
        );
        camera
            .wait_until_running(Duration::from_secs(20))
            .await
            .map_err(explain)?;
        if !args.preroll.is_zero() {
            println!("filling the {:?} pre-roll", args.preroll);
            tokio::time::sleep(args.preroll).await;
        }
        let request = RecordingRequest {
            clip_id,
            order: args.order.clone(),
            station: args.station.clone(),
            dir,
            preroll: Some(args.preroll),
            postroll: Some(args.postroll),
            part_size: crate::digest::DEFAULT_PART_SIZE,
        };
        let started = camera.start_recording(request).await.map_err(explain)?;
        println!(
            "recording {} for {} s",
            started.part.display(),
            args.seconds
        );
        std::io::stdout().flush()?;

        let begin = Instant::now();
        for second in 1..=args.seconds {
            let next = begin + Duration::from_secs(second);
            tokio::time::sleep_until(next.into()).await;
            print!("\r  {second}/{} s", args.seconds);
            std::io::stdout().flush()?;
        }
        if args.seconds > 0 {
            println!();
        }
        let clip = camera.stop_recording().await.map_err(explain)?;
        camera.shutdown().await;
        println!("sealed {}", clip.path.display());
        println!(
            "  duration {:.2} s ({} frames, pre-roll {:.2} s)",
            clip.duration.as_secs_f64(),
            clip.frames,
            clip.preroll.as_secs_f64()
        );
        println!("  size {} bytes, sha256 {}", clip.size, clip.sha256);
        anyhow::Ok(())
    })
}

/// `DIR/NAME.mp4` -> (`DIR`, `NAME`).
fn split_output(out: &std::path::Path) -> anyhow::Result<(PathBuf, String)> {
    if out.extension().and_then(|e| e.to_str()) != Some("mp4") {
        bail!("--out {} must end in .mp4", out.display());
    }
    let stem = out
        .file_stem()
        .and_then(|s| s.to_str())
        .context("--out needs a file name")?;
    let dir = match out.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !dir.is_dir() {
        bail!("the directory {} does not exist", dir.display());
    }
    Ok((dir, stem.to_string()))
}
