//! Camera sources: what a `source = "..."` string means and which GStreamer elements it becomes.
//!
//! | source | elements | gives |
//! | --- | --- | --- |
//! | `test` | `videotestsrc is-live=true` | raw, any size |
//! | `v4l2:/dev/v4l/by-id/...` | `v4l2src device=...` + caps per `input_format` (`jpegdec` for MJPEG) | raw, or H.264 |
//! | `libcamera` / `libcamera:<camera-name>` | `libcamerasrc` | raw |
//! | `rtsp://...` | `rtspsrc protocols=tcp ! rtph264depay ! h264parse` (decoded unless passthrough) | H.264 |
//!
//! Cameras are addressed by `/dev/v4l/by-id/` paths: `/dev/videoN` numbers change across
//! reboots and on a Pi `/dev/video10..31` are codec and ISP nodes, not cameras.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Where a camera's frames come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Source {
    /// GStreamer's live test pattern (tests, demos, benchmarks).
    Test,
    /// A V4L2 (USB UVC) camera by device path.
    V4l2(PathBuf),
    /// A CSI camera through libcamera; `None` takes the first camera.
    Libcamera(Option<String>),
    /// An IP camera; the URL as configured (may carry credentials: never logged in full).
    Rtsp(String),
}

/// What a V4L2 camera is asked to deliver.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InputFormat {
    /// Uncompressed frames (YUYV, NV12...): low resolution or low fps over USB 2.
    Raw,
    /// Motion JPEG, decoded with `jpegdec`.
    #[default]
    Mjpeg,
    /// The camera's own H.264 (for `encoder = "passthrough"`, or decoded and re-encoded).
    H264,
}

impl Source {
    /// The device or URL to name in errors and logs (RTSP credentials removed).
    pub fn device(&self) -> String {
        match self {
            Self::Test => "videotestsrc".into(),
            Self::V4l2(path) => path.display().to_string(),
            Self::Libcamera(None) => "libcamera (first camera)".into(),
            Self::Libcamera(Some(name)) => format!("libcamera {name}"),
            Self::Rtsp(url) => redact_url(url),
        }
    }

    /// Whether the source can hand over H.264 without decoding.
    pub fn can_give_h264(&self, input: InputFormat) -> bool {
        match self {
            Self::V4l2(_) => input == InputFormat::H264,
            Self::Rtsp(_) => true,
            Self::Test | Self::Libcamera(_) => false,
        }
    }

    /// The GStreamer element the source needs (checked before a pipeline is built).
    pub fn element(&self) -> &'static str {
        match self {
            Self::Test => "videotestsrc",
            Self::V4l2(_) => "v4l2src",
            Self::Libcamera(_) => "libcamerasrc",
            Self::Rtsp(_) => "rtspsrc",
        }
    }

    /// Refuses values that cannot be put safely into a pipeline description.
    pub(crate) fn validate(&self) -> Result<(), String> {
        let unsafe_chars = |s: &str| {
            s.chars()
                .any(|c| c.is_whitespace() || c.is_control() || "\"'\\!".contains(c))
        };
        match self {
            Self::Test => Ok(()),
            Self::V4l2(path) => {
                let text = path.to_string_lossy();
                if !path.is_absolute() || !text.starts_with("/dev/") || unsafe_chars(&text) {
                    return Err(format!(
                        "v4l2 device {text:?} must be an absolute /dev/... path without spaces or quotes"
                    ));
                }
                Ok(())
            }
            Self::Libcamera(Some(name)) if name.contains('"') || name.contains('\\') => Err(
                format!("libcamera camera name {name:?} must not contain quotes or backslashes"),
            ),
            Self::Libcamera(_) => Ok(()),
            Self::Rtsp(url) if unsafe_chars(url) => Err(format!(
                "rtsp url {} must not contain spaces, quotes, '!' or backslashes",
                redact_url(url)
            )),
            Self::Rtsp(_) => Ok(()),
        }
    }

    /// Checks, before starting a pipeline, that a local device exists. Returns the device
    /// path that is missing.
    pub(crate) fn missing_device(&self) -> Option<&Path> {
        match self {
            Self::V4l2(path) if !path.exists() => Some(path),
            _ => None,
        }
    }

    /// The pipeline-description fragment from the device to frames of `raw_caps` in a 4:2:0
    /// format (players, browsers included, cannot decode H.264 High 4:4:4): I420, or NV12 for
    /// libcamera, which gives it natively. With `decode = false` on an H.264 source, the
    /// fragment ends with parsed H.264 instead.
    pub(crate) fn launch_fragment(
        &self,
        input: InputFormat,
        raw_caps: &str,
        decode: bool,
    ) -> String {
        const I420: &str = "videoconvert ! video/x-raw,format=I420";
        match self {
            Self::Test => format!("videotestsrc is-live=true ! {raw_caps},format=I420"),
            Self::V4l2(path) => {
                let dev = format!("v4l2src device=\"{}\"", path.display());
                let size = caps_size_fields(raw_caps);
                match input {
                    InputFormat::Raw => format!("{dev} ! {raw_caps} ! {I420}"),
                    InputFormat::Mjpeg => format!("{dev} ! image/jpeg{size} ! jpegdec ! {I420}"),
                    InputFormat::H264 if decode => {
                        format!("{dev} ! video/x-h264{size} ! h264parse ! decodebin ! {I420}")
                    }
                    InputFormat::H264 => {
                        format!("{dev} ! video/x-h264{size} ! h264parse config-interval=-1")
                    }
                }
            }
            Self::Libcamera(name) => {
                let cam = name
                    .as_ref()
                    .map(|n| format!(" camera-name=\"{n}\""))
                    .unwrap_or_default();
                format!("libcamerasrc{cam} ! {raw_caps} ! videoconvert ! video/x-raw,format=NV12")
            }
            Self::Rtsp(url) => {
                let src = format!(
                    "rtspsrc location=\"{url}\" protocols=tcp latency=200 ! rtph264depay ! h264parse config-interval=-1"
                );
                if decode {
                    let plain = raw_caps.split(",framerate").next().unwrap_or(raw_caps);
                    format!("{src} ! decodebin ! videoconvert ! videoscale ! {plain},format=I420")
                } else {
                    src
                }
            }
        }
    }
}

