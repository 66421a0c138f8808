//! What a clip becomes in the store and on the wire: its object key, content type and user
//! metadata, and the `Uploaded` notification and events that announce it (DESIGN.md
//! section 3). Pure: everything is derived from the clip's spool row.

use std::collections::HashMap;
use std::str::FromStr;

use capture_protocol::{
    CameraName, ClipId, ClipKind, DeviceId, Env, Event, EventKind, ItemScan, Meta, OrderId,
    ProtocolV1, Sha256Hex, StationId, Timestamp, Uploaded,
};

use super::client::ObjectSpec;
use crate::digest::PartDigests;
use crate::spool::{ClipRow, OutboxMessage};

/// A spool row the uploader cannot turn into an object (a bug or a damaged database; the
/// clip is failed rather than retried forever).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("clip {clip_id}: {field} {problem}")]
pub struct InvalidRow {
    pub clip_id: String,
    pub field: &'static str,
    pub problem: String,
}

/// The clip's fields as wire types.
#[derive(Debug, Clone, PartialEq)]
pub struct ClipObject {
    pub clip_id: ClipId,
    pub order: OrderId,
    pub camera: CameraName,
    pub kind: ClipKind,
    pub started_at: Timestamp,
    pub size: u64,
    pub sha256: Sha256Hex,
    pub key: String,
}

fn parse<T: FromStr>(clip: &ClipRow, field: &'static str, text: &str) -> Result<T, InvalidRow>
where
    T::Err: std::fmt::Display,
{
    text.parse().map_err(|e: T::Err| InvalidRow {
        clip_id: clip.clip_id.clone(),
        field,
        problem: e.to_string(),
    })
}

fn missing(clip: &ClipRow, field: &'static str) -> InvalidRow {
    InvalidRow {
        clip_id: clip.clip_id.clone(),
        field,
        problem: "is missing (the clip was never sealed)".into(),
    }
}

impl ClipObject {
    /// The object of a sealed clip in environment `env`.
    pub fn of(clip: &ClipRow, env: &Env) -> Result<ClipObject, InvalidRow> {
        let clip_id: ClipId = parse(clip, "clip_id", &clip.clip_id)?;
        let order: OrderId = parse(clip, "order", &clip.order)?;
        let started_at: Timestamp = parse(clip, "started_at", &clip.started_at)?;
        let kind = match clip.kind.as_str() {
            "video" => ClipKind::Video,
            "photo" => ClipKind::Photo,
            other => {
                return Err(InvalidRow {
                    clip_id: clip.clip_id.clone(),
                    field: "kind",
                    problem: format!("{other:?} is neither video nor photo"),
                });
            }
        };
        let size = clip.size.ok_or_else(|| missing(clip, "size"))?;
        let size = u64::try_from(size).map_err(|_| InvalidRow {
            clip_id: clip.clip_id.clone(),
            field: "size",
            problem: format!("{size} is negative"),
        })?;
        let sha256 = clip
            .sha256
            .as_deref()
            .ok_or_else(|| missing(clip, "sha256"))?;
        let sha256: Sha256Hex = parse(clip, "sha256", sha256)?;
        let key = capture_protocol::object_key(env, started_at, &order, &clip_id, kind);
        Ok(ClipObject {
            camera: parse(clip, "camera", &clip.camera)?,
            clip_id,
            order,
            kind,
            started_at,
            size,
            sha256,
            key,
        })
    }

    /// Key, content type and the user metadata `sha256`, `order`, `station`, `camera`,
    /// `clip-id`.
    pub fn spec(&self, station: &StationId) -> ObjectSpec {
        let [sha256, order, station_key, camera, clip_id] = capture_protocol::OBJECT_METADATA_KEYS;
        let metadata = HashMap::from([
            (sha256.to_owned(), self.sha256.as_str().to_owned()),
            (order.to_owned(), self.order.as_str().to_owned()),
            (station_key.to_owned(), station.as_str().to_owned()),
            (camera.to_owned(), self.camera.as_str().to_owned()),
            (clip_id.to_owned(), self.clip_id.as_str().to_owned()),
        ]);
        ObjectSpec {
            key: self.key.clone(),
            content_type: self.kind.content_type(),
            metadata,
        }
    }

    /// An event about this clip on `cap/{env}/station/{station}/event`.
    pub fn event(&self, env: &Env, station: &StationId, kind: EventKind) -> OutboxMessage {
        let event = Event::new(
            kind,
            self.clip_id.clone(),
            self.order.clone(),
            self.camera.clone(),
            Timestamp::now(),
        );
        OutboxMessage::new(
            capture_protocol::topic::event(env, station),
            serde_json::to_vec(&event).expect("an event serializes"),
            false,
        )
    }
}

/// Who is uploading: the names that go into the notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin<'a> {
    pub env: &'a Env,
    pub device: &'a DeviceId,
    pub station: &'a StationId,
    pub bucket: &'a str,
}

