//! Capture: order-tagged video and photos from the station's cameras, crash-safe on disk.
//!
//! # Data flow
//!
//! ```text
//!  camera ──► [camera pipeline, always running]                       (pipeline.rs, source.rs, encoder.rs)
//!             source ─ overlay (order | station | camera + UTC time) ─ tee
//!               ├─ encoder ─ h264parse ─ appsink ──► camera actor ──► pre-roll ring (memory)   (actor/, ring.rs)
//!               │                                          │
//!               │                                          └─ while recording ──► clip writer   (recorder.rs, writer.rs)
//!               │                                               appsrc ─ mp4mux ─ filesink NAME.mp4.part
//!               └─ valve ─ jpegenc ─ appsink ──► camera actor ──► snapshot replies              (snapshot.rs)
//!
//!  stop: post-roll, EOS into the writer, wait for it ──► seal: fsync, sha256, rename to NAME.mp4, fsync dir   (seal.rs)
//!  crash: NAME.mp4.part left behind ──► seal_part_file: remux its complete frames ──► NAME.mp4 (truncated)
//! ```
//!
//! One [`Camera`] per physical camera: [`Camera::start`] spawns its actor (`actor/`, a thread
//! owning the pipeline; [`camera`] says why a thread) and returns a cloneable
//! [`CameraHandle`] with async methods. The camera pipeline is never stopped for a recording or
//! a snapshot: the encoder runs all the time so that the pre-roll (the seconds before a
//! `start`) is already encoded in memory, and each recording is a separate small muxing
//! pipeline fed with copies of the encoded frames. The overlay's text changes per order by
//! setting a property on the running pipeline; the pre-roll shows the idle text (the camera
//! name), since it was encoded before the order was known.
//!
//! # On-disk format
//!
//! - While recording: `DIR/CLIP_ID.mp4.part`, a fragmented MP4 (ISO BMFF): `ftyp`, a `moov`
//!   without samples (one H.264 video track, `avc1`), then one `moof`+`mdat` pair per second
//!   of video (`mp4mux fragment-duration=1000`). Each fragment is complete on disk before the
//!   next begins (unbuffered writes, `fdatasync` about once a second), so a SIGKILL or a power
//!   cut loses at most the last second. The clip starts on a keyframe; timestamps start at 0.
//! - At a clean stop, mp4mux writes the true duration into the `mehd` box and appends an
//!   `mfra` index; the file is fsynced, hashed (sha256), renamed to `DIR/CLIP_ID.mp4` and the
//!   directory fsynced. Only then is it a [`SealedClip`].
//! - A `*.part` found later (crash) is sealed by [`seal::seal_part_file`]: its complete frames
//!   are demuxed and muxed again without re-encoding into `*.part.resealing`, which becomes
//!   the `.mp4`; the duration is measured from the frames read, not taken from the header
//!   (which is stale in a cut file). Photos are `NAME.jpg`, written through `NAME.jpg.part`
//!   the same way.
//!
//! # Rules kept here
//!
//! - Element state changes happen only on the thread that owns a pipeline (the camera actor,
//!   or the caller of `seal_part_file`), never in a GStreamer callback.
//! - Each bus has exactly one consumer: a sync handler forwarding to the owning actor.
//! - One camera failing never affects another: separate threads, pipelines and inboxes.

mod actor;
pub mod camera;
pub mod discovery;
pub mod encoder;
pub mod error;
pub mod pipeline;
pub mod probe;
pub mod recorder;
mod ring;
pub mod seal;
pub mod snapshot;
pub mod source;
pub mod spec;
pub mod status;
mod writer;

pub use camera::{Camera, CameraHandle};
pub use encoder::EncoderKind;
pub use error::CaptureError;
pub use probe::{ClipInfo, inspect};
pub use recorder::{RecordingRequest, RecordingStarted};
pub use seal::{SealedClip, seal_part_file};
pub use snapshot::Snapshot;
pub use source::{InputFormat, Source};
pub use spec::{Bitrate, CameraSpec, EncoderChoice, Resolution};
pub use status::{CameraState, CameraStatus};
