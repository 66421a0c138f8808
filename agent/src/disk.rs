//! Disk: the spool's quota, and eviction of the clips the cloud already holds.
//!
//! The spool may use at most `max_bytes`, and must leave `min_free_percent` of its file
//! system free. When either limit is crossed, clips the ingest has **accepted** are deleted,
//! oldest first, until both hold again. A clip the ingest has not accepted is never deleted:
//! when nothing accepted is left to delete and a limit is still crossed, the spool is *full*,
//! `start` and `snapshot` answer `disk_full`, and the status says so. Recording resumes by
//! itself once space returns (uploads confirmed, files removed by an operator).
//!
//! [`plan`] is the pure policy; [`usage`] measures the file system and the clip directory.

use std::path::Path;

/// The spool's limits (`[disk]` in the config).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub max_bytes: u64,
    pub min_free_percent: u8,
}

/// What the spool uses and what its file system has left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// Bytes of every file in the clip directory (recordings in progress included).
    pub spool_bytes: u64,
    /// Size of the file system.
    pub fs_bytes: u64,
    /// Bytes available to the agent on the file system.
    pub free_bytes: u64,
}

/// An accepted clip that may be deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evictable {
    pub clip_id: String,
    pub size: u64,
}

/// What to do about the disk now.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Clips to delete, in this order.
    pub evict: Vec<String>,
    /// A limit is still crossed after the evictions: refuse new captures.
    pub full: bool,
}

impl Quota {
    /// Bytes that must be freed for both limits to hold (0 when they do).
    pub fn deficit(&self, usage: &Usage) -> u64 {
        let over_quota = usage.spool_bytes.saturating_sub(self.max_bytes);
        let min_free = usage.fs_bytes / 100 * u64::from(self.min_free_percent);
        let under_free = min_free.saturating_sub(usage.free_bytes);
        over_quota.max(under_free)
    }
}

/// Decides which accepted clips to delete (`accepted` is oldest first) so that both limits
/// hold, deleting no more than needed.
pub fn plan(quota: &Quota, usage: &Usage, accepted: &[Evictable]) -> Plan {
    let mut deficit = quota.deficit(usage);
    // At the quota exactly, a new recording would cross it: treat reaching it as crossing.
    if deficit == 0 && usage.spool_bytes < quota.max_bytes {
        return Plan::default();
    }
    deficit = deficit.max(1);
    let mut evict = Vec::new();
    for clip in accepted {
        if deficit == 0 {
            break;
        }
        evict.push(clip.clip_id.clone());
        deficit = deficit.saturating_sub(clip.size.max(1));
    }
    Plan {
        evict,
        full: deficit > 0,
    }
}

/// Measures the file system of `spool_dir` and the bytes of the files in `clip_dir`.
pub fn usage(spool_dir: &Path, clip_dir: &Path) -> std::io::Result<Usage> {
    let stat = nix::sys::statvfs::statvfs(spool_dir).map_err(std::io::Error::from)?;
    let fragment = stat.fragment_size();
    let mut spool_bytes = 0;
    match std::fs::read_dir(clip_dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if let Ok(metadata) = entry.metadata()
                    && metadata.is_file()
                {
                    spool_bytes += metadata.len();
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    Ok(Usage {
        spool_bytes,
        fs_bytes: stat.blocks() * fragment,
        free_bytes: stat.blocks_available() * fragment,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const QUOTA: Quota = Quota {
        max_bytes: 1000,
        min_free_percent: 10,
    };

    fn usage(spool_bytes: u64, free_bytes: u64) -> Usage {
        Usage {
            spool_bytes,
            fs_bytes: 10_000,
            free_bytes,
        }
    }

    fn clips(sizes: &[u64]) -> Vec<Evictable> {
        sizes
            .iter()
            .enumerate()
            .map(|(i, &size)| Evictable {
                clip_id: format!("c{i}"),
                size,
            })
            .collect()
    }

    #[test]
    fn within_limits_nothing_is_evicted() {
        assert_eq!(
            plan(&QUOTA, &usage(500, 5000), &clips(&[100])),
            Plan::default()
        );
    }

    #[test]
    fn over_quota_evicts_the_oldest_accepted_clips_until_it_fits() {
        let plan = plan(&QUOTA, &usage(1250, 5000), &clips(&[100, 200, 300]));
        assert_eq!(plan.evict, vec!["c0", "c1"]);
        assert!(!plan.full);
    }

    #[test]
    fn too_little_free_space_evicts_even_under_quota() {
        // 10 % of 10,000 must stay free: 600 missing.
        let plan = plan(&QUOTA, &usage(900, 400), &clips(&[500, 500, 500]));
        assert_eq!(plan.evict, vec!["c0", "c1"]);
        assert!(!plan.full);
    }

    #[test]
    fn with_nothing_accepted_the_spool_is_full() {
        let plan = plan(&QUOTA, &usage(1000, 5000), &[]);
        assert_eq!(
            plan,
            Plan {
                evict: vec![],
                full: true
            }
        );
    }

    #[test]
    fn when_accepted_clips_are_not_enough_all_go_and_it_is_still_full() {
        let plan = plan(&QUOTA, &usage(2000, 5000), &clips(&[100, 100]));
        assert_eq!(plan.evict, vec!["c0", "c1"]);
        assert!(plan.full);
    }

    #[test]
    fn usage_counts_the_files_of_the_clip_directory() {
        let dir = tempfile::tempdir().unwrap();
        let clips = dir.path().join("clips");
        std::fs::create_dir(&clips).unwrap();
        std::fs::write(clips.join("a.mp4"), vec![0; 300]).unwrap();
        std::fs::write(clips.join("b.mp4.part"), vec![0; 200]).unwrap();
        let measured = super::usage(dir.path(), &clips).unwrap();
        assert_eq!(measured.spool_bytes, 500);
        assert!(measured.fs_bytes >= measured.free_bytes && measured.free_bytes > 0);
        let missing = super::usage(dir.path(), &dir.path().join("none")).unwrap();
        assert_eq!(missing.spool_bytes, 0);
    }

    proptest! {
        /// Whatever the sizes: only accepted clips are named, in order, and when the plan
        /// says "not full" the evicted bytes cover the deficit.
        #[test]
        fn the_plan_evicts_a_prefix_and_covers_the_deficit(
            spool in 0u64..5000, free in 0u64..10_000, sizes in prop::collection::vec(1u64..800, 0..8)
        ) {
            let accepted = clips(&sizes);
            let u = usage(spool, free);
            let plan = plan(&QUOTA, &u, &accepted);
            let prefix: Vec<String> = accepted.iter().take(plan.evict.len()).map(|c| c.clip_id.clone()).collect();
            prop_assert_eq!(&plan.evict, &prefix);
            let freed: u64 = sizes.iter().take(plan.evict.len()).sum();
            if !plan.full && !plan.evict.is_empty() {
                prop_assert!(freed >= QUOTA.deficit(&u));
            }
            if plan.full {
                prop_assert_eq!(plan.evict.len(), accepted.len());
            }
        }
    }
}
