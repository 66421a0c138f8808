//! `CameraSpec`: the configuration of one camera, as the daemon's TOML embeds it.
//!
//! ```toml
//! [[camera]]
//! name = "top"
//! source = "v4l2:/dev/v4l/by-id/usb-046d_HD_Pro_Webcam_C920-video-index0"
//! input_format = "mjpeg"      # v4l2 only: raw | mjpeg | h264
//! resolution = "1280x720"
//! fps = 30
//! bitrate = "4Mbps"
//! encoder = "auto"            # auto | x264 | v4l2 | passthrough
//! keyframe_interval = "1s"
//! preroll = "3s"
//! postroll = "1s"
//! overlay = true
//! ```
//!
//! Every field but `name` and `source` has a default; unknown fields are refused so that a
//! typo is an error, not a silently ignored setting.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::error::CaptureError;
use super::source::{InputFormat, Source};

/// What the configuration asks for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EncoderChoice {
    /// Hardware where present, else x264; passthrough for H.264 sources without overlay.
    #[default]
    Auto,
    /// Software `x264enc`.
    X264,
    /// Hardware `v4l2h264enc` (fails if absent).
    V4l2,
    /// Keep the camera's own H.264.
    Passthrough,
}

/// The smallest frame that carries an overlay: below it no legible label fits (validation
/// refuses `overlay = true` for smaller frames).
pub const MIN_OVERLAY_FRAME: Resolution = Resolution {
    width: 160,
    height: 120,
};

/// One camera of a station.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CameraSpec {
    /// Short name (`top`, `side`), used in file names, logs, the overlay and MQTT messages.
    pub name: String,
    /// Where frames come from: `test`, `v4l2:/dev/v4l/by-id/...`, `libcamera[:name]`, `rtsp://...`.
    pub source: Source,
    /// What a V4L2 camera is asked for. MJPEG is what most UVC cameras need for 720p30 over USB 2.
    #[serde(default)]
    pub input_format: InputFormat,
    /// Frame size, `WIDTHxHEIGHT`.
    #[serde(default)]
    pub resolution: Resolution,
    /// Frames per second.
    #[serde(default = "default_fps")]
    pub fps: u32,
    /// Target H.264 bitrate (`4Mbps`, `2500kbps`). Ignored in passthrough.
    #[serde(default)]
    pub bitrate: Bitrate,
    /// Encoder choice; `auto` picks hardware where present.
    #[serde(default)]
    pub encoder: EncoderChoice,
    /// Distance between keyframes. A clip starts on a keyframe, so this bounds how much
    /// more than `preroll` a clip may hold before the command.
    #[serde(default = "default_keyframe_interval", with = "human_duration")]
    pub keyframe_interval: Duration,
    /// Video kept in memory before a `start` and put at the head of the clip.
    #[serde(default = "default_preroll", with = "human_duration")]
    pub preroll: Duration,
    /// Video recorded after a `stop`.
    #[serde(default = "default_postroll", with = "human_duration")]
    pub postroll: Duration,
    /// Burn order, station, camera and UTC time into the picture.
    #[serde(default = "default_true")]
    pub overlay: bool,
    /// How long a stop waits for the file to be finalised (EOS) before sealing it as truncated.
    #[serde(default = "default_eos_timeout", with = "human_duration")]
    pub eos_timeout: Duration,
}

fn default_fps() -> u32 {
    30
}
fn default_keyframe_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_preroll() -> Duration {
    Duration::from_secs(3)
}
fn default_postroll() -> Duration {
    Duration::from_secs(1)
}
fn default_eos_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_true() -> bool {
    true
}

impl CameraSpec {
    /// A spec with every default, for `source`.
    pub fn new(name: impl Into<String>, source: Source) -> Self {
        Self {
            name: name.into(),
            source,
            input_format: InputFormat::default(),
            resolution: Resolution::default(),
            fps: default_fps(),
            bitrate: Bitrate::default(),
            encoder: EncoderChoice::default(),
            keyframe_interval: default_keyframe_interval(),
            preroll: default_preroll(),
            postroll: default_postroll(),
            overlay: true,
            eos_timeout: default_eos_timeout(),
        }
    }

