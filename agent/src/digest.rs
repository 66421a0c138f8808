//! The digests of a sealed file, computed in the one read that seals it.
//!
//! ```text
//!  sealed file ──one read──▶ sha256 of the whole file      → `sha256` metadata, notification
//!                         └▶ MD5 of each part of the plan → `Content-MD5` of each request,
//!                                                            and the ETag the store will give
//! ```
//!
//! The part plan is a pure function of the file's size and a part size
//! ([`plan_part_size`]): a file of at most `part_size` bytes goes in one `PutObject` (its one
//! "part" is the whole file); a larger one is cut every [`part_size_for`] bytes (the
//! configured size, raised when 10,000 parts would not do) into the parts of [`plan`], which
//! the uploader sends as they are. The part size used is stored with the MD5s
//! ([`PartDigests`]), so a configuration changed between seal and upload does not change the
//! plan of a clip already sealed.
//!
//! Because the uploader sends these MD5s instead of computing them from the file at upload
//! time, the store refuses (`BadDigest`) a part whose bytes changed on the SD card since the
//! seal, and the object's ETag ([`PartDigests::etag`]) is the store's own digest of bytes
//! the seal saw: the MD5 of the file for a single `PutObject`, the MD5 of the concatenated
//! binary part MD5s followed by `-N` for a multipart upload.

use std::fs::File;
use std::io::Read as _;
use std::path::Path;
use std::time::{Duration, Instant};

use md5::{Digest as _, Md5};
use sha2::Sha256;

/// The default `store.part_size`, for tools that seal without a configuration.
pub const DEFAULT_PART_SIZE: u64 = 8 << 20;

/// The most parts one object may have (S3 and OBS).
pub const MAX_PARTS: u64 = 10_000;

/// One part of the file: 1-based number, byte offset and length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartPlan {
    pub number: i64,
    pub offset: u64,
    pub length: u64,
}

/// The part size for a file of `size` bytes: the configured one, raised (to whole MiB) when
/// the file would need more than [`MAX_PARTS`] parts.
pub fn part_size_for(size: u64, configured: u64) -> u64 {
    let configured = configured.max(1);
    if size.div_ceil(configured) <= MAX_PARTS {
        return configured;
    }
    let needed = size.div_ceil(MAX_PARTS);
    needed.div_ceil(1 << 20) * (1 << 20)
}

/// The parts of a file of `size` bytes cut every `part_size` bytes.
pub fn plan(size: u64, part_size: u64) -> Vec<PartPlan> {
    let part_size = part_size.max(1);
    (0..size.div_ceil(part_size))
        .map(|index| {
            let offset = index * part_size;
            PartPlan {
                number: i64::try_from(index + 1).unwrap_or(i64::MAX),
                offset,
                length: part_size.min(size - offset),
            }
        })
        .collect()
}

/// The MD5 of every part of a file's upload plan, and the part size that plan was made with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartDigests {
    /// The plan's part size: the file is cut every `part_size` bytes.
    pub part_size: u64,
    /// One MD5 per part, in part order; exactly one for a file uploaded in one `PutObject`
    /// (the MD5 of the whole file, of zero bytes for an empty one).
    pub md5s: Vec<[u8; 16]>,
}

impl PartDigests {
    /// Whether the file goes in one `PutObject` rather than a multipart upload.
    pub fn is_single(&self) -> bool {
        self.md5s.len() <= 1
    }

    /// The parts of a file of `size` bytes under this plan (one for a single `PutObject`).
    pub fn parts(&self, size: u64) -> Vec<PartPlan> {
        let parts = plan(size, self.part_size);
        if parts.is_empty() {
            return vec![PartPlan {
                number: 1,
                offset: 0,
                length: 0,
            }];
        }
        parts
    }

    /// The MD5 of part `number` (1-based).
    pub fn md5(&self, number: i64) -> Option<[u8; 16]> {
        let index = usize::try_from(number.checked_sub(1)?).ok()?;
        self.md5s.get(index).copied()
    }

    /// The ETag a store computing them as S3 does gives the object, without quotes: the hex
    /// MD5 of the file for a single `PutObject`; for a multipart upload, the hex MD5 of the
    /// part MD5s (binary, concatenated), a dash and the number of parts.
    pub fn etag(&self) -> String {
        match self.md5s.as_slice() {
            [single] => hex::encode(single),
            parts => {
                let mut hasher = Md5::new();
                for md5 in parts {
                    hasher.update(md5);
                }
                format!("{}-{}", hex::encode(hasher.finalize()), parts.len())
            }
        }
    }

