//! End to end, every real part running: Mosquitto, Garage, PostgreSQL, RabbitMQ,
//! `cloud-ingest` and `capture-agent` (two `videotestsrc` cameras) as real processes. The
//! warehouse line is an MQTT client sending DESIGN.md section 3 commands; the core business
//! system is a RabbitMQ consumer of the completion events.
//!
//! `paths` covers what the line can ask for; `faults` kills and stops parts while orders are
//! recorded and uploaded. Every scenario ends with [`System::audit`]: each clip that was
//! recorded reaches the core system exactly once (one event id, matching an object in the
//! store) or ends with an explicit failure event; nothing aborted is uploaded. Each scenario
//! appends its figures to `e2e-figures.jsonl` in cargo's test temporary directory (the
//! source of the table in tests/README.md).

mod faults;
mod paths;

use std::io::Write as _;
use std::time::Duration;

use capture_tests::system::{Figures, System};

/// How long every clip may take to reach an outcome once the faults are over.
const SETTLE: Duration = Duration::from_secs(180);

/// Audits the system, records the scenario's figures and returns them.
async fn audit(system: &mut System, scenario: &str) -> Figures {
    let figures = system
        .audit(SETTLE)
        .await
        .unwrap_or_else(|e| panic!("{scenario}: {e:#}"));
    let line = figures.to_json(scenario).to_string();
    println!("e2e figures: {line}");
    let path = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("e2e-figures.jsonl");
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .expect("the figures file opens");
    writeln!(file, "{line}").expect("the figures are written");
    assert_eq!((figures.lost, figures.duplicates), (0, 0), "{scenario}");
    figures
}
