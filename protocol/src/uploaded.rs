//! The uploaded notification, agent -> ingest (`cap/{env}/ingest/uploaded`, consumed through
//! the shared subscription `$share/ingest/cap/{env}/ingest/uploaded`).
//!
//! Sent by the agent once a clip is fully in the object store; the ingest verifies the object
//! against it, catalogs the clip and answers with a [`Confirm`](crate::Confirm).
//!
//! ```json
//! {"v":1,"clip_id":"01JD...","device":"pi-07","station":"pack-03","camera":"top","order":"SO-2026-000123",
//!  "kind":"video","bucket":"factory-media","key":"prod/2026/11/23/SO-2026-000123/01JD....mp4",
//!  "size":73400320,"sha256":"<hex>","content_type":"video/mp4","started_at":"...","ended_at":"...",
//!  "duration_ms":45000,"preroll_ms":3000,"truncated":false,"clock_synced":true,"meta":{}}
//! ```
//!
//! [`parse_uploaded`] also checks what the fields imply about each other: the key is the
//! clip's [`object_key`] in the receiver's env, the content type matches the kind, and the
//! clip does not end before it starts.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::clip::{OBJECT_METADATA_KEYS, object_key};
use crate::item::{ItemScan, MAX_ITEMS, fit_items, items_budget};
use crate::wire::decode;
use crate::{
    CameraName, ClipId, ClipKind, DecodeError, DeviceId, Env, Meta, OrderId, ProtocolV1, Sha256Hex,
    StationId, Timestamp,
};

/// A clip that is in the object store, as the agent describes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Uploaded {
    /// Always 1.
    pub v: ProtocolV1,
    /// The clip.
    pub clip_id: ClipId,
    /// The Pi that recorded it; the confirmation goes to `cap/{env}/device/{device}/confirm`.
    pub device: DeviceId,
    /// The station it was recorded at.
    pub station: StationId,
    /// The camera.
    pub camera: CameraName,
    /// The order.
    pub order: OrderId,
    /// Video or photo.
    pub kind: ClipKind,
    /// The bucket holding the object.
    pub bucket: String,
    /// The object key: `{env}/{yyyy}/{mm}/{dd}/{order}/{clip_id}.{mp4|jpg}`.
    pub key: String,
    /// Object size in bytes.
    pub size: u64,
    /// SHA-256 of the object, also in its `sha256` metadata.
    pub sha256: Sha256Hex,
    /// `video/mp4` or `image/jpeg`, as the kind says.
    pub content_type: String,
    /// Start of the clip, pre-roll included.
    pub started_at: Timestamp,
    /// End of the clip, post-roll included.
    pub ended_at: Timestamp,
    /// Duration measured by decoding (0 for photos).
    pub duration_ms: u64,
    /// How much of the clip precedes the `start` command.
    pub preroll_ms: u64,
    /// Closed by `max_secs` or by a crash instead of by `stop`.
    pub truncated: bool,
    /// Whether the Pi's clock was NTP-synced while recording (times are wrong otherwise).
    pub clock_synced: bool,
    /// The `meta` of the command, unchanged.
    #[serde(default)]
    pub meta: Meta,
    /// The ETag the object has when the store holds the bytes the agent sealed, without
    /// quotes: the lowercase hex MD5 of the file for a single `PutObject`; for a multipart
    /// upload, the hex MD5 of the concatenated binary part MD5s, a dash and the number of
    /// parts (`9b2cf535f27731c974343645a3985328-9`). The ingest compares it with the ETag
    /// from `HEAD` (`verify = "etag"`). Optional: agents before it send none (the ingest then
    /// checks size and the `sha256` metadata only, docs/ingest.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9a-f]{32}(-[1-9][0-9]{0,4})?$"))]
    pub etag: Option<String>,
    /// The item scans recorded while the clip was recording, in the order they were read:
    /// at most 1000, and only as many as keep the notification within 64 KiB (the earliest;
    /// the others are in the station's `item_scanned` events). Optional: omitted when there
    /// are none, and agents before it send none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 1000))]
    pub items: Vec<ItemScan>,
}

impl Uploaded {
    /// The key this clip must have in environment `env`.
    pub fn expected_key(&self, env: &Env) -> String {
        object_key(env, self.started_at, &self.order, &self.clip_id, self.kind)
    }

