//! The `[scanner]` section and what a barcode is: [`Rules::classify`], no I/O.
//!
//! A scan is one line the scanner sent (its terminator, Enter or CR/LF, removed). In order:
//!
//! 1. empty: nothing (a scanner's stray terminator);
//! 2. longer than `max_len` characters: refused `too_long`;
//! 3. any control character (a tab, an escape sequence, a NUL): refused `control_characters`;
//!    bytes that are not UTF-8 or keys the decoder does not know (U+FFFD): refused `not_valid`;
//! 4. exactly the `stop` or `cancel` barcode: that control;
//! 5. matching `order_pattern`: an order; a match that is not a valid order id (section 3:
//!    `^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`, never `..`) is refused `not_valid`;
//! 6. anything else: an item scan, unless `item_pattern` is set and does not match: refused
//!    `not_valid`.
//!
//! Control barcodes are compared before the order pattern, so a stop barcode never starts an
//! order even when the pattern would match it (validation refuses such a config anyway).

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use capture_protocol::OrderId;
use regex_lite::Regex;
use serde::Deserialize;

use crate::capture::spec::human_duration;

/// `[scanner]` in agent.toml.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ScannerSection {
    /// `/dev/input/by-id/...-event-kbd` (keyboard mode) or a tty such as `/dev/ttyACM0` or
    /// `/dev/serial/by-id/...` (serial mode).
    pub device: PathBuf,
    /// Barcodes matching this regex are orders (anchor it: `^SO-[0-9]{4}-[0-9]{6}$`).
    pub order_pattern: String,
    /// The control barcode that stops the recording in progress.
    pub stop: Option<String>,
    /// The control barcode that aborts (discards) the recording in progress.
    pub cancel: Option<String>,
    /// When set, only barcodes matching it are item scans; others are refused.
    pub item_pattern: Option<String>,
    /// Stop the recording after this long without a scan; "0s" (the default) never does.
    #[serde(default, with = "human_duration")]
    pub idle_stop: Duration,
    /// The longest barcode accepted, in characters.
    #[serde(default = "default_max_len")]
    pub max_len: usize,
    /// Serial mode only: the line speed (USB CDC scanners ignore it).
    #[serde(default = "default_baud")]
    pub baud: u32,
    /// Feedback to the packer: a program (absolute path, then its arguments, no shell) run
    /// after each scan that did something, e.g. `["/usr/bin/aplay", "-q", "ok.wav"]` (ALSA)
    /// or `["/usr/bin/gpioset", "-c", "gpiochip0", "-t", "1s,0", "17=1"]` (a buzzer or LED).
    #[serde(default)]
    pub feedback_ok: Vec<String>,
    /// The same for a refused scan.
    #[serde(default)]
    pub feedback_error: Vec<String>,
}

fn default_max_len() -> usize {
    64
}

fn default_baud() -> u32 {
    9600
}

/// How the scanner is read, told by its device path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// An evdev input device: key events decoded into characters.
    Keyboard,
    /// A tty: lines of text.
    Serial,
}

/// The line speeds serial mode accepts.
pub const BAUD_RATES: [u32; 8] = [1200, 2400, 4800, 9600, 19200, 38400, 57600, 115_200];

impl ScannerSection {
    /// Keyboard mode for a device under `/dev/input/`, serial mode for anything else.
    pub fn mode(&self) -> Mode {
        if self.device.starts_with("/dev/input") {
            Mode::Keyboard
        } else {
            Mode::Serial
        }
    }

    /// Every rule this section breaks, as `(key, message)`; keys are relative (`order_pattern`).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut problems = Vec::new();
        let device = self.device.to_string_lossy();
        if !self.device.is_absolute() || !device.starts_with("/dev/") {
            problems.push((
                "device",
                format!("{device:?} must be a device path under /dev/ (/dev/input/by-id/... or a tty such as /dev/ttyACM0)"),
            ));
        }
        if !(1..=256).contains(&self.max_len) {
            problems.push(("max_len", "must be within 1..256".to_owned()));
        }
        if !self.idle_stop.is_zero() && self.idle_stop < Duration::from_secs(5) {
            problems.push(("idle_stop", "must be 0s (never) or at least 5s".to_owned()));
        }
        if !BAUD_RATES.contains(&self.baud) {
            problems.push(("baud", format!("must be one of {BAUD_RATES:?}")));
        }
        for (key, argv) in [
            ("feedback_ok", &self.feedback_ok),
            ("feedback_error", &self.feedback_error),
        ] {
            if let Some(program) = argv.first()
                && !program.starts_with('/')
            {
                problems.push((
                    key,
                    format!(
                        "{program:?} must be the program's absolute path (no shell, no PATH lookup)"
                    ),
                ));
            }
        }
        let order = match Regex::new(&self.order_pattern) {
            Ok(regex) => Some(regex),
            Err(e) => {
                problems.push((
                    "order_pattern",
                    format!("{:?} is not a valid regex: {e}", self.order_pattern),
                ));
                None
            }
        };
        if let Some(pattern) = &self.item_pattern
            && let Err(e) = Regex::new(pattern)
        {
            problems.push((
                "item_pattern",
                format!("{pattern:?} is not a valid regex: {e}"),
            ));
        }
        for (key, code) in [("stop", &self.stop), ("cancel", &self.cancel)] {
            let Some(code) = code else { continue };
            if let Err(why) = printable(code, self.max_len) {
                problems.push((key, format!("{code:?} {why}")));
            }
            if let Some(order) = &order
                && order.is_match(code)
            {
                problems.push((
                    key,
                    format!("{code:?} matches order_pattern: it would read as an order"),
                ));
            }
        }
        if self.stop.is_some() && self.stop == self.cancel {
            problems.push(("cancel", "must differ from stop".to_owned()));
        }
        problems
    }

    /// The compiled rules; `None` when [`Self::problems`] is not empty.
    pub fn rules(&self) -> Option<Rules> {
        if !self.problems().is_empty() {
            return None;
        }
        Some(Rules {
            order: Regex::new(&self.order_pattern).ok()?,
            item: match &self.item_pattern {
                Some(pattern) => Some(Regex::new(pattern).ok()?),
                None => None,
            },
            stop: self.stop.clone(),
            cancel: self.cancel.clone(),
            max_len: self.max_len,
        })
    }
}

