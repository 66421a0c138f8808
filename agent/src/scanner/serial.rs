//! Serial mode: a scanner on a tty (USB CDC `/dev/ttyACM0`, an RS-232 adapter) sends each
//! barcode as a line of text.
//!
//! The tty is opened without becoming the agent's controlling terminal and put in raw mode
//! (no echo, no line editing, no signals from `^C`), so every byte the scanner sends arrives
//! as sent; [`Lines`] cuts the bytes into scans at CR or LF.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use nix::fcntl::OFlag;
use nix::sys::termios::{self, BaudRate, SetArg, SpecialCharacterIndices};

use super::{ScanSource, ScannerError};

/// The longest line kept, in bytes: longer lines are cut here (and refused as too long,
/// since `max_len` is at most 256 characters of at most 4 bytes).
pub const MAX_LINE_BYTES: usize = 1100;

/// A scanner on a tty in raw mode.
#[derive(Debug)]
pub struct Serial {
    tty: File,
    lines: Lines,
}

impl Serial {
    /// Opens `path` and sets it to raw mode at `baud`.
    pub fn open(path: &Path, baud: u32) -> Result<Serial, ScannerError> {
        let error = |e: std::io::Error| ScannerError::Open {
            device: path.to_owned(),
            source: e,
        };
        let tty = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(OFlag::O_NOCTTY.bits())
            .open(path)
            .map_err(error)?;
        let mut settings = termios::tcgetattr(&tty).map_err(|e| error(e.into()))?;
        termios::cfmakeraw(&mut settings);
        // Block until at least one byte is there, no inter-byte timeout.
        settings.control_chars[SpecialCharacterIndices::VMIN as usize] = 1;
        settings.control_chars[SpecialCharacterIndices::VTIME as usize] = 0;
        termios::cfsetspeed(&mut settings, baud_rate(baud)).map_err(|e| error(e.into()))?;
        termios::tcsetattr(&tty, SetArg::TCSANOW, &settings).map_err(|e| error(e.into()))?;
        Ok(Serial {
            tty,
            lines: Lines::default(),
        })
    }
}

impl ScanSource for Serial {
    fn next_lines(&mut self) -> std::io::Result<Vec<String>> {
        let mut buffer = [0u8; 256];
        loop {
            let n = self.tty.read(&mut buffer)?;
            if n == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let lines = self.lines.push(&buffer[..n]);
            if !lines.is_empty() {
                return Ok(lines);
            }
        }
    }
}

fn baud_rate(baud: u32) -> BaudRate {
    match baud {
        1200 => BaudRate::B1200,
        2400 => BaudRate::B2400,
        4800 => BaudRate::B4800,
        19200 => BaudRate::B19200,
        38400 => BaudRate::B38400,
        57600 => BaudRate::B57600,
        115_200 => BaudRate::B115200,
        _ => BaudRate::B9600,
    }
}

/// Cuts a byte stream into lines at CR or LF (CR LF gives one line and an empty one, which
/// classification ignores). Bytes that are not UTF-8 become U+FFFD, which classification
/// refuses.
#[derive(Debug, Default)]
pub struct Lines {
    pending: Vec<u8>,
}

impl Lines {
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        for &byte in bytes {
            if byte == b'\r' || byte == b'\n' {
                lines.push(String::from_utf8_lossy(&self.pending).into_owned());
                self.pending.clear();
            } else if self.pending.len() < MAX_LINE_BYTES {
                self.pending.push(byte);
            }
        }
        lines
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::fd::AsRawFd;

    use super::*;

    /// A pseudo-terminal pair: the scanner's end (the master) and the tty path the agent
    /// opens (the slave), kept open.
    fn pty() -> (File, std::os::fd::OwnedFd, std::path::PathBuf) {
        let pty = nix::pty::openpty(None, None).unwrap();
        let path = std::fs::read_link(format!("/proc/self/fd/{}", pty.slave.as_raw_fd())).unwrap();
        (File::from(pty.master), pty.slave, path)
    }

    #[test]
    fn a_pseudo_terminal_in_raw_mode_delivers_every_byte_as_sent() {
        let (mut scanner, _slave, path) = pty();
        let mut serial = Serial::open(&path, 9600).unwrap();
        let settings = termios::tcgetattr(&serial.tty).unwrap();
        assert!(!settings.local_flags.contains(termios::LocalFlags::ICANON));
        assert!(!settings.local_flags.contains(termios::LocalFlags::ECHO));
        // A cooked tty would erase the B (DEL), eat the ^C as a signal and turn CR into LF.
        scanner.write_all(b"SO-1\rAB\x7fC\x03\n").unwrap();
        let mut lines = serial.next_lines().unwrap();
        if lines.len() < 2 {
            lines.extend(serial.next_lines().unwrap());
        }
        assert_eq!(lines, ["SO-1", "AB\x7fC\x03"]);
        // No echo: nothing comes back to the scanner's end.
        let flags = nix::fcntl::fcntl(&scanner, nix::fcntl::FcntlArg::F_GETFL).unwrap();
        let flags = OFlag::from_bits_truncate(flags) | OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&scanner, nix::fcntl::FcntlArg::F_SETFL(flags)).unwrap();
        let mut echoed = [0u8; 64];
        assert!(scanner.read(&mut echoed).is_err(), "nothing echoed");
    }

    #[test]
    fn lines_end_at_cr_or_lf_and_may_come_in_pieces() {
        let mut lines = Lines::default();
        assert_eq!(lines.push(b"SO-"), Vec::<String>::new());
        assert_eq!(lines.push(b"1\r\nITEM"), ["SO-1", ""]);
        assert_eq!(lines.push(b"-7\nSTOP\r"), ["ITEM-7", "STOP"]);
    }

    #[test]
    fn an_endless_line_is_cut_and_bad_bytes_are_marked() {
        let mut lines = Lines::default();
        lines.push(&[b'9'; 5000]);
        assert_eq!(lines.push(b"\n")[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines.push(b"A\xffB\n"), ["A\u{fffd}B"]);
    }
}