    /// The user metadata the object carries, named as in [`OBJECT_METADATA_KEYS`].
    pub fn object_metadata(&self) -> [(&'static str, &str); 5] {
        let [sha256, order, station, camera, clip_id] = OBJECT_METADATA_KEYS;
        [
            (sha256, self.sha256.as_str()),
            (order, self.order.as_str()),
            (station, self.station.as_str()),
            (camera, self.camera.as_str()),
            (clip_id, self.clip_id.as_str()),
        ]
    }

    /// Cuts [`Uploaded::items`] to the earliest that keep the notification within
    /// [`crate::MAX_PAYLOAD_BYTES`] (and [`MAX_ITEMS`]); returns how many were left out.
    pub fn fit_items(&mut self) -> usize {
        let mut items = std::mem::take(&mut self.items);
        let without = serde_json::to_vec(self).map_or(usize::MAX, |v| v.len());
        let left_out = fit_items(&mut items, items_budget(without));
        self.items = items;
        left_out
    }

    /// Checks what the fields imply about each other, for environment `env`.
    pub fn check(&self, env: &Env) -> Result<(), UploadedError> {
        let expected = self.expected_key(env);
        if self.key != expected {
            return Err(UploadedError::KeyMismatch {
                clip_id: self.clip_id.clone(),
                key: self.key.clone(),
                expected,
            });
        }
        if self.content_type != self.kind.content_type() {
            return Err(UploadedError::ContentTypeMismatch {
                clip_id: self.clip_id.clone(),
                content_type: self.content_type.clone(),
                kind: self.kind,
            });
        }
        if let Some(etag) = &self.etag
            && !is_etag(etag)
        {
            return Err(UploadedError::BadEtag {
                clip_id: self.clip_id.clone(),
                etag: etag.clone(),
            });
        }
        if self.items.len() > MAX_ITEMS {
            return Err(UploadedError::TooManyItems {
                clip_id: self.clip_id.clone(),
                count: self.items.len(),
            });
        }
        if let Some((index, problem)) = self
            .items
            .iter()
            .enumerate()
            .find_map(|(i, item)| item.problem().map(|p| (i, p)))
        {
            return Err(UploadedError::BadItem {
                clip_id: self.clip_id.clone(),
                index,
                problem,
            });
        }
        if self.ended_at < self.started_at {
            return Err(UploadedError::EndsBeforeStart {
                clip_id: self.clip_id.clone(),
                started_at: self.started_at,
                ended_at: self.ended_at,
            });
        }
        Ok(())
    }
}

/// Whether `etag` is an S3 ETag as the agent computes them: 32 lowercase hex digits,
/// optionally `-N` with N in 1..=10000 parts.
fn is_etag(etag: &str) -> bool {
    let (md5, parts) = match etag.split_once('-') {
        Some((md5, parts)) => (md5, Some(parts)),
        None => (etag, None),
    };
    let md5_ok = md5.len() == 32 && md5.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    let parts_ok = parts.is_none_or(|p| {
        !p.starts_with('0') && p.parse::<u32>().is_ok_and(|n| (1..=10_000).contains(&n))
    });
    md5_ok && parts_ok
}

/// Why an uploaded notification was refused.
#[derive(Debug, thiserror::Error)]
pub enum UploadedError {
    /// Too large, not JSON, or a field missing, mistyped or out of rule.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The key is not the clip's key in this environment.
    #[error("clip {clip_id}: key {key:?} is not the expected {expected:?}")]
    KeyMismatch {
        /// The clip.
        clip_id: ClipId,
        /// The key it names.
        key: String,
        /// The key it must have.
        expected: String,
    },
    /// The content type does not match the kind.
    #[error("clip {clip_id}: content type {content_type:?} does not match kind {kind}")]
    ContentTypeMismatch {
        /// The clip.
        clip_id: ClipId,
        /// The content type it names.
        content_type: String,
        /// Its kind.
        kind: ClipKind,
    },
    /// `etag` is not an ETag of the form the agent computes.
    #[error("clip {clip_id}: etag {etag:?} is not 32 lowercase hex digits with an optional -N")]
    BadEtag {
        /// The clip.
        clip_id: ClipId,
        /// The value sent.
        etag: String,
    },
    /// More than [`MAX_ITEMS`] item scans.
    #[error("clip {clip_id}: {count} item scans, more than the 1000 a clip carries")]
    TooManyItems {
        /// The clip.
        clip_id: ClipId,
        /// How many were sent.
        count: usize,
    },
    /// An item scan's code is empty, too long or holds control characters.
    #[error("clip {clip_id}: the code of item {index} {problem}")]
    BadItem {
        /// The clip.
        clip_id: ClipId,
        /// Its place in `items`, from 0.
        index: usize,
        /// What is wrong with it.
        problem: &'static str,
    },
    /// `ended_at` is before `started_at`.
    #[error("clip {clip_id}: ends at {ended_at}, before it starts at {started_at}")]
    EndsBeforeStart {
        /// The clip.
        clip_id: ClipId,
        /// Its start.
        started_at: Timestamp,
        /// Its end.
        ended_at: Timestamp,
    },
}

/// Parses and checks an uploaded notification received by the ingest of environment `own_env`.
pub fn parse_uploaded(payload: &[u8], own_env: &Env) -> Result<Uploaded, UploadedError> {
    let uploaded: Uploaded = decode(payload, "uploaded notification")?;
    uploaded.check(own_env)?;
    Ok(uploaded)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use serde_json::{Value, json};

    /// DESIGN.md section 3, with a real clip id, digest and times in place of placeholders.
    pub(crate) const EXAMPLE: &str = r#"{"v":1,"clip_id":"01JDQ3Z8M4X5V6W7Y8Z9A0B1C2","device":"pi-07","station":"pack-03","camera":"top","order":"SO-2026-000123","kind":"video","bucket":"factory-media","key":"prod/2026/11/23/SO-2026-000123/01JDQ3Z8M4X5V6W7Y8Z9A0B1C2.mp4","size":73400320,"sha256":"9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08","content_type":"video/mp4","started_at":"2026-11-23T10:00:00Z","ended_at":"2026-11-23T10:00:45Z","duration_ms":45000,"preroll_ms":3000,"truncated":false,"clock_synced":true,"meta":{}}"#;

    pub(crate) fn example() -> Uploaded {
        serde_json::from_str(EXAMPLE).unwrap()
    }

    fn prod() -> Env {
        "prod".parse().unwrap()
    }

    fn with(field: &str, value: Value) -> Vec<u8> {
        let mut notification: Value = serde_json::from_str(EXAMPLE).unwrap();
        notification[field] = value;
        serde_json::to_vec(&notification).unwrap()
    }

    #[test]
    fn design_example_round_trips_exactly() {
        let uploaded = parse_uploaded(EXAMPLE.as_bytes(), &prod()).unwrap();
        assert_eq!(serde_json::to_string(&uploaded).unwrap(), EXAMPLE);
    }

    #[test]
    fn the_etag_is_optional_and_checked_when_present() {
        assert_eq!(example().etag, None, "agents before the etag send none");
        let etag = "9b2cf535f27731c974343645a3985328-9";
        let uploaded = parse_uploaded(&with("etag", json!(etag)), &prod()).unwrap();
        assert_eq!(uploaded.etag.as_deref(), Some(etag));
        assert!(
            serde_json::to_string(&uploaded)
                .unwrap()
                .ends_with(r#""meta":{},"etag":"9b2cf535f27731c974343645a3985328-9"}"#)
        );
        let single = "900150983cd24fb0d6963f7d28e17f72";
        assert!(parse_uploaded(&with("etag", json!(single)), &prod()).is_ok());
        for bad in [
            "\"900150983cd24fb0d6963f7d28e17f72\"",
            "900150983CD24FB0D6963F7D28E17F72",
            "900150983cd24fb0d6963f7d28e17f7",
            "900150983cd24fb0d6963f7d28e17f72-0",
            "900150983cd24fb0d6963f7d28e17f72-10001",
            "900150983cd24fb0d6963f7d28e17f72-",
        ] {
            let error = parse_uploaded(&with("etag", json!(bad)), &prod()).unwrap_err();
            assert!(
                matches!(error, UploadedError::BadEtag { .. }),
                "{bad}: {error}"
            );
        }
    }

    #[test]
    fn items_are_optional_round_trip_and_are_checked() {
        assert!(example().items.is_empty(), "agents before items send none");
        let items = json!([
            {"code":"4006381333931","at":"2026-11-23T10:00:05.123Z"},
            {"code":"ITEM-2","at":"2026-11-23T10:00:09Z"}
        ]);
        let payload = with("items", items.clone());
        let uploaded = parse_uploaded(&payload, &prod()).unwrap();
        assert_eq!(uploaded.items.len(), 2);
        assert_eq!(uploaded.items[0].code, "4006381333931");
        let written = serde_json::to_string(&uploaded).unwrap();
        assert!(
            written.ends_with(&format!(r#""meta":{{}},"items":{items}}}"#)),
            "{written}"
        );
        assert_eq!(
            parse_uploaded(written.as_bytes(), &prod()).unwrap(),
            uploaded
        );
        // Empty is omitted: the notification reads as an old agent's.
        let empty = parse_uploaded(&with("items", json!([])), &prod()).unwrap();
        assert_eq!(serde_json::to_string(&empty).unwrap(), EXAMPLE);

        for (bad, expected) in [
            (json!([{"code":"","at":"2026-11-23T10:00:05Z"}]), "is empty"),
            (
                json!([{"code":"A\u{1b}B","at":"2026-11-23T10:00:05Z"}]),
                "control",
            ),
            (
                json!([{"code":"9".repeat(257),"at":"2026-11-23T10:00:05Z"}]),
                "longer",
            ),
        ] {
            let error = parse_uploaded(&with("items", bad), &prod()).unwrap_err();
            assert!(
                matches!(error, UploadedError::BadItem { index: 0, .. }),
                "{error}"
            );
            assert!(error.to_string().contains(expected), "{error}");
        }
        let missing_at = with("items", json!([{"code":"X"}]));
        assert!(matches!(
            parse_uploaded(&missing_at, &prod()),
            Err(UploadedError::Decode(_))
        ));
        let many: Vec<Value> = (0..1001)
            .map(|i| json!({"code": format!("{i}"), "at": "2026-11-23T10:00:05Z"}))
            .collect();
        let error = parse_uploaded(&with("items", json!(many)), &prod()).unwrap_err();
        assert!(
            matches!(error, UploadedError::TooManyItems { count: 1001, .. }),
            "{error}"
        );
    }

    #[test]
    fn fitting_items_keeps_the_notification_within_the_payload_limit() {
        let mut uploaded = example();
        let at: crate::Timestamp = "2026-11-23T10:00:05.123Z".parse().unwrap();
        // 256-character codes: far fewer than 1000 fit in 64 KiB.
        uploaded.items = (0..1000)
            .map(|i| ItemScan {
                code: format!("{i:0256}"),
                at,
            })
            .collect();
        let left_out = uploaded.fit_items();
        let size = serde_json::to_vec(&uploaded).unwrap().len();
        assert!(size <= crate::MAX_PAYLOAD_BYTES, "{size}");
        assert!(left_out > 700 && left_out < 1000, "{left_out}");
        assert_eq!(uploaded.items.len() + left_out, 1000);
        assert_eq!(uploaded.items[0].code, format!("{:0256}", 0));
        // One more would not have fit.
        let next = serde_json::to_vec(&ItemScan {
            code: "0".repeat(256),
            at,
        })
        .unwrap()
        .len();
        assert!(size + next + 1 > crate::MAX_PAYLOAD_BYTES);
        assert!(parse_uploaded(&serde_json::to_vec(&uploaded).unwrap(), &prod()).is_ok());

        let mut small = example();
        small.items = vec![ItemScan {
            code: "4006381333931".into(),
            at,
        }];
        assert_eq!(small.fit_items(), 0);
        assert_eq!(small.items.len(), 1);
    }

    #[test]
    fn meta_is_carried_unchanged() {
        let meta = json!({"sku":"JERSEY-9","operator":"ana","batch":7});
        let uploaded = parse_uploaded(&with("meta", meta.clone()), &prod()).unwrap();
        assert_eq!(
            serde_json::to_string(&uploaded.meta).unwrap(),
            r#"{"sku":"JERSEY-9","operator":"ana","batch":7}"#
        );
    }

    #[test]
    fn object_metadata_names_every_field() {
        let uploaded = example();
        assert_eq!(
            uploaded.object_metadata(),
            [
                (
                    "sha256",
                    "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
                ),
                ("order", "SO-2026-000123"),
                ("station", "pack-03"),
                ("camera", "top"),
                ("clip-id", "01JDQ3Z8M4X5V6W7Y8Z9A0B1C2"),
            ]
        );
    }

    #[test]
    fn a_key_of_another_env_is_refused() {
        let error = parse_uploaded(EXAMPLE.as_bytes(), &"dev".parse().unwrap()).unwrap_err();
        assert!(
            matches!(error, UploadedError::KeyMismatch { .. }),
            "{error}"
        );
        assert!(
            error.to_string().contains("dev/2026/11/23/SO-2026-000123/"),
            "{error}"
        );
    }

    #[test]
    fn inconsistent_notifications_are_refused() {
        let key_traversal = with("key", json!("prod/2026/11/23/../../x.mp4"));
        let photo_as_video = with("kind", json!("photo"));
        let wrong_type = with("content_type", json!("image/jpeg"));
        let backwards = with("ended_at", json!("2026-11-23T09:59:59Z"));
        for payload in [key_traversal, photo_as_video, wrong_type, backwards] {
            assert!(parse_uploaded(&payload, &prod()).is_err());
        }
    }

    #[test]
    fn bad_fields_are_decode_errors_naming_the_input() {
        for (field, value) in [
            ("order", json!("../etc")),
            ("sha256", json!("<hex>")),
            ("size", json!(-1)),
            ("clip_id", json!("01JD...")),
            ("meta", json!([])),
        ] {
            let error = parse_uploaded(&with(field, value), &prod()).unwrap_err();
            assert!(
                matches!(error, UploadedError::Decode(_)),
                "{field}: {error}"
            );
            assert!(
                error
                    .to_string()
                    .starts_with("invalid uploaded notification: "),
                "{error}"
            );
        }
        let too_large = vec![b' '; crate::MAX_PAYLOAD_BYTES + 1];
        assert!(matches!(
            parse_uploaded(&too_large, &prod()),
            Err(UploadedError::Decode(DecodeError::TooLarge { .. }))
        ));
    }
}
