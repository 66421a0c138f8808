//! Item scans: barcodes the packer scanned at the station while a clip was recording (neither
//! an order nor a control barcode). Each is published as an `item_scanned` event when it is
//! read ([`crate::ScanEvent`]), kept with every clip recording at that moment, and carried by
//! the clip's uploaded notification ([`crate::Uploaded::items`]) into the catalog and the
//! completion event's `data` ([`crate::ClipData::items`]):
//!
//! ```json
//! "items":[{"code":"4006381333931","at":"2026-11-23T10:00:05.123Z"}]
//! ```
//!
//! # Bounds
//!
//! A clip carries at most [`MAX_ITEMS`] item scans, in the order they were read, and its
//! notification stays within [`MAX_PAYLOAD_BYTES`]: the agent keeps the first [`MAX_ITEMS`]
//! of a recording and, when their notification would be larger than the limit, sends the
//! earliest that fit ([`fit_items`]). The scans left out are still in the station's
//! `item_scanned` events. A code is 1..=[`MAX_ITEM_CODE_CHARS`] characters without control
//! characters (the scanner refuses others before they become items).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{MAX_PAYLOAD_BYTES, Timestamp};

/// Most item scans one clip carries.
pub const MAX_ITEMS: usize = 1000;

/// Longest item code, in characters (the scanner's largest `max_len`).
pub const MAX_ITEM_CODE_CHARS: usize = 256;

/// One item scan on a clip.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ItemScan {
    /// The barcode, as the scanner sent it (without its line ending).
    #[schemars(length(min = 1, max = 256))]
    pub code: String,
    /// When the station read it.
    pub at: Timestamp,
}

impl ItemScan {
    /// Why this item is not one a station sends, if it is not.
    pub fn problem(&self) -> Option<&'static str> {
        let chars = self.code.chars().count();
        if chars == 0 {
            Some("is empty")
        } else if chars > MAX_ITEM_CODE_CHARS {
            Some("is longer than 256 characters")
        } else if self.code.chars().any(char::is_control) {
            Some("holds control characters")
        } else {
            None
        }
    }
}

/// Cuts `items` to the earliest that fit: at most [`MAX_ITEMS`], and together no more than
/// `budget` bytes as a JSON array (`[...]`, commas included). Returns how many were left out.
pub fn fit_items(items: &mut Vec<ItemScan>, budget: usize) -> usize {
    let before = items.len();
    let mut used: usize = 2; // "[" and "]"
    let mut keep = 0;
    for (index, item) in items.iter().take(MAX_ITEMS).enumerate() {
        let size =
            serde_json::to_vec(item).map_or(usize::MAX, |v| v.len()) + usize::from(index > 0);
        if used.saturating_add(size) > budget {
            break;
        }
        used += size;
        keep += 1;
    }
    items.truncate(keep);
    before - keep
}

/// The bytes left for `"items":[...]` in a message that is `without` bytes long without it:
/// what keeps the message within [`MAX_PAYLOAD_BYTES`].
pub(crate) fn items_budget(without: usize) -> usize {
    // `,"items":` before the array.
    MAX_PAYLOAD_BYTES.saturating_sub(without + r#","items":"#.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(code: &str) -> ItemScan {
        ItemScan {
            code: code.to_owned(),
            at: "2026-11-23T10:00:05.123Z".parse().unwrap(),
        }
    }

    #[test]
    fn an_item_round_trips_exactly() {
        let text = r#"{"code":"4006381333931","at":"2026-11-23T10:00:05.123Z"}"#;
        let parsed: ItemScan = serde_json::from_str(text).unwrap();
        assert_eq!(parsed, item("4006381333931"));
        assert_eq!(serde_json::to_string(&parsed).unwrap(), text);
    }

    #[test]
    fn codes_are_checked() {
        assert_eq!(item("4006381333931").problem(), None);
        assert_eq!(item(&"9".repeat(256)).problem(), None);
        assert_eq!(item("").problem(), Some("is empty"));
        assert!(item(&"9".repeat(257)).problem().is_some());
        assert!(item("A\u{1b}B").problem().is_some());
    }

    #[test]
    fn fitting_keeps_the_earliest_items_within_the_count_and_the_budget() {
        let mut items: Vec<ItemScan> = (0..1200).map(|i| item(&format!("I-{i:04}"))).collect();
        assert_eq!(fit_items(&mut items, usize::MAX), 200);
        assert_eq!(items.len(), MAX_ITEMS);
        assert_eq!(items[0].code, "I-0000");
        assert_eq!(items[999].code, "I-0999");

        let mut items: Vec<ItemScan> = (0..10).map(|i| item(&format!("I-{i:04}"))).collect();
        let one = serde_json::to_vec(&items[0]).unwrap().len();
        // Room for exactly three: the brackets and two commas.
        let budget = 2 + 3 * one + 2;
        assert_eq!(fit_items(&mut items, budget), 7);
        assert_eq!(serde_json::to_vec(&items).unwrap().len(), budget);
        assert_eq!(fit_items(&mut items, budget - 1), 1);
        assert_eq!(fit_items(&mut items, 1), 2);
        assert!(items.is_empty());
    }
}
