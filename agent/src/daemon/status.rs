//! The station's retained status, the disk check with eviction, and the metrics gauges.

use std::path::Path;

use capture_protocol::{Presence, Queue, Status, Timestamp};

use super::{Daemon, Identity};
use crate::capture::CameraState;
use crate::disk::{self, Evictable};
use crate::spool::{ClipState, Spool, clips};
use crate::telemetry::Metrics;

/// What the status says, gathered from the station, the spool and the disk.
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    identity: Identity,
    recording: Option<capture_protocol::Recording>,
    queue: Queue,
    disk_free_bytes: u64,
    clock_synced: bool,
}

impl Snapshot {
    /// The status before the daemon's loop runs (the first `online` message, retained until
    /// the next one): measured like every later one, so that a dashboard or an alert reading
    /// it never sees a full disk or an empty queue that are not there. The free space is also
    /// recorded in the metrics, where every later status reads it until the disk check runs.
    pub(super) async fn at_start(
        identity: &Identity,
        clock_synced: bool,
        spool: &Spool,
        disk: (&Path, &Path),
        metrics: &Metrics,
    ) -> Snapshot {
        let (spool_dir, clip_dir) = disk;
        match disk::usage(spool_dir, clip_dir) {
            Ok(usage) => {
                Metrics::set(&metrics.disk_free_bytes, usage.free_bytes);
                Metrics::set(&metrics.disk_size_bytes, usage.fs_bytes);
                Metrics::set(&metrics.spool_bytes, usage.spool_bytes);
            }
            Err(e) => tracing::warn!(error = %e, "measuring the spool's disk for the first status"),
        }
        Snapshot {
            identity: identity.clone(),
            recording: None,
            queue: queue(spool).await,
            disk_free_bytes: metrics
                .disk_free_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            clock_synced,
        }
    }

    pub(super) fn to_status(&self) -> Status {
        Status {
            v: capture_protocol::ProtocolV1,
            state: Presence::Online,
            device: self.identity.device.clone(),
            station: self.identity.station.clone(),
            version: crate::VERSION.to_owned(),
            recording: self.recording.clone(),
            queue: self.queue,
            disk_free_bytes: self.disk_free_bytes,
            clock_synced: self.clock_synced,
            at: Timestamp::now(),
        }
    }
}

/// The clips waiting for the cloud, and their bytes.
async fn queue(spool: &Spool) -> Queue {
    let totals = spool.call(|c| clips::totals(c)).await.unwrap_or_default();
    let (clips, bytes) = totals
        .iter()
        .filter(|(state, _, _)| state.is_queued())
        .fold((0u64, 0u64), |(n, b), (_, count, size)| {
            (n + *count as u64, b + *size as u64)
        });
    Queue { clips, bytes }
}

pub(super) fn to_json(status: &Status) -> Vec<u8> {
    serde_json::to_vec(status).unwrap_or_default()
}

/// Whether the system clock is synchronised to NTP. A Pi 4 has no real-time clock: until
/// it is, timestamps (and the dates in object keys) may be wrong, and every clip says so.
///
/// systemd-timesyncd marks a synchronised clock with `/run/systemd/timesync/synchronized`;
/// otherwise `timedatectl` asks systemd (chrony and ntpd report through it too).
pub(super) fn clock_synced() -> bool {
    if Path::new("/run/systemd/timesync/synchronized").exists() {
        return true;
    }
    std::process::Command::new("timedatectl")
        .args(["show", "--property=NTPSynchronized", "--value"])
        .stderr(std::process::Stdio::null())
        .output()
        .map(|out| out.status.success() && out.stdout.starts_with(b"yes"))
        .unwrap_or(false)
}

impl Daemon {
    /// Gathers the status's content.
    pub(super) async fn status_snapshot(&self) -> Snapshot {
        Snapshot {
            identity: self.identity.clone(),
            recording: self
                .station
                .recording()
                .map(|r| capture_protocol::Recording {
                    order: r.order.clone(),
                    since: r.since,
                }),
            queue: queue(&self.spool).await,
            disk_free_bytes: self
                .metrics
                .disk_free_bytes
                .load(std::sync::atomic::Ordering::Relaxed),
            clock_synced: self.clock_synced,
        }
    }

    /// Publishes the retained status (not durable: the next one supersedes it).
    pub(super) async fn publish_status(&self) {
        let status = self.status_snapshot().await.to_status();
        self.link.set_presence(to_json(&status));
    }