    /// The MD5s as stored in the spool: 16 bytes per part, concatenated.
    pub fn to_blob(&self) -> Vec<u8> {
        self.md5s.concat()
    }

    /// The digests stored for a file of `size` bytes, checked against the plan they must
    /// cover.
    pub fn from_blob(part_size: i64, blob: &[u8], size: u64) -> Result<PartDigests, String> {
        let part_size = u64::try_from(part_size)
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| format!("part size {part_size} is not positive"))?;
        if !blob.len().is_multiple_of(16) {
            return Err(format!(
                "{} bytes of part MD5s, not a multiple of 16",
                blob.len()
            ));
        }
        let md5s: Vec<[u8; 16]> = blob
            .chunks_exact(16)
            .map(|chunk| chunk.try_into().expect("chunks of 16 bytes"))
            .collect();
        let digests = PartDigests { part_size, md5s };
        let expected = digests.parts(size).len();
        if digests.md5s.len() != expected {
            return Err(format!(
                "{} part MD5s for a plan of {expected} parts ({size} bytes in parts of {part_size})",
                digests.md5s.len()
            ));
        }
        Ok(digests)
    }
}

/// What the seal's read established about a file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileDigests {
    /// Bytes read.
    pub size: u64,
    /// Lowercase hex sha256 of the whole file.
    pub sha256: String,
    pub parts: PartDigests,
}

/// The plan's part size for a file of `size` bytes, with `configured` the configured part
/// size (`store.part_size`): `configured` for a file that fits one part (a single
/// `PutObject`), else [`part_size_for`].
pub fn plan_part_size(size: u64, configured: u64) -> u64 {
    let configured = configured.max(1);
    if size <= configured {
        configured
    } else {
        part_size_for(size, configured)
    }
}

/// Reads `path` once: its sha256, and the MD5 of every part of its upload plan for the
/// configured part size `configured_part_size`. Fails when the file changes size while it
/// is read (a sealed file never does).
pub fn digest_file(path: &Path, configured_part_size: u64) -> std::io::Result<FileDigests> {
    let mut file = File::open(path)?;
    let expected = file.metadata()?.len();
    let part_size = plan_part_size(expected, configured_part_size);
    let mut sha256 = Sha256::new();
    let mut md5s = Vec::new();
    let mut part = Md5::new();
    let mut in_part: u64 = 0;
    let mut size: u64 = 0;
    let mut buffer = vec![0u8; 256 << 10];
    let pace = SealReadPace::start();
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        let mut block = &buffer[..read];
        sha2::Digest::update(&mut sha256, block);
        while !block.is_empty() {
            let room = usize::try_from(part_size - in_part).unwrap_or(usize::MAX);
            let (now, rest) = block.split_at(block.len().min(room));
            part.update(now);
            in_part += now.len() as u64;
            if in_part == part_size {
                md5s.push(part.finalize_reset().into());
                in_part = 0;
            }
            block = rest;
        }
        size += read as u64;
        pace.wait(size);
    }
    if in_part > 0 || md5s.is_empty() {
        md5s.push(part.finalize().into());
    }
    if size != expected {
        return Err(std::io::Error::other(format!(
            "{} changed while it was read: {size} bytes read, {expected} expected",
            path.display()
        )));
    }
    Ok(FileDigests {
        size,
        sha256: hex::encode(sha2::Digest::finalize(sha256)),
        parts: PartDigests { part_size, md5s },
    })
}

/// The environment variable that caps the seal's read rate, in bytes per second: a test
/// hook (like `CAPTURE_AGENT_FAILPOINT`) that makes a seal last as long as an hour-long
/// clip's does on a Pi's SD card, without recording for an hour. Unset in production, where
/// it is one cached environment lookup.
pub const SEAL_READ_BPS_VAR: &str = "CAPTURE_AGENT_SEAL_READ_BPS";

/// Holds the seal's read back to [`SEAL_READ_BPS_VAR`] bytes per second, when set.
struct SealReadPace {
    bytes_per_second: Option<u64>,
    started: Instant,
}

impl SealReadPace {
    fn start() -> SealReadPace {
        static RATE: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();
        let bytes_per_second = *RATE.get_or_init(|| {
            std::env::var(SEAL_READ_BPS_VAR)
                .ok()
                .and_then(|v| v.parse().ok())
                .filter(|&rate: &u64| rate > 0)
        });
        SealReadPace {
            bytes_per_second,
            started: Instant::now(),
        }
    }

