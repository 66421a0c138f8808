//! `capture-agent cameras`: what cameras this machine has, and their modes.

use crate::capture::discovery::discover;
use crate::hint::explain;

/// Runs `cameras`.
pub fn cameras() -> anyhow::Result<()> {
    let found = discover().map_err(explain)?;
    if found.is_empty() {
        println!("No cameras found.");
        println!("  USB (UVC): plug the camera in, then `ls -l /dev/v4l/by-id/` should list it;");
        println!("             the user needs the `video` group (`id` shows it).");
        println!(
            "  CSI:       install gstreamer1.0-libcamera and check `libcamera-hello --list-cameras`."
        );
        println!("  RTSP:      IP cameras are not discovered: configure source = \"rtsp://...\".");
        return Ok(());
    }
    for camera in found {
        println!("{} [{}]", camera.name, camera.provider);
        match &camera.source {
            Some(source) => println!("  source = \"{source}\""),
            None => println!("  (no device path reported)"),
        }
        for mode in &camera.modes {
            println!("    {mode}");
        }
    }
    Ok(())
}
