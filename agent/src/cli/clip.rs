//! `capture-agent seal` and `capture-agent inspect`: work on clip files.

use std::path::PathBuf;

use clap::Args;

use crate::capture::{inspect as inspect_clip, seal_part_file};
use crate::hint::explain;

/// Options of `seal`.
#[derive(Debug, Args)]
pub struct SealArgs {
    /// `*.mp4.part` files left by a crash.
    #[arg(required = true)]
    pub parts: Vec<PathBuf>,
}

/// Options of `inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// MP4 files (sealed or not).
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
}

/// Runs `seal`: rewrites each cut file from its complete frames and renames it.
pub fn seal(args: SealArgs) -> anyhow::Result<()> {
    for part in &args.parts {
        let clip = seal_part_file(part, crate::digest::DEFAULT_PART_SIZE).map_err(explain)?;
        println!(
            "sealed {} -> {}: {:.2} s, {} frames, {} bytes, sha256 {}",
            part.display(),
            clip.path.display(),
            clip.duration.as_secs_f64(),
            clip.frames,
            clip.size,
            clip.sha256
        );
    }
    Ok(())
}

/// Runs `inspect`: reads every frame and reports what is really in the file.
pub fn inspect(args: InspectArgs) -> anyhow::Result<()> {
    for file in &args.files {
        let info = inspect_clip(file).map_err(explain)?;
        println!(
            "{}: {}x{}, {} frames, {:.2} s{}{}",
            file.display(),
            info.width,
            info.height,
            info.frames,
            info.duration.as_secs_f64(),
            if info.starts_on_keyframe {
                ", starts on a keyframe"
            } else {
                ", does NOT start on a keyframe"
            },
            if info.cut {
                ", cut (ends in an incomplete fragment)"
            } else {
                ""
            }
        );
    }
    Ok(())
}
