//! `capture-agent scanners`: the barcode scanners this machine has, as `[scanner]` lines.

use crate::scanner::{Mode, attached};

/// Runs `scanners`.
pub fn scanners() -> anyhow::Result<()> {
    let found = attached();
    if found.is_empty() {
        println!("No scanners found.");
        println!(
            "  Keyboard mode: plug the scanner in, then `ls -l /dev/input/by-id/` should list"
        );
        println!("                 a ...-event-kbd entry; the user needs the `input` group.");
        println!("  Serial mode:   `ls -l /dev/serial/by-id/` should list it (or /dev/ttyACM0);");
        println!("                 the user needs the `dialout` group.");
        return Ok(());
    }
    for scanner in found {
        let mode = match scanner.mode {
            Mode::Keyboard => "keyboard mode (any keyboard is listed: pick the scanner)",
            Mode::Serial => "serial mode",
        };
        println!("{} [{mode}]", scanner.target.display());
        println!("  device = \"{}\"", scanner.path.display());
    }
    Ok(())
}
