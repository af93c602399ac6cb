//! Download tasks: one part of a set packaged into a file under
//! `<data-dir>/downloads/<task id>/`, served by an expiring signed link.
//!
//! A link is `/v1/downloads/<task id>/<file>?expires=<unix s>&sig=<hex>`,
//! the signature an HMAC-SHA256 over `<task id>/<file>\n<expires>` with a
//! key derived from the server key (`SecretBox::link_key`; every node of a
//! deployment shares the server key, so any node checks any node's links):
//! no access key travels in it, it names one file, and it stops working at
//! `expires` (the file is deleted once that has passed). Another
//! deployment's link, a changed one or an expired one is refused alike,
//! revealing nothing. The node that packaged the file serves it from disk
//! (with `Content-Length` and `Range`); another node of a shared catalog
//! and repository packages the same part again while it streams, like a
//! set link. Rotating the server key ends every link given out before.
//!
//! A set link, `/v1/downloads/sets/<account>/<set id>/<part>.tar?expires&sig`
//! (HMAC over `sets/<account>/<set id>/<part>.tar\n<expires>`), is made on
//! demand for listings that show a download URL per backup (Alibaba's
//! `DescribeBackups`): nothing is prepared until it is fetched, and then
//! the part is packaged while it streams (no `Content-Length`, no `Range`;
//! a download task's file has both). At most [`STREAMS`] stream at once.

use crate::error::{ServiceError, ServiceResult};
use hmac::{Hmac, KeyInit, Mac};
use sha2::Sha256;
use std::path::{Path, PathBuf};

/// How long a link works by default (the cloud's 7,200 s).
pub const DEFAULT_LINK_SECS: u64 = 7200;
/// The range a link's lifetime may be set in (the cloud's).
pub const LINK_SECS: std::ops::RangeInclusive<u64> = 300..=86_400;

/// How many set links may stream (package while sending) at once.
pub const STREAMS: usize = 4;

