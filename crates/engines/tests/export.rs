//! A part of a set exports as a tar a standard tool reads: folders, files
//! streamed from the repository, symlinks, and the pax headers that long
//! names and links need (PostgreSQL data directories have both).

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::Arc;
use stowage_core::manifest::FileKind;
use stowage_engines::export::export_tar;
use stowage_repo::writer::FileMeta;
use stowage_repo::{ChunkerParams, KdfParams, LocalStorage, Repository, Storage};

fn meta(path: &str, kind: FileKind, link: Option<&str>) -> FileMeta {
    FileMeta {
        path: path.into(),
        kind,
        mode: if kind == FileKind::Dir { 0o700 } else { 0o600 },
        uid: 0,
        gid: 0,
        mtime: 1_700_000_000,
        link_target: link.map(str::to_string),
    }
}

#[test]
fn a_part_exports_as_a_tar_python_reads() {
    let d = tempfile::tempdir().unwrap();
    let s: Arc<dyn Storage> = Arc::new(LocalStorage::new(d.path()).unwrap());
    let r = Arc::new(
        Repository::init(
            s,
            "pw",
            ChunkerParams::default(),
            KdfParams::insecure_fast(),
        )
        .unwrap(),
    );
    let long_dir = format!("base/{}", "d".repeat(120));
    let long_file = format!("{long_dir}/{}", "f".repeat(60));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let mut w = r.start_backup(2).unwrap();
    w.add_entry(meta("base", FileKind::Dir, None)).unwrap();
    w.begin_file(meta("base/PG_VERSION", FileKind::File, None))
        .unwrap();
    w.write(b"16\n").unwrap();
    w.end_file().unwrap();
    w.add_entry(meta(&long_dir, FileKind::Dir, None)).unwrap();
    w.begin_file(meta(&long_file, FileKind::File, None))
        .unwrap();
    w.write(&big).unwrap();
    w.end_file().unwrap();
    w.add_entry(meta("base/empty", FileKind::File, None))
        .unwrap();
    let target = format!("/srv/{}", "t".repeat(150));
    w.add_entry(meta("base/link", FileKind::Symlink, Some(&target)))
        .unwrap();
    let (_, m) = w.finish(BTreeMap::new(), serde_json::Value::Null).unwrap();

    let mut out = Vec::new();
    let info = export_tar(&r, &m, &m.archives[0].name, &mut out).unwrap();
    assert_eq!(info.bytes, out.len() as u64);
    let file = d.path().join("part.tar");
    std::fs::write(&file, &out).unwrap();
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import tarfile, hashlib\n\
             for x in tarfile.open({:?}).getmembers():\n    \
                 print(x.name, x.type.decode(), x.size, oct(x.mode), x.linkname)",
            file.to_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let listed = String::from_utf8(o.stdout).unwrap();
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(
        lines,
        vec![
            "base 5 0 0o700 ".to_string(),
            "base/PG_VERSION 0 3 0o600 ".to_string(),
            format!("{long_dir} 5 0 0o700 "),
            format!("{long_file} 0 {} 0o600 ", big.len()),
            "base/empty 0 0 0o600 ".to_string(),
            format!("base/link 2 0 0o600 {target}"),
        ],
        "{listed}"
    );
    // The big file's bytes come back.
    let o = Command::new("python3")
        .arg("-c")
        .arg(format!(
            "import tarfile, sys\n\
             t = tarfile.open({:?})\n\
             sys.stdout.buffer.write(t.extractfile({long_file:?}).read())",
            file.to_str().unwrap()
        ))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stdout == big, "content differs");
}
