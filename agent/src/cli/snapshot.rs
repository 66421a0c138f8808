//! `capture-agent snapshot`: one JPEG from a running camera pipeline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;

use super::camera_args::CameraArgs;
use super::runtime;
use crate::capture::Camera;
use crate::hint::explain;

/// Options of `snapshot`.
#[derive(Debug, Args)]
pub struct SnapshotArgs {
    #[command(flatten)]
    pub camera: CameraArgs,
    /// Output JPEG file.
    #[arg(long)]
    pub out: PathBuf,
}

/// Runs `snapshot`.
pub fn snapshot(args: SnapshotArgs) -> anyhow::Result<()> {
    let spec = args.camera.spec();
    spec.validate().map_err(explain)?;
    runtime()?.block_on(async {
        let camera = Camera::start(spec.clone()).map_err(explain)?;
        camera
            .wait_until_running(Duration::from_secs(20))
            .await
            .map_err(explain)?;
        let asked = Instant::now();
        let shot = camera.snapshot().await.map_err(explain)?;
        let took = asked.elapsed();
        shot.write_to(&args.out).map_err(explain)?;
        camera.shutdown().await;
        println!(
            "wrote {} ({}x{}, {} bytes, frame taken {} ms after the request)",
            args.out.display(),
            shot.width,
            shot.height,
            shot.jpeg.len(),
            took.as_millis()
        );
        anyhow::Ok(())
    })
}
