//! Where a restore may write, and what it may never clear.
//!
//! A directory restore goes only under the operator's restore roots
//! (`serve --restore-root`, default `<data-dir>/restores`). A relative target
//! is resolved under the caller's own folder `<first root>/<account-id>/`; an
//! absolute one must lie strictly inside a root (the admin account) or inside
//! the caller's folder of a root (every other account), judged on the real
//! path: symlinks and `..` resolved through the deepest existing ancestor.
//!
//! Whatever the caller, a restore never clears (with `force`) a directory
//! that holds a running or not cleanly stopped PostgreSQL cluster, Stowage's
//! own data directory, its repository or a parent of either, or a system
//! folder. The checks run when the request arrives (a clear 4xx) and again in
//! the worker right before anything is removed.

use crate::{ErrorKind, ServiceError, ServiceResult};
use std::path::{Component, Path, PathBuf};

#[derive(Debug, Clone)]
pub struct RestoreRoots {
    /// Canonical restore roots, the first one for relative targets.
    roots: Vec<PathBuf>,
    /// Canonical data directory: neither it nor a parent may be a target.
    data_dir: PathBuf,
    /// Canonical local repository folder: not it, a parent or anything inside.
    repository: Option<PathBuf>,
}

/// Who asks: the account whose folder relative targets go to, and whether
/// it may write anywhere inside the roots.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: String,
    pub admin: bool,
}

/// Top-level folders whose direct children are system folders too.
const SYSTEM_PARENTS: &[&str] = &["/usr", "/var", "/home", "/etc", "/boot", "/opt"];
/// Deeper system folders (a restore may go inside them, never replace them).
const SYSTEM_DIRS: &[&str] = &["/var/lib/postgresql", "/var/lib/mysql"];

impl RestoreRoots {
    /// Creates missing roots (mode 0711) and resolves all paths.
    pub fn new(
        roots: &[PathBuf],
        data_dir: &Path,
        repository: Option<&Path>,
    ) -> ServiceResult<RestoreRoots> {
        let canon = |p: &Path| {
            std::fs::canonicalize(p)
                .map_err(|e| ServiceError::internal(format!("{}: {e}", p.display())))
        };
        let mut out = Vec::new();
        for r in roots {
            if !r.is_absolute() {
                return Err(ServiceError::invalid(format!(
                    "restore root {}: must be an absolute path",
                    r.display()
                )));
            }
            {
                use std::os::unix::fs::DirBuilderExt;
                // The operator's own path: a symlinked root is fine.
                std::fs::DirBuilder::new()
                    .recursive(true)
                    .mode(0o711)
                    .create(r)
                    .map_err(|e| ServiceError::internal(format!("{}: {e}", r.display())))?;
            }
            let c = canon(r)?;
            if depth(&c) < 1 {
                return Err(ServiceError::invalid("restore root: not /"));
            }
            out.push(c);
        }
        if out.is_empty() {
            return Err(ServiceError::invalid("at least one restore root is needed"));
        }
        Ok(RestoreRoots {
            roots: out,
            data_dir: canon(data_dir)?,
            repository: repository.map(canon).transpose()?,
        })
    }

    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// The folders a caller may restore into, for error messages.
    fn allowed(&self, c: &Caller) -> Vec<PathBuf> {
        if c.admin {
            self.roots.clone()
        } else {
            self.roots.iter().map(|r| r.join(&c.account_id)).collect()
        }
    }