/// The uploaded notification of `clip` (DESIGN.md section 3), for `cap/{env}/ingest/uploaded`,
/// with the ETag the store gives the object when it holds the bytes the seal hashed
/// (`parts`: the seal's part MD5s).
pub fn uploaded(
    clip: &ClipRow,
    object: &ClipObject,
    origin: &Origin<'_>,
    parts: &PartDigests,
) -> Result<Uploaded, InvalidRow> {
    let ended_at = clip
        .ended_at
        .as_deref()
        .ok_or_else(|| missing(clip, "ended_at"))?;
    let meta: Meta = match clip.meta.as_deref() {
        None => Meta::default(),
        Some(text) => serde_json::from_str(text).map_err(|e| InvalidRow {
            clip_id: clip.clip_id.clone(),
            field: "meta",
            problem: e.to_string(),
        })?,
    };
    let items: Vec<ItemScan> = match clip.items.as_deref() {
        None => Vec::new(),
        Some(text) => serde_json::from_str(text).map_err(|e| InvalidRow {
            clip_id: clip.clip_id.clone(),
            field: "items",
            problem: e.to_string(),
        })?,
    };
    let non_negative = |field: &'static str, value: i64| {
        u64::try_from(value).map_err(|_| InvalidRow {
            clip_id: clip.clip_id.clone(),
            field,
            problem: format!("{value} is negative"),
        })
    };
    let mut uploaded = Uploaded {
        v: ProtocolV1,
        clip_id: object.clip_id.clone(),
        device: origin.device.clone(),
        station: origin.station.clone(),
        camera: object.camera.clone(),
        order: object.order.clone(),
        kind: object.kind,
        bucket: origin.bucket.to_owned(),
        key: object.key.clone(),
        size: object.size,
        sha256: object.sha256.clone(),
        content_type: object.kind.content_type().to_owned(),
        started_at: object.started_at,
        ended_at: parse(clip, "ended_at", ended_at)?,
        duration_ms: non_negative("duration_ms", clip.duration_ms.unwrap_or(0))?,
        preroll_ms: non_negative("preroll_ms", clip.preroll_ms)?,
        truncated: clip.truncated,
        clock_synced: clip.clock_synced,
        meta,
        etag: Some(parts.etag()),
        items,
    };
    let left_out = uploaded.fit_items();
    if left_out > 0 {
        tracing::warn!(
            clip_id = %clip.clip_id,
            sent = uploaded.items.len(),
            left_out,
            "the clip's item scans do not all fit in its 64 KiB notification; the latest are only in their item_scanned events"
        );
    }
    Ok(uploaded)
}

