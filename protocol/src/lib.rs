//! Wire types shared by the capture agent and the cloud ingest.
//!
//! Everything that crosses a process boundary is defined here, once: the MQTT protocol v1
//! (commands, replies, status, events, uploaded notifications and confirmations) and the
//! CloudEvent sent to the core system. Both sides depend on this crate so that they cannot
//! disagree about a field name. `docs/protocol.md` is the same contract for the people on the
//! other side (the warehouse line, the core system); `docs/schemas/` holds the JSON Schemas
//! generated from these types.
//!
//! # Wire format
//!
//! * Every MQTT payload is one UTF-8 JSON object carrying `"v":1` ([`ProtocolV1`]), published
//!   with QoS 1 on a topic built by [`topic`]. The environment is the first topic level and,
//!   optionally, a field of a command: a dev sender can never act on a prod station.
//! * A receiver refuses any payload over 64 KiB ([`MAX_PAYLOAD_BYTES`]) before parsing it,
//!   ignores unknown fields, and refuses a `"v"` other than 1.
//! * Times are RFC 3339 strings, written in UTC with a `Z` suffix ([`Timestamp`]).
//! * Identifiers obey the rules in [`ids`]: an [`OrderId`] is safe in an object key and a file
//!   name, a [`StationId`], [`DeviceId`] or [`Env`] is safe in a topic.
//! * `meta` is a JSON object of at most 1 KiB ([`Meta`]), carried unchanged from the command
//!   to the uploaded notification to the completion event.
//!
//! # The life of a clip on the wire
//!
//! 1. The line sends a [`Command`] to `cap/{env}/station/{station}/cmd`; the agent reads it
//!    with [`parse_command`] and answers one [`Reply`] per delivery on `.../reply` (on refusal,
//!    [`Rejection::to_reply`]).
//! 2. The agent publishes [`Event`]s on `.../event` as the clip is recorded and uploaded, and
//!    its retained [`Status`] on `.../status`.
//! 3. Once the object is in the store, the agent publishes [`Uploaded`] to
//!    `cap/{env}/ingest/uploaded`; one ingest replica reads it ([`parse_uploaded`]), verifies
//!    the object, catalogs the clip and answers a [`Confirm`] on
//!    `cap/{env}/device/{device}/confirm`.
//! 4. The ingest emits a [`ClipEvent`] (CloudEvents 1.0) to the core system, routing key
//!    `clip.completed` or `clip.rejected`, with an id stable per clip; a clip announced by
//!    its events and not accepted in time gives an [`OverdueEvent`] (`clip.overdue`).

#![forbid(unsafe_code)]

mod clip;
mod cloudevent;
mod command;
mod confirm;
mod event;
pub mod ids;
pub mod item;
mod meta;
mod op_name;
mod overdue;
mod reply;
pub mod schema;
mod status;
mod timestamp;
pub mod topic;
mod uploaded;
mod wire;

pub use clip::{ClipKind, OBJECT_METADATA_KEYS, object_key};
pub use cloudevent::{
    CONTENT_TYPE, ClipData, ClipEvent, ClipEventType, DataContentType, EXCHANGE, SpecVersion,
};
pub use command::{
    Cameras, CamerasError, Capture, Command, CommandError, Op, Rejection, parse_command,
};
pub use confirm::{Confirm, Verdict, parse_confirm};
pub use event::{Event, EventKind, ScanEvent, ScanEventKind};
pub use ids::{
    CameraName, ClipId, CommandId, DeviceId, Env, IdKind, InvalidId, OrderId, Sha256Hex, StationId,
};
pub use item::{ItemScan, MAX_ITEMS};
pub use meta::{MAX_META_BYTES, Meta, MetaError};
pub use op_name::OpName;
pub use overdue::{OverdueData, OverdueEvent};
pub use reply::{ErrorCode, Reply, ReplyError};
pub use status::{Presence, Queue, Recording, Status};
pub use timestamp::{Timestamp, TimestampError};
pub use uploaded::{Uploaded, UploadedError, parse_uploaded};
pub use wire::{DecodeError, MAX_PAYLOAD_BYTES, PROTOCOL_VERSION, ProtocolV1, decode};