    /// Checks the values that serde cannot: ranges and combinations.
    pub fn validate(&self) -> Result<(), CaptureError> {
        let bad = |reason: String| CaptureError::InvalidSpec {
            camera: self.name.clone(),
            reason,
        };
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 32
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !self.name.starts_with('-');
        if !name_ok {
            return Err(bad(format!(
                "name {:?} must match ^[a-z0-9][a-z0-9-]{{0,31}}$",
                self.name
            )));
        }
        if !(1..=120).contains(&self.fps) {
            return Err(bad(format!("fps {} must be within 1..=120", self.fps)));
        }
        let Resolution { width, height } = self.resolution;
        if !(16..=7680).contains(&width)
            || !(16..=4320).contains(&height)
            || width % 2 == 1
            || height % 2 == 1
        {
            return Err(bad(format!(
                "resolution {} must be even and within 16x16..7680x4320",
                self.resolution
            )));
        }
        let min = MIN_OVERLAY_FRAME;
        if self.overlay && (width < min.width || height < min.height) {
            return Err(bad(format!(
                "resolution {} is too small for a legible overlay (at least {min}): set overlay = false or a larger resolution",
                self.resolution
            )));
        }
        if self.keyframe_interval < Duration::from_millis(100)
            || self.keyframe_interval > Duration::from_secs(10)
        {
            return Err(bad(format!(
                "keyframe_interval {:?} must be within 100ms..10s",
                self.keyframe_interval
            )));
        }
        if self.preroll > Duration::from_secs(60) {
            return Err(bad(format!(
                "preroll {:?} is above 60s (it is kept in memory)",
                self.preroll
            )));
        }
        if self.postroll > Duration::from_secs(60) {
            return Err(bad(format!("postroll {:?} is above 60s", self.postroll)));
        }
        if self.bitrate.0 < 64_000 {
            return Err(bad(format!("bitrate {} is below 64kbps", self.bitrate)));
        }
        if self.encoder == EncoderChoice::Passthrough && self.overlay {
            return Err(bad(
                "encoder \"passthrough\" keeps the camera's own H.264 and cannot burn an overlay: set overlay = false or pick an encoder"
                    .into(),
            ));
        }
        if self.encoder == EncoderChoice::Passthrough
            && !self.source.can_give_h264(self.input_format)
        {
            return Err(bad(format!(
                "encoder \"passthrough\" needs an H.264 source (v4l2 with input_format = \"h264\", or rtsp), not {}",
                self.source
            )));
        }
        self.source.validate().map_err(bad)
    }

    /// Frames between two keyframes, at least 1.
    pub fn keyframe_distance(&self) -> u32 {
        let frames = self.keyframe_interval.as_secs_f64() * f64::from(self.fps);
        (frames.round() as u32).max(1)
    }
}

/// A frame size, written `1280x720`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Resolution {
    pub width: u32,
    pub height: u32,
}

impl Default for Resolution {
    fn default() -> Self {
        Self {
            width: 1280,
            height: 720,
        }
    }
}

impl fmt::Display for Resolution {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}x{}", self.width, self.height)
    }
}

impl FromStr for Resolution {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || format!("resolution {s:?} must look like 1280x720");
        let (w, h) = s.trim().split_once(['x', 'X']).ok_or_else(err)?;
        Ok(Self {
            width: w.trim().parse().map_err(|_| err())?,
            height: h.trim().parse().map_err(|_| err())?,
        })
    }
}

impl TryFrom<String> for Resolution {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Resolution> for String {
    fn from(r: Resolution) -> Self {
        r.to_string()
    }
}

/// A bitrate in bits per second, written `4Mbps`, `2500kbps` or `800000` (bps).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Bitrate(pub u64);

impl Bitrate {
    /// The value in kbit/s, as `x264enc bitrate=` wants it.
    pub fn kbps(self) -> u64 {
        (self.0 / 1000).max(1)
    }
}

impl Default for Bitrate {
    fn default() -> Self {
        Self(4_000_000)
    }
}

impl fmt::Display for Bitrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_multiple_of(1_000_000) {
            write!(f, "{}Mbps", self.0 / 1_000_000)
        } else if self.0.is_multiple_of(1000) {
            write!(f, "{}kbps", self.0 / 1000)
        } else {
            write!(f, "{}bps", self.0)
        }
    }
}