/// Whether a control barcode can be scanned at all: non-empty, no control characters, short
/// enough.
fn printable(code: &str, max_len: usize) -> Result<(), &'static str> {
    if code.is_empty() {
        return Err("must not be empty");
    }
    if code.chars().any(char::is_control) {
        return Err("must not hold control characters");
    }
    if code.chars().count() > max_len {
        return Err("is longer than max_len");
    }
    Ok(())
}

/// The checked rules of [`ScannerSection`], ready to classify scans.
#[derive(Debug, Clone)]
pub struct Rules {
    order: Regex,
    item: Option<Regex>,
    stop: Option<String>,
    cancel: Option<String>,
    max_len: usize,
}

/// What a scan is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scanned {
    Order(OrderId),
    Stop,
    Cancel,
    /// Anything else: an item put in the box, recorded on the clip in progress.
    Item(String),
    Refused(Refusal),
}

/// Why a scan is refused. It never starts, stops or marks anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    TooLong { chars: usize, max: usize },
    ControlCharacters,
    NotValid(String),
}

impl Refusal {
    /// The `reason` of a `scan_refused` event.
    pub fn reason(&self) -> &'static str {
        match self {
            Refusal::TooLong { .. } => "too_long",
            Refusal::ControlCharacters => "control_characters",
            Refusal::NotValid(_) => "not_valid",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refusal::TooLong { chars, max } => {
                format!("the barcode has {chars} characters; at most {max} are accepted")
            }
            Refusal::ControlCharacters => "the barcode holds control characters".to_owned(),
            Refusal::NotValid(why) => why.clone(),
        }
    }
}

impl Rules {
    /// Classifies one scan (see the module docs); `None` for an empty line.
    pub fn classify(&self, line: &str) -> Option<Scanned> {
        let code = line.trim_end_matches(['\r', '\n']);
        if code.is_empty() {
            return None;
        }
        let chars = code.chars().count();
        if chars > self.max_len {
            return Some(Scanned::Refused(Refusal::TooLong {
                chars,
                max: self.max_len,
            }));
        }
        if code.chars().any(char::is_control) {
            return Some(Scanned::Refused(Refusal::ControlCharacters));
        }
        if code.contains(char::REPLACEMENT_CHARACTER) {
            return Some(Scanned::Refused(Refusal::NotValid(
                "the barcode is not valid UTF-8 or holds a key the scanner's layout does not have"
                    .to_owned(),
            )));
        }
        if self.stop.as_deref() == Some(code) {
            return Some(Scanned::Stop);
        }
        if self.cancel.as_deref() == Some(code) {
            return Some(Scanned::Cancel);
        }
        if self.order.is_match(code) {
            return Some(match OrderId::from_str(code) {
                Ok(order) => Scanned::Order(order),
                Err(e) => Scanned::Refused(Refusal::NotValid(format!(
                    "the barcode matches order_pattern but is no valid order id: {e}"
                ))),
            });
        }
        match &self.item {
            Some(item) if !item.is_match(code) => Some(Scanned::Refused(Refusal::NotValid(
                "the barcode matches neither order_pattern nor item_pattern".to_owned(),
            ))),
            _ => Some(Scanned::Item(code.to_owned())),
        }
    }
}