pub struct Downloads {
    dir: PathBuf,
    key: [u8; 32],
    link_secs: std::sync::atomic::AtomicU64,
    /// Permits for set links streaming now.
    pub streams: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Downloads {
    /// The folder under `data_dir`; links signed with `key`.
    pub fn open(data_dir: &Path, key: [u8; 32]) -> ServiceResult<Downloads> {
        let dir = data_dir.join("downloads");
        std::fs::create_dir_all(&dir)
            .map_err(|e| ServiceError::internal(format!("{}: {e}", dir.display())))?;
        Ok(Downloads {
            dir,
            key,
            link_secs: DEFAULT_LINK_SECS.into(),
            streams: std::sync::Arc::new(tokio::sync::Semaphore::new(STREAMS)),
        })
    }

    pub fn link_secs(&self) -> u64 {
        self.link_secs.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets how long links work (300 to 86,400 s).
    pub fn set_link_secs(&self, secs: u64) -> ServiceResult<()> {
        if !LINK_SECS.contains(&secs) {
            return Err(ServiceError::invalid(
                "download link lifetime: 300 to 86400 seconds",
            ));
        }
        self.link_secs
            .store(secs, std::sync::atomic::Ordering::Relaxed);
        Ok(())
    }

    /// The folder of one task's file.
    pub fn task_dir(&self, task: i64) -> PathBuf {
        self.dir.join(task.to_string())
    }

    fn mac(&self, task: i64, file: &str, expires: i64) -> String {
        self.mac_of(&format!("{task}/{file}\n{expires}"))
    }

    fn mac_of(&self, what: &str) -> String {
        let mut m = Hmac::<Sha256>::new_from_slice(&self.key).expect("any key length");
        m.update(what.as_bytes());
        hex::encode(m.finalize().into_bytes())
    }

    /// The on-demand link of one part of a set of `account` (`file`: the
    /// part's export file, `stowage_engines::export_file_name`), valid
    /// until `expires`.
    pub fn set_link(&self, account: &str, set: i64, file: &str, expires: i64) -> String {
        let path = format!("sets/{account}/{set}/{file}");
        let sig = self.mac_of(&format!("{path}\n{expires}"));
        format!("/v1/downloads/{path}?expires={expires}&sig={sig}")
    }

    /// The part a set link names, if the link is this server's and has not
    /// expired at `now_s`.
    pub fn open_set_link(
        &self,
        account: &str,
        set: i64,
        file: &str,
        expires: i64,
        sig: &str,
        now_s: i64,
    ) -> Option<String> {
        let path = format!("sets/{account}/{set}/{file}");
        let same = crate::constant_time_eq(
            self.mac_of(&format!("{path}\n{expires}")).as_bytes(),
            sig.as_bytes(),
        );
        if !same || now_s > expires || !valid_file_name(file) {
            return None;
        }
        part_of(file).map(str::to_string)
    }

    /// The link's path and query for a task's file, valid until `expires`.
    pub fn link(&self, task: i64, file: &str, expires: i64) -> String {
        format!(
            "/v1/downloads/{task}/{file}?expires={expires}&sig={}",
            self.mac(task, file, expires,)
        )
    }

    /// Whether a task's link is this deployment's, unchanged, and has not
    /// expired at `now_s`.
    pub fn link_ok(&self, task: i64, file: &str, expires: i64, sig: &str, now_s: i64) -> bool {
        let same =
            crate::constant_time_eq(self.mac(task, file, expires).as_bytes(), sig.as_bytes());
        same && now_s <= expires && valid_file_name(file)
    }

    /// The file a valid link names, if this node packaged it and it is
    /// still there.
    pub fn local_file(&self, task: i64, file: &str) -> Option<PathBuf> {
        let p = self.task_dir(task).join(file);
        (valid_file_name(file) && p.is_file()).then_some(p)
    }

    /// Deletes the task folders whose file's link has expired at `now_s`
    /// (a file's link expires `link_secs` after the file was completed;
    /// a folder left without a finished file by a crash goes after the same
    /// time). Returns how many.
    pub fn clean_expired(&self, now_s: i64) -> usize {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return 0;
        };
        let mut n = 0;
        for e in entries.flatten() {
            let p = e.path();
            if e.file_name()
                .to_str()
                .is_none_or(|n| n.parse::<i64>().is_err())
            {
                continue;
            }
            let newest = std::fs::read_dir(&p)
                .into_iter()
                .flatten()
                .flatten()
                .filter_map(|f| f.metadata().ok()?.modified().ok())
                .max()
                .or_else(|| e.metadata().ok()?.modified().ok());
            let Some(t) = newest else { continue };
            let secs = t
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64);
            // One second's grace: the link counts from when the task was
            // recorded finished, just after the file was completed.
            if secs + self.link_secs() as i64 + 1 < now_s && std::fs::remove_dir_all(&p).is_ok() {
                n += 1;
            }
        }
        n
    }
}

/// A part name a set link can carry as is (no encoding needed).
pub fn linkable_part(p: &str) -> bool {
    !p.is_empty()
        && p.len() <= 128
        && !p.starts_with('.')
        && p.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// The part a download's file is of (its name without the extension).
pub fn part_of(file: &str) -> Option<&str> {
    let (part, ext) = file.rsplit_once('.')?;
    stowage_engines::EXPORT_TYPES
        .iter()
        .any(|(e, _)| *e == ext)
        .then_some(part)
}

/// The media type of a download's file.
pub fn content_type(file: &str) -> &'static str {
    let ext = file.rsplit_once('.').map_or("", |(_, e)| e);
    stowage_engines::EXPORT_TYPES
        .iter()
        .find(|(e, _)| *e == ext)
        .map_or("application/octet-stream", |(_, t)| t)
}

