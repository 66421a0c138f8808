//! JSON Schemas of every message, generated from the types of this crate.
//!
//! They are committed under `docs/schemas/` for integrators who do not read Rust; a unit test
//! fails when the committed files differ from what the types generate. To regenerate them:
//!
//! ```sh
//! UPDATE_SCHEMAS=1 cargo test -p capture-protocol schema
//! ```
//!
//! Each schema describes its message as the other side of the contract sees it: the command
//! as an agent accepts it (the line system writes it), every other message as our side writes
//! it (so an `Option` written as `null`, like a reply's `id`, is `required`). Rules that JSON
//! Schema cannot express (the 1 KiB limit of `meta`, the 64 KiB limit of a payload, the
//! consistency checks of an uploaded notification) are stated in their descriptions and in
//! `docs/protocol.md`.

use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema};

use crate::{ClipEvent, Command, Confirm, Event, OverdueEvent, Reply, ScanEvent, Status, Uploaded};

/// Every message schema, with the file name it is committed under.
pub fn schemas() -> Vec<(&'static str, Schema)> {
    vec![
        ("command.json", as_accepted::<Command>()),
        ("reply.json", as_written::<Reply>()),
        ("status.json", as_written::<Status>()),
        ("event.json", as_written::<Event>()),
        ("scan-event.json", as_written::<ScanEvent>()),
        ("uploaded.json", as_written::<Uploaded>()),
        ("confirm.json", as_written::<Confirm>()),
        ("clip-event.json", as_written::<ClipEvent>()),
        ("clip-overdue.json", as_written::<OverdueEvent>()),
    ]
}

/// The schema of what a receiver of `T` accepts.
fn as_accepted<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .for_deserialize()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// The schema of `T` as this crate serializes it.
fn as_written<T: JsonSchema>() -> Schema {
    SchemaSettings::draft2020_12()
        .for_serialize()
        .into_generator()
        .into_root_schema_for::<T>()
}

/// A schema as committed: pretty JSON with a final newline.
pub fn to_file_text(schema: &Schema) -> String {
    let mut text = serde_json::to_string_pretty(schema).unwrap_or_default();
    text.push('\n');
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::path::PathBuf;

    fn committed_dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../docs/schemas")
    }

    #[test]
    fn committed_schemas_are_current() {
        let dir = committed_dir();
        let update = std::env::var_os("UPDATE_SCHEMAS").is_some_and(|v| v == "1");
        let mut stale = Vec::new();
        for (name, schema) in schemas() {
            let path = dir.join(name);
            let generated = to_file_text(&schema);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            if committed == generated {
                continue;
            }
            if update {
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(&path, generated).unwrap();
            } else {
                stale.push(name);
            }
        }
        let expected: BTreeSet<String> =
            schemas().iter().map(|(name, _)| name.to_string()).collect();
        let extra: Vec<String> = std::fs::read_dir(&dir)
            .map(|entries| {
                entries
                    .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
                    .filter(|name| name.ends_with(".json") && !expected.contains(name))
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            stale.is_empty() && extra.is_empty(),
            "docs/schemas is stale: {stale:?} differ from the types, {extra:?} are no longer \
             generated. Run `UPDATE_SCHEMAS=1 cargo test -p capture-protocol schema` to \
             regenerate (and delete the extra files), then commit them."
        );
    }
}