/// The outbox message carrying `uploaded`.
pub fn uploaded_message(env: &Env, uploaded: &Uploaded) -> OutboxMessage {
    OutboxMessage::new(
        capture_protocol::topic::uploaded(env),
        serde_json::to_vec(uploaded).expect("a notification serializes"),
        false,
    )
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::spool::ClipState;

    pub(crate) fn sealed_row() -> ClipRow {
        ClipRow {
            clip_id: "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2".into(),
            order: "SO-2026-000123".into(),
            camera: "top".into(),
            kind: "video".into(),
            state: ClipState::Sealed,
            path: "/spool/clips/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4".into(),
            started_at: "2026-11-23T10:00:00Z".into(),
            ended_at: Some("2026-11-23T10:00:45Z".into()),
            duration_ms: Some(45_000),
            preroll_ms: 3000,
            size: Some(73_400_320),
            sha256: Some("9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into()),
            parts: Some(parts()),
            truncated: false,
            clock_synced: true,
            meta: Some("{}".into()),
            items: None,
            attempts: 0,
            last_error: None,
            bytes_sent: 0,
            updated_at: "2026-11-23T10:00:46Z".into(),
        }
    }

    /// The digests of `sealed_row`'s 73,400,320 bytes in 8 MiB parts (9 parts).
    pub(crate) fn parts() -> PartDigests {
        PartDigests {
            part_size: 8 << 20,
            md5s: (0..9u8).map(|i| [i; 16]).collect(),
        }
    }

    #[test]
    fn the_notification_is_the_design_example_exactly() {
        let (env, device, station) = (
            "prod".parse().unwrap(),
            "pi-07".parse().unwrap(),
            "pack-03".parse().unwrap(),
        );
        let origin = Origin {
            env: &env,
            device: &device,
            station: &station,
            bucket: "factory-media",
        };
        let clip = sealed_row();
        let object = ClipObject::of(&clip, &env).unwrap();
        let message = uploaded_message(&env, &uploaded(&clip, &object, &origin, &parts()).unwrap());
        assert_eq!(message.topic, "cap/prod/ingest/uploaded");
        // DESIGN.md section 3, field for field (protocol's example with real values), and the
        // ETag the store gives the object (docs/protocol.md).
        let etag = parts().etag();
        assert!(etag.ends_with("-9"), "{etag}");
        let expected = format!(
            r#"{{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","device":"pi-07","station":"pack-03","camera":"top","order":"SO-2026-000123","kind":"video","bucket":"factory-media","key":"prod/2026/11/23/SO-2026-000123/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4","size":73400320,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","content_type":"video/mp4","started_at":"2026-11-23T10:00:00Z","ended_at":"2026-11-23T10:00:45Z","duration_ms":45000,"preroll_ms":3000,"truncated":false,"clock_synced":true,"meta":{{}},"etag":"{etag}"}}"#
        );
        assert_eq!(String::from_utf8(message.payload).unwrap(), expected);
        assert!(
            capture_protocol::parse_uploaded(expected.as_bytes(), &env).is_ok(),
            "the ingest accepts it"
        );
    }

    #[test]
    fn meta_is_carried_unchanged_and_photos_are_jpegs() {
        let env: Env = "dev".parse().unwrap();
        let mut clip = sealed_row();
        clip.kind = "photo".into();
        clip.duration_ms = Some(0);
        clip.meta = Some(r#"{"sku":"JERSEY-9","operator":"ana","batch":7}"#.into());
        let object = ClipObject::of(&clip, &env).unwrap();
        let station: StationId = "pack-03".parse().unwrap();
        let spec = object.spec(&station);
        assert_eq!(
            spec.key,
            "dev/2026/11/23/SO-2026-000123/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.jpg"
        );
        assert_eq!(spec.content_type, "image/jpeg");
        assert_eq!(spec.metadata["station"], "pack-03");
        assert_eq!(spec.metadata["clip-id"], "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2");
        assert_eq!(spec.metadata.len(), 5);
        let device = "pi-07".parse().unwrap();
        let origin = Origin {
            env: &env,
            device: &device,
            station: &station,
            bucket: "b",
        };
        let notification = uploaded(&clip, &object, &origin, &parts()).unwrap();
        assert_eq!(
            serde_json::to_string(&notification.meta).unwrap(),
            r#"{"sku":"JERSEY-9","operator":"ana","batch":7}"#
        );
    }

    #[test]
    fn the_clips_item_scans_are_carried_and_a_damaged_list_is_refused() {
        let env: Env = "prod".parse().unwrap();
        let mut clip = sealed_row();
        let object = ClipObject::of(&clip, &env).unwrap();
        let (device, station) = ("pi-07".parse().unwrap(), "pack-03".parse().unwrap());
        let origin = Origin {
            env: &env,
            device: &device,
            station: &station,
            bucket: "b",
        };
        let none = uploaded(&clip, &object, &origin, &parts()).unwrap();
        assert!(none.items.is_empty());
        let items = r#"[{"code":"4006381333931","at":"2026-11-23T10:00:05.123Z"}]"#;
        clip.items = Some(items.into());
        let notification = uploaded(&clip, &object, &origin, &parts()).unwrap();
        let json = serde_json::to_string(&notification).unwrap();
        assert!(json.ends_with(&format!(r#""items":{items}}}"#)), "{json}");
        assert!(capture_protocol::parse_uploaded(json.as_bytes(), &env).is_ok());
        // Too many for 64 KiB: the earliest that fit are sent.
        let long: Vec<String> = (0..1000)
            .map(|i| format!(r#"{{"code":"{i:0256}","at":"2026-11-23T10:00:05Z"}}"#))
            .collect();
        clip.items = Some(format!("[{}]", long.join(",")));
        let notification = uploaded(&clip, &object, &origin, &parts()).unwrap();
        assert!(notification.items.len() < 1000 && !notification.items.is_empty());
        assert!(
            serde_json::to_vec(&notification).unwrap().len() <= capture_protocol::MAX_PAYLOAD_BYTES
        );
        clip.items = Some("{".into());
        let error = uploaded(&clip, &object, &origin, &parts()).unwrap_err();
        assert_eq!(error.field, "items");
    }

    #[test]
    fn an_unsealed_or_damaged_row_is_refused_with_its_field() {
        let env: Env = "dev".parse().unwrap();
        let mut clip = sealed_row();
        clip.sha256 = None;
        assert_eq!(ClipObject::of(&clip, &env).unwrap_err().field, "sha256");
        let mut clip = sealed_row();
        clip.order = "../etc".into();
        assert_eq!(ClipObject::of(&clip, &env).unwrap_err().field, "order");
    }
}
