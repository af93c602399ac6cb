//! A MySQL set's dump as one SQL file, read straight from the repository:
//! what `mariadb < dump.sql` (or `mysql < dump.sql`) restores into an empty
//! server. The order is the restore's: databases, tables and their rows,
//! then views, then routines, triggers and events in their own `sql_mode`
//! (so no trigger fires on the rows).

use super::dump::OpenedDump;
use super::sql;
use super::{ARCHIVE, err};
use crate::export::ExportInfo;
use crate::{EngineError, ErrorKind};
use std::io::{Read, Write};
use std::sync::Arc;
use stowage_core::manifest::Manifest;
use stowage_repo::Repository;

struct Counting<'a> {
    out: &'a mut dyn Write,
    n: u64,
}

impl Counting<'_> {
    fn put(&mut self, b: &[u8]) -> Result<(), EngineError> {
        self.out.write_all(b).map_err(crate::export::io)?;
        self.n += b.len() as u64;
        Ok(())
    }
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
    let d = OpenedDump::open(repo, m)?;
    let index = &d.index;
    let logged = super::binlog::open_index(&d)?;
    let point = match &logged {
        Some(l) => l.end.point(),
        None => index.point.clone(),
    };
    let file = |p: &str| d.file(p);
    let mut w = Counting { out, n: 0 };
    let mut files = 0u64;
    w.put(
        format!(
            "/*M!999999\\- enable the sandbox mode */\n\
             -- Stowage dump of {} ({}), consistent at {}\n\
             -- Restore into a server without these databases: mariadb < dump.sql (or mysql < dump.sql)\n",
            sql::comment_text(&index.server_version),
            match index.flavor {
                super::Flavor::MariaDb => "MariaDB",
                super::Flavor::MySql => "MySQL",
            },
            sql::comment_text(&point.to_string())
        )
        .as_bytes(),
    )?;
    for s in sql::SESSION.iter().chain(sql::LOAD_SESSION) {
        w.put(format!("{s};\n").as_bytes())?;
    }
    // Names come from a set whose backup refused control characters; checked
    // again, since a newline would end a client command (`USE`) early.
    for n in index
        .databases
        .iter()
        .map(|x| x.name.as_str())
        .chain(index.tables.iter().map(|t| t.db.as_str()))
        .chain(index.objects.iter().map(|o| o.db.as_str()))
    {
        sql::check_name("database", n).map_err(|m| err(ErrorKind::Unsupported, m))?;
    }
    for db in &index.databases {
        let create = d.statement(&db.file)?;
        let create = String::from_utf8_lossy(&create);
        let create = match create.strip_prefix("CREATE DATABASE ") {
            Some(rest) => format!("CREATE DATABASE IF NOT EXISTS {rest}"),
            None => create.into_owned(),
        };
        w.put(format!("\n{create};\nUSE {};\n", sql::ident(&db.name)).as_bytes())?;
        for q in index
            .tables
            .iter()
            .filter(|t| t.kind == "sequence" && t.db == db.name)
        {
            w.put(b"\n")?;
            w.put(&d.statement(&q.schema)?)?;
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
            .filter(|t| t.kind == "table" && t.db == db.name)
        {
            w.put(b"\n")?;
            w.put(&d.statement(&t.schema)?)?;
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
    // Views after every table, each after the views it uses.
    let mut views = Vec::new();
    for v in index.tables.iter().filter(|t| t.kind == "view") {
        views.push((
            v.db.as_str(),
            v.name.as_str(),
            String::from_utf8_lossy(&d.statement(&v.schema)?).into_owned(),
        ));
    }
    for (db, _, create) in sql::order_views(views) {
        w.put(format!("\nUSE {};\n", sql::ident(db)).as_bytes())?;
        w.put(create.as_bytes())?;
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
        w.put(&d.statement(&o.file)?)?;
        w.put(b";;\nDELIMITER ;\n")?;
        files += 1;
    }
    if let Some(l) = &logged {
        super::binlog::export(repo, &d, l, &mut |b| w.put(b))?;
        files += l.segments.len() as u64;
    }
    w.put(b"\n-- end of dump\n")?;
    w.out.flush().map_err(crate::export::io)?;
    Ok(ExportInfo { bytes: w.n, files })
}