impl FromStr for Bitrate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        let err = || format!("bitrate {s:?} must look like 4Mbps, 2500kbps or 800000bps");
        let (num, mult) = if let Some(n) = t.strip_suffix("mbps").or_else(|| t.strip_suffix("mbit"))
        {
            (n, 1_000_000.0)
        } else if let Some(n) = t.strip_suffix("kbps").or_else(|| t.strip_suffix("kbit")) {
            (n, 1000.0)
        } else {
            (t.strip_suffix("bps").unwrap_or(&t), 1.0)
        };
        let value: f64 = num.trim().parse().map_err(|_| err())?;
        if !value.is_finite() || value <= 0.0 {
            return Err(err());
        }
        Ok(Self((value * mult).round() as u64))
    }
}

impl TryFrom<String> for Bitrate {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Bitrate> for String {
    fn from(b: Bitrate) -> Self {
        b.to_string()
    }
}

/// Serde for durations in human units (`"3s"`, `"500ms"`, `"1m 30s"`).
pub mod human_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "duration {text:?}: {e} (write e.g. \"3s\" or \"500ms\")"
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minimal_camera_table_takes_the_defaults() {
        let spec: CameraSpec = toml::from_str("name = \"top\"\nsource = \"test\"\n").unwrap();
        assert_eq!(spec, CameraSpec::new("top", Source::Test));
        spec.validate().unwrap();
        assert_eq!(spec.keyframe_distance(), 30);
    }

    #[test]
    fn human_values_parse() {
        let spec: CameraSpec = toml::from_str(
            "name = \"side\"\nsource = \"v4l2:/dev/v4l/by-id/usb-cam-video-index0\"\nresolution = \"640x480\"\n\
             fps = 15\nbitrate = \"2500kbps\"\npreroll = \"5s\"\npostroll = \"500ms\"\nencoder = \"x264\"\n",
        )
        .unwrap();
        assert_eq!(
            spec.resolution,
            Resolution {
                width: 640,
                height: 480
            }
        );
        assert_eq!(spec.bitrate, Bitrate(2_500_000));
        assert_eq!(spec.preroll, Duration::from_secs(5));
        assert_eq!(spec.postroll, Duration::from_millis(500));
        spec.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        assert!(
            toml::from_str::<CameraSpec>("name = \"a\"\nsource = \"test\"\nfsp = 30\n").is_err()
        );
        assert!(
            toml::from_str::<CameraSpec>(
                "name = \"a\"\nsource = \"test\"\npreroll = \"3 bananas\"\n"
            )
            .is_err()
        );
        assert!(
            toml::from_str::<CameraSpec>("name = \"a\"\nsource = \"test\"\nresolution = \"big\"\n")
                .is_err()
        );
        let mut spec = CameraSpec::new("Top!", Source::Test);
        assert!(spec.validate().is_err());
        spec.name = "top".into();
        spec.encoder = EncoderChoice::Passthrough;
        assert!(
            spec.validate().is_err(),
            "passthrough needs an H.264 source and no overlay"
        );
    }

    #[test]
    fn an_overlay_needs_a_frame_it_fits_in() {
        let mut spec = CameraSpec::new("top", Source::Test);
        spec.resolution = Resolution {
            width: 128,
            height: 96,
        };
        let refused = spec.validate().unwrap_err().to_string();
        assert!(
            refused.contains("too small for a legible overlay"),
            "{refused}"
        );
        spec.overlay = false;
        spec.validate().unwrap();
        spec.overlay = true;
        spec.resolution = MIN_OVERLAY_FRAME;
        spec.validate().unwrap();
    }

    #[test]
    fn bitrates_round_trip() {
        for text in ["4Mbps", "2500kbps", "800123bps"] {
            let b: Bitrate = text.parse().unwrap();
            assert_eq!(b.to_string(), text);
        }
        assert_eq!("1.5Mbps".parse::<Bitrate>().unwrap(), Bitrate(1_500_000));
    }
}
