//! Keyboard mode: a USB scanner that types each barcode as key presses, read from its evdev
//! input device (`/dev/input/by-id/usb-...-event-kbd`).
//!
//! The device yields `struct input_event` records (`linux/input.h`): a `timeval` of two
//! native words, then `type: u16`, `code: u16`, `value: i32`, native endian. [`Decoder`] turns
//! key presses into characters with a US layout (what scanners send unless configured
//! otherwise): Shift and Caps Lock apply, Enter ends the barcode, a key it does not know
//! becomes U+FFFD so that classification refuses the scan instead of misreading it.
//!
//! Not done: grabbing the device (`EVIOCGRAB`) so the scans do not also reach a console
//! login on the Pi's screen. That ioctl needs `unsafe` code, which the workspace forbids;
//! until it is allowed in one audited module, disable the console login on stations
//! (`systemctl disable getty@tty1`), see docs/agent.md.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::serial::MAX_LINE_BYTES;
use super::{ScanSource, ScannerError};

const EV_KEY: u16 = 1;
const KEY_ENTER: u16 = 28;
const KEY_KPENTER: u16 = 96;
const KEY_LEFTSHIFT: u16 = 42;
const KEY_RIGHTSHIFT: u16 = 54;
const KEY_CAPSLOCK: u16 = 58;

/// The size of one `input_event` on this machine: two native words of time, 8 bytes more.
pub const EVENT_SIZE: usize = 2 * std::mem::size_of::<usize>() + 8;

/// One input event, as much of it as decoding needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InputEvent {
    pub kind: u16,
    pub code: u16,
    pub value: i32,
}

impl InputEvent {
    /// A key press (`value` 1), release (0) or auto-repeat (2).
    pub fn key(code: u16, value: i32) -> InputEvent {
        InputEvent {
            kind: EV_KEY,
            code,
            value,
        }
    }

    /// Reads one record of [`EVENT_SIZE`] bytes.
    pub fn parse(record: &[u8]) -> Option<InputEvent> {
        let rest = record.get(2 * std::mem::size_of::<usize>()..EVENT_SIZE)?;
        Some(InputEvent {
            kind: u16::from_ne_bytes([rest[0], rest[1]]),
            code: u16::from_ne_bytes([rest[2], rest[3]]),
            value: i32::from_ne_bytes([rest[4], rest[5], rest[6], rest[7]]),
        })
    }

    /// The record the kernel would write (time zero), for tests and recordings.
    pub fn to_record(self) -> Vec<u8> {
        let mut record = vec![0u8; 2 * std::mem::size_of::<usize>()];
        record.extend_from_slice(&self.kind.to_ne_bytes());
        record.extend_from_slice(&self.code.to_ne_bytes());
        record.extend_from_slice(&self.value.to_ne_bytes());
        record
    }
}

/// Key events to barcodes.
#[derive(Debug, Default)]
pub struct Decoder {
    shift: bool,
    caps: bool,
    pending: String,
}

impl Decoder {
    /// Feeds one event; returns a barcode when it was ended by Enter.
    pub fn feed(&mut self, event: InputEvent) -> Option<String> {
        if event.kind != EV_KEY {
            return None;
        }
        match (event.code, event.value) {
            (KEY_LEFTSHIFT | KEY_RIGHTSHIFT, value) => {
                self.shift = value != 0;
                None
            }
            (KEY_CAPSLOCK, 1) => {
                self.caps = !self.caps;
                None
            }
            (KEY_ENTER | KEY_KPENTER, 1) => Some(std::mem::take(&mut self.pending)),
            (code, 1) => {
                if self.pending.len() < MAX_LINE_BYTES {
                    self.pending.push(self.character(code));
                }
                None
            }
            _ => None,
        }
    }

    fn character(&self, code: u16) -> char {
        let Some((plain, shifted)) = us_key(code) else {
            return char::REPLACEMENT_CHARACTER;
        };
        let upper = if plain.is_ascii_lowercase() {
            self.shift != self.caps
        } else {
            self.shift
        };
        if upper { shifted } else { plain }
    }
}

/// A key of the US layout: its character and its shifted character.
fn us_key(code: u16) -> Option<(char, char)> {
    const ROW_DIGITS: &[u8; 10] = b"1234567890";
    const ROW_SHIFTED: &[u8; 10] = b"!@#$%^&*()";
    const TOP: &[u8; 10] = b"qwertyuiop";
    const HOME: &[u8; 9] = b"asdfghjkl";
    const BOTTOM: &[u8; 7] = b"zxcvbnm";
    let at = |row: &[u8], first: u16| {
        let c = char::from(row[usize::from(code - first)]);
        (c, c.to_ascii_uppercase())
    };
    Some(match code {
        2..=11 => {
            let i = usize::from(code - 2);
            (char::from(ROW_DIGITS[i]), char::from(ROW_SHIFTED[i]))
        }
        12 => ('-', '_'),
        13 => ('=', '+'),
        16..=25 => at(TOP, 16),
        26 => ('[', '{'),
        27 => (']', '}'),
        30..=38 => at(HOME, 30),
        39 => (';', ':'),
        40 => ('\'', '"'),
        41 => ('`', '~'),
        43 => ('\\', '|'),
        44..=50 => at(BOTTOM, 44),
        51 => (',', '<'),
        52 => ('.', '>'),
        53 => ('/', '?'),
        57 => (' ', ' '),
        15 => ('\t', '\t'),
        // The keypad, as with Num Lock on.
        55 => ('*', '*'),
        71 => ('7', '7'),
        72 => ('8', '8'),
        73 => ('9', '9'),
        74 => ('-', '-'),
        75 => ('4', '4'),
        76 => ('5', '5'),
        77 => ('6', '6'),
        78 => ('+', '+'),
        79 => ('1', '1'),
        80 => ('2', '2'),
        81 => ('3', '3'),
        82 => ('0', '0'),
        83 => ('.', '.'),
        98 => ('/', '/'),
        _ => return None,
    })
}