/// A file name a download may have: a part's name and an export's
/// extension (`.tar`, `.sql`).
pub fn valid_file_name(f: &str) -> bool {
    !f.is_empty()
        && f.len() <= 200
        && part_of(f).is_some_and(|p| !p.is_empty())
        && !f.starts_with('.')
        && f.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.%".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_have_their_part_and_media_type() {
        assert_eq!(part_of("dds-a_0.tar"), Some("dds-a_0"));
        assert_eq!(part_of("dump.sql"), Some("dump"));
        assert_eq!(part_of("dump.part"), None);
        assert_eq!(content_type("base.tar"), "application/x-tar");
        assert_eq!(content_type("dump.sql"), "application/sql");
    }

    #[test]
    fn links_are_refused_when_changed_expired_or_foreign() {
        let d = tempfile::tempdir().unwrap();
        let a = Downloads::open(d.path(), [1; 32]).unwrap();
        std::fs::create_dir_all(a.task_dir(7)).unwrap();
        std::fs::write(a.task_dir(7).join("rs0.tar"), b"x").unwrap();
        let link = a.link(7, "rs0.tar", 1000);
        let sig = link.rsplit_once("sig=").unwrap().1;
        assert!(a.link_ok(7, "rs0.tar", 1000, sig, 999));
        assert!(a.local_file(7, "rs0.tar").is_some() && a.local_file(8, "rs0.tar").is_none());
        assert!(!a.link_ok(7, "rs0.tar", 1000, sig, 1001), "expired");
        assert!(!a.link_ok(7, "rs0.tar", 2000, sig, 999), "expiry changed");
        assert!(!a.link_ok(8, "rs0.tar", 1000, sig, 999), "task changed");
        assert!(!a.link_ok(7, "rs1.tar", 1000, sig, 999), "file changed");
        assert!(!a.link_ok(7, "rs0.tar", 1000, &sig.replace('a', "b"), 999));
        // The same key after a restart matches; another deployment's does not.
        let again = Downloads::open(d.path(), [1; 32]).unwrap();
        assert!(again.link_ok(7, "rs0.tar", 1000, sig, 999));
        let other_dir = tempfile::tempdir().unwrap();
        let other = Downloads::open(other_dir.path(), [2; 32]).unwrap();
        let theirs = other.link(7, "rs0.tar", 1000);
        let their_sig = theirs.rsplit_once("sig=").unwrap().1;
        assert!(!a.link_ok(7, "rs0.tar", 1000, their_sig, 999));
        assert!(
            !valid_file_name("../x.tar")
                && !valid_file_name(".tar")
                && valid_file_name("cmgo-a_0.tar")
                && valid_file_name("dump.sql")
                && !valid_file_name("dump.tar.part")
                && !valid_file_name("dump.exe")
        );
        assert!(a.set_link_secs(60).is_err() && a.set_link_secs(300).is_ok());
        // Set links: bound to the account, the set, the part and the expiry,
        // and never valid as a task link (or the other way round).
        let sl = a.set_link("acme", 7, "rs0.tar", 1000);
        assert!(
            sl.starts_with("/v1/downloads/sets/acme/7/rs0.tar?expires=1000&sig="),
            "{sl}"
        );
        let ssig = sl.rsplit_once("sig=").unwrap().1;
        assert_eq!(
            a.open_set_link("acme", 7, "rs0.tar", 1000, ssig, 999)
                .as_deref(),
            Some("rs0")
        );
        assert!(
            a.open_set_link("acme", 7, "rs0.tar", 1000, ssig, 1001)
                .is_none(),
            "expired"
        );
        assert!(
            a.open_set_link("other", 7, "rs0.tar", 1000, ssig, 999)
                .is_none(),
            "account"
        );
        assert!(
            a.open_set_link("acme", 8, "rs0.tar", 1000, ssig, 999)
                .is_none(),
            "set"
        );
        assert!(
            a.open_set_link("acme", 7, "rs1.tar", 1000, ssig, 999)
                .is_none(),
            "part"
        );
        assert!(!a.link_ok(7, "rs0.tar", 1000, ssig, 999), "not a task link");
        assert!(
            a.open_set_link("acme", 7, "rs0.tar", 1000, sig, 999)
                .is_none(),
            "not a set link"
        );
        assert!(
            other
                .open_set_link("acme", 7, "rs0.tar", 1000, ssig, 999)
                .is_none()
        );
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        assert_eq!(a.clean_expired(now), 0, "a fresh file stays");
        assert_eq!(a.clean_expired(now + 300 + 2), 1);
        assert!(!a.task_dir(7).exists());
    }
}
