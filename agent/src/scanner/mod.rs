//! The packer's barcode scanner: scans read at the station, decided by the station.
//!
//! ```text
//!  device ──bytes/key events──▶ [reader thread] ──lines──▶ daemon loop ──▶ Rules::classify
//!  (tty or evdev)               serial::Lines /              │
//!                               keyboard::Decoder            ▼
//!                                              decide::decide (Station::handle) ──▶ spool ──▶ events
//! ```
//!
//! [`ScannerSection`] is `[scanner]` in agent.toml; its device path tells the mode
//! ([`Mode`]). A reader thread per scanner ([`spawn`]) blocks on the device and sends each
//! line to the daemon's loop, which classifies it ([`rules`]), decides it with the station
//! state machine ([`decide`]) and records, carries out and publishes the decision the way it
//! does a command from the line (`daemon/scans.rs`).

pub mod decide;
pub mod keyboard;
pub mod rules;
pub mod serial;

use std::path::PathBuf;

pub use decide::{ScanEffect, idle_stop};
pub use rules::{Mode, Refusal, Rules, Scanned, ScannerSection, shown};

/// Why a scanner could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ScannerError {
    #[error("opening the scanner {}: {source}", device.display())]
    Open {
        device: PathBuf,
        source: std::io::Error,
    },
}

/// Something that yields the scanner's lines, blocking until there are some.
pub trait ScanSource: Send {
    fn next_lines(&mut self) -> std::io::Result<Vec<String>>;
}

/// Opens the scanner `section` names in its mode.
pub fn open(section: &ScannerSection) -> Result<Box<dyn ScanSource>, ScannerError> {
    Ok(match section.mode() {
        Mode::Serial => Box::new(serial::Serial::open(&section.device, section.baud)?),
        Mode::Keyboard => Box::new(keyboard::Keyboard::open(&section.device)?),
    })
}

/// How long the reader waits before it opens the device again after it failed (unplugged,
/// not there yet).
pub const REOPEN_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

/// Reads the scanner `section` names on a thread of its own and sends each line to `lines`
/// until the receiver is gone. A device that cannot be opened or fails (a scanner unplugged)
/// is opened again every [`REOPEN_AFTER`]; each failure is logged once until it reads again.
/// The thread blocks in `read`; it ends with the process.
pub fn spawn(
    section: ScannerSection,
    lines: tokio::sync::mpsc::UnboundedSender<String>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("scanner".into())
        .spawn(move || {
            let mut failing = false;
            while !lines.is_closed() {
                let error = match open(&section) {
                    Ok(mut source) => {
                        if failing {
                            tracing::info!(device = %section.device.display(), "the barcode scanner reads again");
                            failing = false;
                        }
                        loop {
                            match source.next_lines() {
                                Ok(batch) => {
                                    for line in batch {
                                        if lines.send(line).is_err() {
                                            return;
                                        }
                                    }
                                }
                                Err(e) => break e.to_string(),
                            }
                        }
                    }
                    Err(e) => e.to_string(),
                };
                if !failing {
                    tracing::error!(device = %section.device.display(), error = %error, "the barcode scanner cannot be read; trying again every {REOPEN_AFTER:?}");
                    failing = true;
                }
                std::thread::sleep(REOPEN_AFTER);
            }
        })
        .map(drop)
}

/// A scanner the system offers: its stable path and the device it points to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attached {
    pub path: PathBuf,
    pub target: PathBuf,
    pub mode: Mode,
}

/// The scanners attached: keyboards under `/dev/input/by-id/` (a scanner in keyboard mode is
/// one) and ttys under `/dev/serial/by-id/`, sorted by path.
pub fn attached() -> Vec<Attached> {
    let mut found = Vec::new();
    for (dir, mode) in [
        ("/dev/input/by-id", Mode::Keyboard),
        ("/dev/serial/by-id", Mode::Serial),
    ] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if mode == Mode::Keyboard && !name.ends_with("-event-kbd") {
                continue;
            }
            let target = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
            found.push(Attached { path, target, mode });
        }
    }
    found.sort_by(|a, b| a.path.cmp(&b.path));
    found
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    #[test]
    fn the_reader_opens_a_scanner_plugged_in_after_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("usb-scanner");
        let section: ScannerSection = toml::from_str(&format!(
            "device = \"{}\"\norder_pattern = \"^SO-\"\n",
            link.display()
        ))
        .unwrap();
        let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
        spawn(section, lines_tx).unwrap();
        // Plugged in: udev's by-id link appears, pointing at the tty.
        let pty = nix::pty::openpty(None, None).unwrap();
        let tty = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(200));
        std::os::unix::fs::symlink(&tty, &link).unwrap();
        let mut scanner = std::fs::File::from(pty.master);
        scanner.write_all(b"SO-1\n").unwrap();
        let deadline = std::time::Instant::now() + 3 * REOPEN_AFTER;
        loop {
            match lines.try_recv() {
                Ok(line) => {
                    assert_eq!(line, "SO-1");
                    break;
                }
                Err(_) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                Err(e) => panic!("no scan from the scanner plugged in late: {e}"),
            }
        }
    }
}