/// A scanner's input device, read event by event.
#[derive(Debug)]
pub struct Keyboard {
    device: File,
    decoder: Decoder,
}

impl Keyboard {
    pub fn open(path: &Path) -> Result<Keyboard, ScannerError> {
        let device = File::open(path).map_err(|source| ScannerError::Open {
            device: path.to_owned(),
            source,
        })?;
        Ok(Keyboard {
            device,
            decoder: Decoder::default(),
        })
    }
}

impl ScanSource for Keyboard {
    fn next_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut record = [0u8; EVENT_SIZE];
        loop {
            // The kernel hands out whole records only.
            self.device.read_exact(&mut record)?;
            if let Some(line) = InputEvent::parse(&record).and_then(|e| self.decoder.feed(e)) {
                return Ok(vec![line]);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The events a scanner sends for `text` and Enter: press and release per key, Shift
    /// around capitals, the HID scan code (`EV_MSC`) before and a sync event after each: the
    /// shape in which the kernel reports a USB HID keyboard.
    fn typed(text: &str) -> Vec<InputEvent> {
        let sync = InputEvent {
            kind: 0,
            code: 0,
            value: 0,
        };
        let mut events = Vec::new();
        let mut press = |code: u16, shift: bool| {
            if shift {
                events.extend([InputEvent::key(KEY_LEFTSHIFT, 1), sync]);
            }
            events.extend([
                InputEvent {
                    kind: 4,
                    code: 4,
                    value: 0x7001e,
                },
                InputEvent::key(code, 1),
                sync,
                InputEvent::key(code, 0),
                sync,
            ]);
            if shift {
                events.extend([InputEvent::key(KEY_LEFTSHIFT, 0), sync]);
            }
        };
        for c in text.chars() {
            let (code, shift) = (0u16..128)
                .find_map(|code| match us_key(code) {
                    Some((plain, _)) if plain == c => Some((code, false)),
                    Some((_, shifted)) if shifted == c => Some((code, true)),
                    _ => None,
                })
                .expect("a character of the US layout");
            press(code, shift);
        }
        press(KEY_ENTER, false);
        events
    }

    fn decode(events: &[InputEvent]) -> Vec<String> {
        let mut decoder = Decoder::default();
        events.iter().filter_map(|e| decoder.feed(*e)).collect()
    }

    #[test]
    fn typed_barcodes_decode_with_shift_and_end_at_enter() {
        let mut events = typed("SO-2026-000123");
        events.extend(typed("4006381333931"));
        events.extend(typed("Item: a/b_C!"));
        assert_eq!(
            decode(&events),
            ["SO-2026-000123", "4006381333931", "Item: a/b_C!"]
        );
    }

    #[test]
    fn caps_lock_inverts_letters_only_and_unknown_keys_are_marked() {
        let mut events = vec![
            InputEvent::key(KEY_CAPSLOCK, 1),
            InputEvent::key(KEY_CAPSLOCK, 0),
        ];
        events.extend(typed("so-1"));
        assert_eq!(decode(&events), ["SO-1"]);
        // F1 (59) is no character; the keypad's Enter ends a barcode too.
        let events = [
            InputEvent::key(30, 1),
            InputEvent::key(59, 1),
            InputEvent::key(KEY_KPENTER, 1),
        ];
        assert_eq!(decode(&events), ["a\u{fffd}"]);
    }

    #[test]
    fn records_round_trip_through_the_kernel_layout() {
        for event in typed("A1") {
            let record = event.to_record();
            assert_eq!(record.len(), EVENT_SIZE);
            assert_eq!(InputEvent::parse(&record), Some(event));
        }
    }

    #[test]
    fn a_recorded_event_stream_read_from_a_file_decodes_like_the_device() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events");
        let bytes: Vec<u8> = typed("SO-7")
            .into_iter()
            .chain(typed("CTL-STOP"))
            .flat_map(InputEvent::to_record)
            .collect();
        std::fs::write(&path, bytes).unwrap();
        let mut keyboard = Keyboard::open(&path).unwrap();
        assert_eq!(keyboard.next_lines().unwrap(), ["SO-7"]);
        assert_eq!(keyboard.next_lines().unwrap(), ["CTL-STOP"]);
        assert!(keyboard.next_lines().is_err(), "end of the recording");
    }
}
