//! systemd integration: readiness and watchdog notifications (`Type=notify`), and the
//! fault-injection points the crash tests use.
//!
//! `sd_notify` is one datagram to the socket named by `$NOTIFY_SOCKET` (a path, or an
//! abstract name starting with `@`); without the variable (not started by systemd) the
//! notifications are skipped. The watchdog pings only while the daemon loop turns and the
//! spool thread answers, so a wedged agent is restarted by systemd.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;

use crate::spool::Spool;

/// Sends `state` (e.g. `READY=1`) to systemd; returns whether it was sent.
pub fn notify(state: &str) -> bool {
    let Some(socket) = std::env::var_os("NOTIFY_SOCKET") else {
        return false;
    };
    let socket = socket.to_string_lossy().into_owned();
    let address = match socket.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&socket),
    };
    let sent = address.and_then(|address| {
        let datagram = UnixDatagram::unbound()?;
        datagram.send_to_addr(state.as_bytes(), &address)
    });
    if let Err(e) = &sent {
        tracing::warn!(error = %e, socket, "notifying systemd");
    }
    sent.is_ok()
}

/// Seconds on a monotonic clock since the process started.
pub fn monotonic_secs() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_secs()
}

/// The watchdog interval systemd asked for (`WatchdogSec=`), if any, for this process.
fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok() != Some(std::process::id())
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec))
}

/// Starts the watchdog supervisor when systemd asked for one: every half interval, it pings
/// if the daemon loop went round recently and the spool thread answers.
pub fn watchdog(heartbeat: Arc<AtomicU64>, spool: Spool) -> Option<JoinHandle<()>> {
    let interval = watchdog_interval()?;
    let stale_after = interval.as_secs().max(2);
    Some(tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval / 2);
        loop {
            tick.tick().await;
            let loop_alive =
                monotonic_secs().saturating_sub(heartbeat.load(Ordering::Relaxed)) <= stale_after;
            let spool_alive = tokio::time::timeout(interval / 4, spool.call(|_| Ok(())))
                .await
                .is_ok_and(|r| r.is_ok());
            if loop_alive && spool_alive {
                notify("WATCHDOG=1");
            } else {
                tracing::error!(
                    loop_alive,
                    spool_alive,
                    "an actor is stuck: withholding the watchdog ping so systemd restarts the agent"
                );
            }
        }
    }))
}

/// A fault-injection point for the crash tests: when `CAPTURE_AGENT_FAILPOINT` names this
/// point, the process kills itself with SIGKILL here, as a power cut would stop it. Unset in
/// production, where this is one cached environment lookup.
pub fn failpoint(name: &str) {
    static ARMED: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let armed = ARMED.get_or_init(|| std::env::var("CAPTURE_AGENT_FAILPOINT").ok());
    if armed.as_deref() == Some(name) {
        tracing::warn!(failpoint = name, "failpoint reached: killing the process");
        let _ = nix::sys::signal::raise(nix::sys::signal::Signal::SIGKILL);
    }
}