    fn allowed_text(&self, c: &Caller) -> String {
        self.allowed(c)
            .iter()
            .map(|p| format!("{}/", p.display()))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The real path a requested target means for this caller, checked
    /// against the roots and the protected folders. Nothing is created.
    pub fn resolve(&self, caller: &Caller, target: &str) -> ServiceResult<PathBuf> {
        if target.is_empty() || target.contains('\0') || target.len() > 4096 {
            return Err(ServiceError::invalid(
                "target: a folder name relative to your restore folder, or an absolute path inside a restore root",
            ));
        }
        let p = Path::new(target);
        if p.components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            return Err(ServiceError::invalid("target: no '.' or '..' components"));
        }
        let candidate = if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.roots[0].join(&caller.account_id).join(p)
        };
        let real = real_path(&candidate)?;
        self.check_real(caller, &real)?;
        Ok(real)
    }

    /// Checks a directory a restore is about to write to: inside what the
    /// caller may use (after resolving symlinks again), and not protected.
    pub fn check_dir(&self, caller: &Caller, dir: &Path) -> ServiceResult<()> {
        self.check_real(caller, &real_path(dir)?)
    }

    /// [`RestoreRoots::check_dir`] of a path already resolved.
    fn check_real(&self, caller: &Caller, real: &Path) -> ServiceResult<()> {
        let real = real.to_path_buf();
        if let Some(r) = self.roots.iter().find(|r| r.starts_with(&real)) {
            return Err(ServiceError::new(
                ErrorKind::UnsafeTarget,
                format!(
                    "refusing to restore into {}: it is a restore root ({}) or a parent of one; \
                     restore into a folder inside it",
                    real.display(),
                    r.display()
                ),
            ));
        }
        if !self
            .allowed(caller)
            .iter()
            .any(|a| strictly_inside(&real, a))
        {
            return Err(ServiceError::new(
                ErrorKind::TargetNotAllowed,
                format!(
                    "restore target {} is outside the folders this account may restore into: {} \
                     (a relative target goes into your own folder; the operator sets the roots with `serve --restore-root`)",
                    real.display(),
                    self.allowed_text(caller)
                ),
            ));
        }
        self.check_protected(&real)
    }

    fn check_protected(&self, real: &Path) -> ServiceResult<()> {
        let unsafe_target = |why: String| {
            Err(ServiceError::new(
                ErrorKind::UnsafeTarget,
                format!("refusing to restore into {}: {why}", real.display()),
            ))
        };
        if is_system_dir(real) {
            return unsafe_target("it is a system folder".into());
        }
        if self.data_dir.starts_with(real) {
            return unsafe_target(format!(
                "it is Stowage's data directory ({}) or a parent of it",
                self.data_dir.display()
            ));
        }
        if let Some(r) = &self.repository
            && (r.starts_with(real) || real.starts_with(r))
        {
            return unsafe_target(format!(
                "it is Stowage's repository ({}), inside it or a parent of it",
                r.display()
            ));
        }
        Ok(())
    }
}

/// Checks that nothing under `dir` (a folder [`RestoreRoots::check_dir`]
/// accepted) may not be removed: a PostgreSQL cluster that is running or
/// was not shut down cleanly (a restored, never started data directory is
/// fine: it still has its `backup_label`). Symlinks are not followed.
pub fn check_clearable(dir: &Path) -> ServiceResult<()> {
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Some(why) = live_cluster(&d) {
            return Err(ServiceError::new(
                ErrorKind::UnsafeTarget,
                format!(
                    "refusing to clear {}: {} holds {why}; stop it, or choose another target",
                    dir.display(),
                    d.display()
                ),
            ));
        }
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => {
                return Err(ServiceError::new(
                    ErrorKind::UnsafeTarget,
                    format!("cannot inspect {} before clearing it: {e}", d.display()),
                ));
            }
        };
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push(e.path());
            }
        }
    }
    Ok(())
}

/// Creates `dir` and its missing parents with mode 0711 (others may pass
/// through to a restored data directory owned by the database user, not
/// list them), never through a symlink: each missing component is made with `mkdir` (which does not
/// follow a link at its own name) and must then be a real directory.
pub fn create_private_dirs(dir: &Path) -> ServiceResult<()> {
    use std::os::unix::fs::DirBuilderExt;
    let mut missing = Vec::new();
    let mut p = dir;
    while std::fs::symlink_metadata(p).is_err() {
        missing.push(p.to_path_buf());
        match p.parent() {
            Some(parent) => p = parent,
            None => break,
        }
    }
    for m in missing.iter().rev() {
        match std::fs::DirBuilder::new().mode(0o711).create(m) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(ServiceError::new(
                    ErrorKind::InvalidState,
                    format!("cannot create {}: {e}", m.display()),
                ));
            }
        }
        let md = std::fs::symlink_metadata(m).map_err(|_| not_a_dir(m))?;
        if !md.is_dir() {
            return Err(not_a_dir(m));
        }
    }
    match std::fs::symlink_metadata(dir) {
        Ok(md) if md.is_dir() => Ok(()),
        _ => Err(not_a_dir(dir)),
    }
}

