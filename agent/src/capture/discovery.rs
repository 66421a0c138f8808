//! Camera discovery for `capture-agent cameras`: what GStreamer's device monitor sees
//! (V4L2 through the v4l2 provider, CSI cameras through libcamera's provider when
//! `gstreamer1.0-libcamera` is installed), with each device's formats, sizes and rates.

use std::collections::BTreeSet;

use gstreamer as gst;
use gstreamer::prelude::*;

use super::error::CaptureError;

/// One camera as discovered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiscoveredCamera {
    /// Human name from the driver.
    pub name: String,
    /// The `source = "..."` value to put in the config (by-id path for V4L2 when there is one).
    pub source: Option<String>,
    /// The provider that found it (`v4l2deviceprovider`, `libcameraprovider`...).
    pub provider: String,
    /// Modes, one per line: `image/jpeg 1280x720 @ 30/1`.
    pub modes: Vec<String>,
}

/// Lists video sources. Codec and ISP nodes (a Pi's `/dev/video10..31`) are not sources, so
/// the monitor's `Video/Source` filter leaves them out.
pub fn discover() -> Result<Vec<DiscoveredCamera>, CaptureError> {
    gst::init()?;
    let monitor = gst::DeviceMonitor::new();
    monitor.add_filter(Some("Video/Source"), None);
    monitor
        .start()
        .map_err(|e| CaptureError::Gst(format!("starting the device monitor: {e}")))?;
    let devices = monitor.devices();
    monitor.stop();
    Ok(devices.iter().map(describe).collect())
}

fn describe(device: &gst::Device) -> DiscoveredCamera {
    let props = device.properties();
    let prop = |key: &str| props.as_ref().and_then(|p| p.get::<String>(key).ok());
    let provider = prop("device.api").unwrap_or_else(|| "unknown".into());
    let source = match prop("api.v4l2.path").or_else(|| prop("device.path")) {
        Some(path) if provider == "v4l2" || path.starts_with("/dev/") => {
            Some(format!("v4l2:{}", by_id_path(&path).unwrap_or(path)))
        }
        _ if provider.contains("libcamera") => Some(format!("libcamera:{}", device.display_name())),
        _ => None,
    };
    let mut modes = BTreeSet::new();
    if let Some(caps) = device.caps() {
        for s in caps.iter() {
            let w = s
                .get::<i32>("width")
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "?".into());
            let h = s
                .get::<i32>("height")
                .map(|v| v.to_string())
                .unwrap_or_else(|_| "?".into());
            let rate = s
                .value("framerate")
                .ok()
                .map(|v| v.serialize().map(|t| t.to_string()).unwrap_or_default())
                .unwrap_or_default();
            let format = s
                .get::<String>("format")
                .map(|f| format!(" {f}"))
                .unwrap_or_default();
            modes.insert(format!("{}{format} {w}x{h} @ {rate}", s.name()));
        }
    }
    DiscoveredCamera {
        name: device.display_name().to_string(),
        source,
        provider,
        modes: modes.into_iter().collect(),
    }
}

/// The `/dev/v4l/by-id/` link pointing at `/dev/videoN`, if any: stable across reboots.
fn by_id_path(dev: &str) -> Option<String> {
    let target = std::fs::canonicalize(dev).ok()?;
    std::fs::read_dir("/dev/v4l/by-id")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let path = entry.path();
            (std::fs::canonicalize(&path).ok()? == target).then(|| path.display().to_string())
        })
}