    /// Every few seconds: the disk (evicting if needed), the metrics, and the status when
    /// something an observer cares about changed.
    pub(super) async fn refresh(&mut self) {
        let was_full = self.disk_full;
        self.check_disk().await;
        self.update_metrics().await;
        if was_full != self.disk_full {
            self.publish_status().await;
        }
    }

    /// Measures the disk, evicts accepted clips when a limit is crossed, and decides whether
    /// the spool is full.
    pub(super) async fn check_disk(&mut self) {
        let usage = match disk::usage(&self.spool_dir, &self.clip_dir) {
            Ok(usage) => usage,
            Err(e) => {
                tracing::warn!(error = %e, "measuring the spool's disk");
                return;
            }
        };
        let accepted =
            if self.quota.deficit(&usage) > 0 || usage.spool_bytes >= self.quota.max_bytes {
                self.spool
                    .call(|c| clips::in_state(c, ClipState::Accepted, 10_000))
                    .await
                    .unwrap_or_default()
            } else {
                Vec::new()
            };
        let evictable: Vec<Evictable> = accepted
            .iter()
            .map(|c| Evictable {
                clip_id: c.clip_id.clone(),
                size: u64::try_from(c.size.unwrap_or(0)).unwrap_or(0),
            })
            .collect();
        let plan = disk::plan(&self.quota, &usage, &evictable);
        for clip_id in &plan.evict {
            let Some(clip) = accepted.iter().find(|c| &c.clip_id == clip_id) else {
                continue;
            };
            self.evict(&clip.clip_id, Path::new(&clip.path)).await;
        }
        let free = disk::usage(&self.spool_dir, &self.clip_dir)
            .map(|u| u.free_bytes)
            .unwrap_or(usage.free_bytes);
        Metrics::set(&self.metrics.disk_free_bytes, free);
        Metrics::set(&self.metrics.disk_size_bytes, usage.fs_bytes);
        Metrics::set(&self.metrics.spool_bytes, usage.spool_bytes);
        if plan.full != self.disk_full {
            if plan.full {
                tracing::error!(
                    spool_bytes = usage.spool_bytes,
                    free_bytes = usage.free_bytes,
                    max_bytes = self.quota.max_bytes,
                    "the spool is full and holds no clip the cloud has accepted: new captures are refused with disk_full until space returns"
                );
            } else {
                tracing::info!("the spool has room again: captures are accepted");
            }
        }
        self.disk_full = plan.full;
        Metrics::flag(&self.metrics.disk_full, plan.full);
    }

    /// Deletes an accepted clip's file, then its row.
    async fn evict(&self, clip_id: &str, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(clip_id, file = %path.display(), error = %e, "evicting an accepted clip");
                return;
            }
        }
        let id = clip_id.to_owned();
        match self.spool.call(move |c| clips::remove(c, &id)).await {
            Ok(_) => {
                Metrics::add(&self.metrics.evicted, 1);
                tracing::info!(clip_id, "evicted an accepted clip to free space");
            }
            Err(e) => tracing::warn!(clip_id, error = %e, "forgetting an evicted clip"),
        }
    }

    async fn update_metrics(&self) {
        if let Ok(totals) = self.spool.call(|c| clips::totals(c)).await
            && let Ok(mut clips) = self.metrics.clips.lock()
        {
            *clips = totals
                .iter()
                .map(|(state, count, _)| (*state, u64::try_from(*count).unwrap_or(0)))
                .collect();
        }
        let oldest = self
            .spool
            .call(|c| clips::oldest_unconfirmed(c))
            .await
            .ok()
            .flatten()
            .and_then(|t| t.parse::<Timestamp>().ok())
            .map_or(0, |t| {
                let age_ms = Timestamp::now().unix_millis() - t.unix_millis();
                u64::try_from(age_ms / 1000).unwrap_or(0)
            });
        Metrics::set(&self.metrics.oldest_unconfirmed_secs, oldest);
        Metrics::flag(&self.metrics.mqtt_connected, self.link.is_connected());
        Metrics::flag(&self.metrics.clock_synced, self.clock_synced);
        Metrics::flag(&self.metrics.recording, self.station.recording().is_some());
        if let Ok(mut cameras) = self.metrics.cameras.lock() {
            *cameras = self
                .cameras
                .iter()
                .map(|c| {
                    let status = c.status();
                    (
                        status.camera,
                        status.state == CameraState::Running,
                        status.restarts,
                    )
                })
                .collect();
        }
    }
}