fn not_a_dir(p: &Path) -> ServiceError {
    ServiceError::new(
        ErrorKind::UnsafeTarget,
        format!("{} is not a directory (a symlink or a file?)", p.display()),
    )
}

/// The real path of `p`: its deepest existing ancestor with every symlink
/// resolved, then the components that do not exist yet.
pub fn real_path(p: &Path) -> ServiceResult<PathBuf> {
    let mut existing = p.to_path_buf();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(&existing) {
            Ok(c) => {
                let mut out = c;
                for r in rest.iter().rev() {
                    out.push(r);
                }
                return Ok(out);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(name) = existing.file_name().map(|n| n.to_os_string()) else {
                    return Err(ServiceError::invalid(format!("{}: {e}", p.display())));
                };
                rest.push(name);
                if !existing.pop() {
                    return Err(ServiceError::invalid(format!("{}: {e}", p.display())));
                }
            }
            Err(e) => {
                return Err(ServiceError::new(
                    ErrorKind::InvalidState,
                    format!("cannot resolve {}: {e}", p.display()),
                ));
            }
        }
    }
}

fn depth(p: &Path) -> usize {
    p.components()
        .filter(|c| matches!(c, Component::Normal(_)))
        .count()
}

fn strictly_inside(p: &Path, base: &Path) -> bool {
    p != base && p.starts_with(base)
}

fn is_system_dir(p: &Path) -> bool {
    let d = depth(p);
    d <= 1
        || (d == 2 && SYSTEM_PARENTS.iter().any(|s| p.starts_with(s)))
        || SYSTEM_DIRS.iter().any(|s| Path::new(s) == p)
}