/// `,width=..,height=..,framerate=..` out of `video/x-raw,width=..`.
fn caps_size_fields(raw_caps: &str) -> String {
    raw_caps
        .strip_prefix("video/x-raw")
        .unwrap_or("")
        .to_string()
}

/// `rtsp://user:pass@host/x` -> `rtsp://***@host/x`.
fn redact_url(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}://***{}", &url[..scheme], &url[at..])
        }
        _ => url.to_string(),
    }
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Test => f.write_str("test"),
            Self::V4l2(path) => write!(f, "v4l2:{}", path.display()),
            Self::Libcamera(None) => f.write_str("libcamera"),
            Self::Libcamera(Some(name)) => write!(f, "libcamera:{name}"),
            Self::Rtsp(url) => f.write_str(&redact_url(url)),
        }
    }
}

impl FromStr for Source {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        let source = if s == "test" {
            Self::Test
        } else if let Some(path) = s.strip_prefix("v4l2:") {
            Self::V4l2(PathBuf::from(path))
        } else if s == "libcamera" {
            Self::Libcamera(None)
        } else if let Some(name) = s.strip_prefix("libcamera:") {
            Self::Libcamera(Some(name.to_string()))
        } else if s.starts_with("rtsp://") || s.starts_with("rtsps://") {
            Self::Rtsp(s.to_string())
        } else {
            return Err(format!(
                "source {s:?} must be \"test\", \"v4l2:/dev/v4l/by-id/...\", \"libcamera\", \"libcamera:<name>\" or \"rtsp://...\""
            ));
        };
        source.validate()?;
        Ok(source)
    }
}

impl TryFrom<String> for Source {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Source> for String {
    fn from(s: Source) -> Self {
        match s {
            // Keep credentials when writing config back out.
            Source::Rtsp(url) => url,
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_and_print() {
        for text in [
            "test",
            "v4l2:/dev/v4l/by-id/usb-cam-video-index0",
            "libcamera",
            "libcamera:/base/imx708",
            "rtsp://cam/1",
        ] {
            let source: Source = text.parse().unwrap();
            assert_eq!(source.to_string(), text);
        }
        assert!("/dev/video0".parse::<Source>().is_err());
        assert!(
            "v4l2:/dev/video0 ! filesink".parse::<Source>().is_err(),
            "no pipeline injection"
        );
    }

    #[test]
    fn rtsp_credentials_are_not_shown() {
        let source: Source = "rtsp://admin:secret@10.0.0.9/stream1".parse().unwrap();
        assert_eq!(source.device(), "rtsp://***@10.0.0.9/stream1");
        assert!(!source.to_string().contains("secret"));
        assert!(String::from(source).contains("secret"));
    }

    #[test]
    fn v4l2_mjpeg_is_decoded() {
        let source: Source = "v4l2:/dev/v4l/by-id/x".parse().unwrap();
        let caps = "video/x-raw,width=640,height=480,framerate=30/1";
        let frag = source.launch_fragment(InputFormat::Mjpeg, caps, true);
        assert_eq!(
            frag,
            "v4l2src device=\"/dev/v4l/by-id/x\" ! image/jpeg,width=640,height=480,framerate=30/1 ! jpegdec ! videoconvert ! video/x-raw,format=I420"
        );
    }
}