    /// Sleeps until reading `done` bytes is due at the capped rate.
    fn wait(&self, done: u64) {
        if let Some(rate) = self.bytes_per_second {
            let due = Duration::from_secs_f64(done as f64 / rate as f64);
            if let Some(early) = due.checked_sub(self.started.elapsed()) {
                std::thread::sleep(early);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md5(data: &[u8]) -> [u8; 16] {
        Md5::digest(data).into()
    }

    #[test]
    fn one_read_gives_the_sha256_and_the_md5_of_every_part() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("clip");
        let data: Vec<u8> = (0..1_000_003u32).map(|i| (i * 31 % 251) as u8).collect();
        std::fs::write(&path, &data).unwrap();
        // 1,000,003 bytes in parts of 300,000: three full parts and 100,003 bytes.
        let digests = digest_file(&path, 300_000).unwrap();
        assert_eq!(digests.size, 1_000_003);
        assert_eq!(
            digests.sha256,
            hex::encode(<Sha256 as sha2::Digest>::digest(&data))
        );
        assert_eq!(digests.parts.part_size, 300_000);
        let expected: Vec<[u8; 16]> = data.chunks(300_000).map(md5).collect();
        assert_eq!(digests.parts.md5s, expected);
        assert!(!digests.parts.is_single());
        let parts = digests.parts.parts(digests.size);
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[3].length, 100_003);
    }

    #[test]
    fn a_file_that_fits_one_part_is_one_put_whose_etag_is_its_md5() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("abc");
        std::fs::write(&path, b"abc").unwrap();
        let digests = digest_file(&path, 8 << 20).unwrap();
        assert_eq!(
            digests.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(digests.parts.is_single());
        assert_eq!(digests.parts.etag(), "900150983cd24fb0d6963f7d28e17f72");
        let empty = dir.path().join("empty");
        std::fs::write(&empty, b"").unwrap();
        let digests = digest_file(&empty, 8 << 20).unwrap();
        assert_eq!(digests.parts.etag(), "d41d8cd98f00b204e9800998ecf8427e");
        assert_eq!(digests.parts.parts(0).len(), 1);
    }

    #[test]
    fn the_multipart_etag_is_the_md5_of_the_part_md5s_and_their_count() {
        let digests = PartDigests {
            part_size: 1,
            md5s: vec![md5(b"a"), md5(b"b")],
        };
        let mut joined = md5(b"a").to_vec();
        joined.extend_from_slice(&md5(b"b"));
        assert_eq!(digests.etag(), format!("{}-2", hex::encode(md5(&joined))));
    }

    #[test]
    fn parts_cover_the_file_exactly() {
        let parts = plan(20, 8);
        assert_eq!(
            parts,
            [
                PartPlan {
                    number: 1,
                    offset: 0,
                    length: 8
                },
                PartPlan {
                    number: 2,
                    offset: 8,
                    length: 8
                },
                PartPlan {
                    number: 3,
                    offset: 16,
                    length: 4
                },
            ]
        );
        assert_eq!(plan(16, 8).len(), 2);
        assert!(plan(0, 8).is_empty());
        let mib = 1u64 << 20;
        let total: u64 = plan(100 * mib + 1, 8 * mib).iter().map(|p| p.length).sum();
        assert_eq!(total, 100 * mib + 1);
    }

    #[test]
    fn the_part_size_grows_only_when_ten_thousand_parts_would_not_do() {
        let mib = 1u64 << 20;
        assert_eq!(part_size_for(1 << 30, 8 * mib), 8 * mib);
        assert_eq!(part_size_for(10_000 * 8 * mib, 8 * mib), 8 * mib);
        let big = 10_000 * 8 * mib + 1;
        let grown = part_size_for(big, 8 * mib);
        assert_eq!(grown, 9 * mib);
        assert!(plan(big, grown).len() as u64 <= MAX_PARTS);
    }

    #[test]
    fn the_plan_depends_only_on_the_size_and_the_part_size() {
        let mib = 1u64 << 20;
        assert_eq!(plan_part_size(8 * mib, 8 * mib), 8 * mib);
        assert_eq!(plan_part_size(8 * mib + 1, 8 * mib), 8 * mib);
        assert_eq!(plan_part_size(100_000 * mib, 8 * mib), 10 * mib);
    }

    #[test]
    fn stored_digests_round_trip_and_a_damaged_blob_is_refused() {
        let digests = PartDigests {
            part_size: 10,
            md5s: vec![md5(b"x"), md5(b"y"), md5(b"z")],
        };
        let blob = digests.to_blob();
        assert_eq!(PartDigests::from_blob(10, &blob, 25).unwrap(), digests);
        assert!(PartDigests::from_blob(10, &blob, 35).is_err(), "4 parts");
        assert!(PartDigests::from_blob(10, &blob[..47], 25).is_err());
        assert!(PartDigests::from_blob(0, &blob, 25).is_err());
    }
}