/// Why `dir` holds a PostgreSQL cluster that must not be removed, if it does.
fn live_cluster(dir: &Path) -> Option<String> {
    if let Ok(text) = std::fs::read_to_string(dir.join("postmaster.pid"))
        && let Some(pid) = text
            .lines()
            .next()
            .and_then(|l| l.trim().parse::<u32>().ok())
        && pid > 0
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        return Some(format!(
            "a running PostgreSQL server (postmaster PID {pid})"
        ));
    }
    let control = std::fs::read(dir.join("global/pg_control")).ok()?;
    // ControlFileData: system_identifier u64, pg_control_version u32,
    // catalog_version_no u32, then `state` (DBState) at byte 16.
    let state = u32::from_ne_bytes(control.get(16..20)?.try_into().ok()?);
    const SHUT_DOWN: u32 = 1;
    const SHUT_DOWN_IN_RECOVERY: u32 = 2;
    if state == SHUT_DOWN || state == SHUT_DOWN_IN_RECOVERY {
        return None;
    }
    // A base backup restored but never started still has its backup_label.
    if dir.join("backup_label").exists() {
        return None;
    }
    Some("a PostgreSQL cluster that was not shut down cleanly (running, or crashed)".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, RestoreRoots) {
        let t = tempfile::tempdir().unwrap();
        let dd = t.path().join("data");
        std::fs::create_dir_all(dd.join("repository")).unwrap();
        let roots = RestoreRoots::new(
            &[t.path().join("restores")],
            &dd,
            Some(&dd.join("repository")),
        )
        .unwrap();
        (t, roots)
    }

    fn tenant() -> Caller {
        Caller {
            account_id: "acc-team-b".into(),
            admin: false,
        }
    }

    fn admin() -> Caller {
        Caller {
            account_id: "acc-default".into(),
            admin: true,
        }
    }

    #[test]
    fn relative_targets_go_to_the_account_folder() {
        let (_t, r) = setup();
        let p = r.resolve(&tenant(), "pg/restored").unwrap();
        assert_eq!(p, r.roots()[0].join("acc-team-b/pg/restored"));
        assert!(r.resolve(&tenant(), "a/../../x").is_err());
        assert!(r.resolve(&tenant(), "./x").is_err());
        assert!(r.resolve(&tenant(), "").is_err());
    }

    #[test]
    fn tenants_stay_in_their_folder_admins_in_the_roots() {
        let (t, r) = setup();
        let outside = t.path().join("elsewhere");
        let e = r.resolve(&tenant(), outside.to_str().unwrap()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::TargetNotAllowed);
        assert!(e.message.contains("acc-team-b/"), "{}", e.message);
        let other = r.roots()[0].join("acc-other/x");
        assert_eq!(
            r.resolve(&tenant(), other.to_str().unwrap())
                .unwrap_err()
                .kind,
            ErrorKind::TargetNotAllowed
        );
        assert_eq!(r.resolve(&admin(), other.to_str().unwrap()).unwrap(), other);
        assert_eq!(
            r.resolve(&admin(), outside.to_str().unwrap())
                .unwrap_err()
                .kind,
            ErrorKind::TargetNotAllowed
        );
        // The root itself, or the account folder itself, is not a target.
        assert!(r.resolve(&admin(), r.roots()[0].to_str().unwrap()).is_err());
    }

    #[test]
    fn symlinks_are_judged_by_where_they_lead() {
        let (t, r) = setup();
        let acct = r.roots()[0].join("acc-team-b");
        create_private_dirs(&acct).unwrap();
        let victim = t.path().join("victim");
        std::fs::create_dir_all(&victim).unwrap();
        std::os::unix::fs::symlink(&victim, acct.join("link")).unwrap();
        let e = r.resolve(&tenant(), "link/x").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TargetNotAllowed);
        let e = r.resolve(&tenant(), "link").unwrap_err();
        assert_eq!(e.kind, ErrorKind::TargetNotAllowed);
        // A symlink where a folder is to be created is refused.
        create_private_dirs(&acct.join("new/sub")).unwrap();
        assert!(create_private_dirs(&acct.join("link")).is_err());
    }

    #[test]
    fn protected_folders_are_never_targets() {
        let t = tempfile::tempdir().unwrap();
        let dd = t.path().join("data");
        std::fs::create_dir_all(dd.join("repository")).unwrap();
        // An operator who made the data dir's parent a restore root.
        let r = RestoreRoots::new(&[t.path().to_path_buf()], &dd, Some(&dd.join("repository")))
            .unwrap();
        for p in [
            dd.clone(),
            dd.join("repository"),
            dd.join("repository/data"),
        ] {
            let e = r.resolve(&admin(), p.to_str().unwrap()).unwrap_err();
            assert_eq!(e.kind, ErrorKind::UnsafeTarget, "{}", p.display());
        }
        // A sibling folder of the data dir is fine.
        r.resolve(&admin(), t.path().join("x").to_str().unwrap())
            .unwrap();
        for s in [
            "/",
            "/etc",
            "/usr/lib",
            "/home/alice",
            "/var/lib/postgresql",
        ] {
            assert!(is_system_dir(Path::new(s)), "{s}");
        }
        assert!(!is_system_dir(Path::new("/srv/restores/x")));
    }

    #[test]
    fn live_and_crashed_clusters_are_not_cleared() {
        let (_t, r) = setup();
        let dir = r.roots()[0].join("acc-default/pg");
        std::fs::create_dir_all(dir.join("sub/global")).unwrap();
        let me = std::process::id();
        std::fs::write(dir.join("sub/postmaster.pid"), format!("{me}\n/x\n")).unwrap();
        let e = check_clearable(&dir).unwrap_err();
        assert_eq!(e.kind, ErrorKind::UnsafeTarget);
        assert!(e.message.contains(&me.to_string()), "{}", e.message);
        std::fs::remove_file(dir.join("sub/postmaster.pid")).unwrap();
        let mut control = vec![0u8; 64];
        control[16..20].copy_from_slice(&6u32.to_ne_bytes()); // in production
        std::fs::write(dir.join("sub/global/pg_control"), &control).unwrap();
        assert!(check_clearable(&dir).is_err());
        std::fs::write(dir.join("sub/backup_label"), "START WAL LOCATION").unwrap();
        check_clearable(&dir).unwrap();
        std::fs::remove_file(dir.join("sub/backup_label")).unwrap();
        control[16..20].copy_from_slice(&1u32.to_ne_bytes()); // shut down
        std::fs::write(dir.join("sub/global/pg_control"), &control).unwrap();
        check_clearable(&dir).unwrap();
    }
}