/// A barcode as it may be shown in an event or a log: control characters escaped, at most
/// 64 characters (a refused scan can be anything).
pub fn shown(code: &str) -> String {
    let escaped: String = code.chars().flat_map(char::escape_debug).collect();
    match escaped.char_indices().nth(64) {
        Some((end, _)) => format!("{}...", &escaped[..end]),
        None => escaped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn section() -> ScannerSection {
        toml::from_str(
            r#"
            device = "/dev/ttyACM0"
            order_pattern = "^SO-[0-9]+$"
            stop = "CTL-STOP"
            cancel = "CTL-CANCEL"
            "#,
        )
        .unwrap()
    }

    fn rules() -> Rules {
        section().rules().unwrap()
    }

    #[test]
    fn a_minimal_section_takes_the_defaults() {
        let s = section();
        assert_eq!(s.max_len, 64);
        assert_eq!(s.idle_stop, Duration::ZERO);
        assert_eq!(s.baud, 9600);
        assert_eq!(s.mode(), Mode::Serial);
        assert_eq!(s.problems(), Vec::new());
    }

    #[test]
    fn the_device_path_tells_the_mode() {
        let mut s = section();
        s.device = "/dev/input/by-id/usb-Honeywell_Scanner-event-kbd".into();
        assert_eq!(s.mode(), Mode::Keyboard);
        s.device = "/dev/serial/by-id/usb-Zebra_Scanner-if00".into();
        assert_eq!(s.mode(), Mode::Serial);
    }

    #[test]
    fn every_bad_value_is_reported_with_its_key() {
        let mut s = section();
        s.device = "ttyACM0".into();
        s.order_pattern = "^SO-(".into();
        s.item_pattern = Some("[".into());
        s.stop = Some(String::new());
        s.cancel = Some("A\tB".into());
        s.max_len = 0;
        s.idle_stop = Duration::from_secs(2);
        s.baud = 1234;
        s.feedback_error = vec!["aplay".into(), "error.wav".into()];
        let keys: Vec<_> = s.problems().into_iter().map(|(k, _)| k).collect();
        assert_eq!(
            keys,
            [
                "device",
                "max_len",
                "idle_stop",
                "baud",
                "feedback_error",
                "order_pattern",
                "item_pattern",
                "stop",
                "cancel"
            ]
        );
        assert!(s.rules().is_none());
    }

    #[test]
    fn a_control_barcode_that_reads_as_an_order_or_twice_the_same_is_refused() {
        let mut s = section();
        s.stop = Some("SO-1".into());
        let problems = s.problems();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].1.contains("matches order_pattern"));
        s.stop = Some("CTL-CANCEL".into());
        assert_eq!(s.problems()[0].0, "cancel");
    }

    #[test]
    fn scans_are_classified() {
        let r = rules();
        let order = |s: &str| OrderId::from_str(s).unwrap();
        let table: [(&str, Option<Scanned>); 9] = [
            ("SO-123\r\n", Some(Scanned::Order(order("SO-123")))),
            ("CTL-STOP", Some(Scanned::Stop)),
            ("CTL-CANCEL\n", Some(Scanned::Cancel)),
            ("4006381333931", Some(Scanned::Item("4006381333931".into()))),
            ("", None),
            ("\r\n", None),
            (
                "SO-1\u{1b}[2J",
                Some(Scanned::Refused(Refusal::ControlCharacters)),
            ),
            ("A\tB", Some(Scanned::Refused(Refusal::ControlCharacters))),
            (
                &"9".repeat(65),
                Some(Scanned::Refused(Refusal::TooLong { chars: 65, max: 64 })),
            ),
        ];
        for (line, expected) in table {
            assert_eq!(r.classify(line), expected, "{line:?}");
        }
    }

    #[test]
    fn a_pattern_match_that_is_no_order_id_and_an_unmatched_item_are_not_valid() {
        let mut s = section();
        s.order_pattern = "^SO/".into();
        s.item_pattern = Some("^[0-9]{8,14}$".into());
        let r = s.rules().unwrap();
        assert!(matches!(
            r.classify("SO/../etc"),
            Some(Scanned::Refused(Refusal::NotValid(m))) if m.contains("no valid order id")
        ));
        assert!(matches!(
            r.classify("hello"),
            Some(Scanned::Refused(Refusal::NotValid(_)))
        ));
        assert_eq!(
            r.classify("40063813"),
            Some(Scanned::Item("40063813".into()))
        );
    }

    #[test]
    fn shown_escapes_and_shortens() {
        assert_eq!(shown("A\u{1b}B"), "A\\u{1b}B");
        assert_eq!(shown(&"x".repeat(100)), format!("{}...", "x".repeat(64)));
    }

    proptest! {
        /// Whatever a scanner sends: an accepted scan has no control characters and fits
        /// max_len, and an order is a valid order id matching the pattern.
        #[test]
        fn no_input_yields_an_unsafe_scan(line in ".{0,80}") {
            let r = rules();
            match r.classify(&line) {
                None | Some(Scanned::Refused(_)) => {}
                Some(Scanned::Stop | Scanned::Cancel) => {}
                Some(Scanned::Order(order)) => {
                    prop_assert!(order.as_str().starts_with("SO-"));
                }
                Some(Scanned::Item(code)) => {
                    prop_assert!(!code.chars().any(char::is_control));
                    prop_assert!(code.chars().count() <= 64);
                    prop_assert!(!code.is_empty());
                }
            }
        }
    }
}
