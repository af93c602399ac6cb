//! A MySQL set's dump as one SQL file, read straight from the repository:
//! what `mariadb < dump.sql` (or `mysql < dump.sql`) restores into an empty
//! server. The order is the restore's: databases, tables and their rows,
//! then views, then routines, triggers and events in their own `sql_mode`
//! (so no trigger fires on the rows).

use super::dump::{DumpIndex, INDEX_FILE};
use super::sql;
use super::{ARCHIVE, err};
use crate::export::ExportInfo;
use crate::{EngineError, ErrorKind};
use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::sync::Arc;
use stowage_core::manifest::{FileEntry, Manifest};
use stowage_repo::Repository;

struct Counting<'a> {
    out: &'a mut dyn Write,
    n: u64,
}

impl Counting<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), EngineError> {
        self.out.write_all(b).map_err(io)?;
        self.n += b.len() as u64;
        Ok(())
    }
}

fn io(e: std::io::Error) -> EngineError {
    let kind = if crate::io_is_transient(&e) {
        ErrorKind::Busy
    } else {
        ErrorKind::Filesystem
    };
    EngineError::new(kind, format!("export stream: {e}"))
}

fn read_all(repo: &Arc<Repository>, f: &FileEntry) -> Result<Vec<u8>, EngineError> {
    let mut v = Vec::new();
    repo.file_reader(f)
        .read_to_end(&mut v)
        .map_err(|e| err(ErrorKind::Repository, format!("{}: {e}", f.path)))?;
    Ok(v)
}

/// A statement as stored, without its trailing `;` and newlines.
fn statement(repo: &Arc<Repository>, f: &FileEntry) -> Result<Vec<u8>, EngineError> {
    let mut v = read_all(repo, f)?;
    while matches!(v.last(), Some(b'\n' | b';' | b'\r')) {
        v.pop();
    }
    Ok(v)
}

/// Writes the set's dump as one SQL script.
pub fn export_sql(
    repo: &Arc<Repository>,
    m: &Manifest,
    part: &str,
    out: &mut dyn Write,
) -> Result<ExportInfo, EngineError> {
    if part != ARCHIVE {
        return Err(err(
            ErrorKind::Unsupported,
            format!("a MySQL set has one part, {ARCHIVE} (not {part:?})"),
        ));
    }
    let a = m
        .archives
        .iter()
        .find(|a| a.name == ARCHIVE)
        .ok_or_else(|| err(ErrorKind::Unsupported, "this set holds no MySQL dump"))?;
    let by_path: BTreeMap<&str, &FileEntry> =
        a.files.iter().map(|f| (f.path.as_str(), f)).collect();
    let file = |p: &str| -> Result<&FileEntry, EngineError> {
        by_path.get(p).copied().ok_or_else(|| {
            err(
                ErrorKind::Repository,
                format!("the set lacks {p}, which its dump index names"),
            )
        })
    };
    let index: DumpIndex = serde_json::from_slice(&read_all(repo, file(INDEX_FILE)?)?)
        .map_err(|e| err(ErrorKind::Protocol, format!("{INDEX_FILE}: {e}")))?;
    let mut w = Counting { out, n: 0 };
    let mut files = 0u64;
    w.put(
        format!(
            "-- Stowage dump of {} ({}), consistent at {}\n\
             -- Restore into a server without these databases: mariadb < dump.sql (or mysql < dump.sql)\n",
            index.server_version,
            match index.flavor {
                super::Flavor::MariaDb => "MariaDB",
                super::Flavor::MySql => "MySQL",
            },
            index.point
        )
        .as_bytes(),
    )?;
    for s in sql::SESSION.iter().chain(sql::LOAD_SESSION) {
        w.put(format!("{s};\n").as_bytes())?;
    }
    for d in &index.databases {
        let create = statement(repo, file(&d.file)?)?;
        let create = String::from_utf8_lossy(&create);
        let create = match create.strip_prefix("CREATE DATABASE ") {
            Some(rest) => format!("CREATE DATABASE IF NOT EXISTS {rest}"),
            None => create.into_owned(),
        };
        w.put(format!("\n{create};\nUSE {};\n", sql::ident(&d.name)).as_bytes())?;
        for q in index
            .tables
            .iter()
            .filter(|t| t.kind == "sequence" && t.db == d.name)
        {
            w.put(b"\n")?;
            w.put(&statement(repo, file(&q.schema)?)?)?;
            w.put(b";\n")?;
            if let Some(v) = q
                .next_value
                .as_deref()
                .filter(|v| v.parse::<i128>().is_ok())
            {
                w.put(format!("DO SETVAL({}, {v}, 0);\n", sql::ident(&q.name)).as_bytes())?;
            }
            files += 1;
        }
        for t in index
            .tables
            .iter()
            .filter(|t| t.kind == "table" && t.db == d.name)
        {
            w.put(b"\n")?;
            w.put(&statement(repo, file(&t.schema)?)?)?;
            w.put(b";\n")?;
            files += 1;
            for f in &t.files {
                let f = file(f)?;
                let mut r = repo.file_reader(f);
                let mut buf = vec![0u8; 1 << 18];
                loop {
                    let n = r
                        .read(&mut buf)
                        .map_err(|e| err(ErrorKind::Repository, format!("{}: {e}", f.path)))?;
                    if n == 0 {
                        break;
                    }
                    w.put(&buf[..n])?;
                }
                files += 1;
            }
        }
    }
    for v in index.tables.iter().filter(|t| t.kind == "view") {
        w.put(format!("\nUSE {};\n", sql::ident(&v.db)).as_bytes())?;
        w.put(&statement(repo, file(&v.schema)?)?)?;
        w.put(b";\n")?;
        files += 1;
    }
    for o in &index.objects {
        w.put(
            format!(
                "\nUSE {};\nSET SESSION sql_mode = {};\nDELIMITER ;;\n",
                sql::ident(&o.db),
                sql::string_literal(&o.sql_mode)
            )
            .as_bytes(),
        )?;
        w.put(&statement(repo, file(&o.file)?)?)?;
        w.put(b";;\nDELIMITER ;\n")?;
        files += 1;
    }
    w.put(b"\n-- end of dump\n")?;
    w.out.flush().map_err(io)?;
    Ok(ExportInfo { bytes: w.n, files })
}
