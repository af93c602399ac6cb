//! The SQL text of a logical MySQL/MariaDB dump, as pure functions: how a
//! value becomes a literal, how names are quoted and turned into file names,
//! where an `INSERT` statement ends, and what a schema looks like once the
//! parts that change without a DDL (`AUTO_INCREMENT=`) are taken out.
//!
//! Values are written in the session's `binary` character set: a string's
//! bytes go into the dump as the server stored them, whatever the column's
//! character set, and come back unconverted (`SET NAMES binary` on both
//! sides), so every value round-trips bit for bit.

/// How a column's values are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueKind {
    /// Integers, decimals, floating point, years: the server's text, bare.
    Number,
    /// `BIT(n)`: the raw bytes as a hexadecimal literal.
    Bits,
    /// Everything else (strings, binary, dates and times, JSON, spatial,
    /// `ENUM`/`SET`): a quoted, escaped string of the raw bytes.
    Quoted,
    /// MySQL's `JSON` type, which refuses a string in the `binary`
    /// character set: quoted as `Quoted`, marked `_utf8mb4`.
    Json,
}

/// Appends `name` quoted as an identifier (backticks doubled).
pub fn push_ident(out: &mut Vec<u8>, name: &str) {
    out.push(b'`');
    for b in name.bytes() {
        if b == b'`' {
            out.push(b'`');
        }
        out.push(b);
    }
    out.push(b'`');
}

/// Refuses a name a dump cannot carry: a control character (a newline
/// above all) would end a statement, or a `mariadb` client command line, in
/// the middle of the name.
pub fn check_name(what: &str, name: &str) -> Result<(), String> {
    if name.chars().any(char::is_control) {
        return Err(format!(
            "{what} {:?} has a control character in its name, which a dump cannot carry safely; rename it",
            name
        ));
    }
    Ok(())
}

/// Text from the server for a `--` comment line: control characters become
/// `?`, so it can never end the comment.
pub fn comment_text(s: &str) -> String {
    s.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

/// `name` quoted as an identifier.
pub fn ident(name: &str) -> String {
    let mut v = Vec::with_capacity(name.len() + 2);
    push_ident(&mut v, name);
    String::from_utf8(v).expect("quoting keeps UTF-8")
}

/// `db`.`name`.
pub fn qualified(db: &str, name: &str) -> String {
    format!("{}.{}", ident(db), ident(name))
}

/// A string literal of `s` (for statements the dump itself issues).
pub fn string_literal(s: &str) -> String {
    let mut v = Vec::with_capacity(s.len() + 2);
    push_value(&mut v, ValueKind::Quoted, Some(s.as_bytes()));
    String::from_utf8(v).expect("escaping keeps UTF-8")
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Appends one value as a literal: `NULL`, a bare number, `0x…` for bits,
/// or a quoted string with `\0 ' \\ \n \r \Z` escaped (the escapes every
/// MySQL and MariaDB reads when `NO_BACKSLASH_ESCAPES` is off, which the
/// dump's header and the restore's session make sure of).
pub fn push_value(out: &mut Vec<u8>, kind: ValueKind, v: Option<&[u8]>) {
    let Some(v) = v else {
        out.extend_from_slice(b"NULL");
        return;
    };
    match kind {
        ValueKind::Number => out.extend_from_slice(v),
        ValueKind::Bits => {
            if v.is_empty() {
                out.extend_from_slice(b"b''");
                return;
            }
            out.extend_from_slice(b"0x");
            for b in v {
                out.push(HEX[(b >> 4) as usize]);
                out.push(HEX[(b & 15) as usize]);
            }
        }
        ValueKind::Json | ValueKind::Quoted => {
            if kind == ValueKind::Json {
                out.extend_from_slice(b"_utf8mb4");
            }
            out.reserve(v.len() + 2);
            out.push(b'\'');
            let mut start = 0;
            for (i, &b) in v.iter().enumerate() {
                let esc = match b {
                    0 => b'0',
                    b'\'' => b'\'',
                    b'\\' => b'\\',
                    b'\n' => b'n',
                    b'\r' => b'r',
                    0x1a => b'Z',
                    _ => continue,
                };
                out.extend_from_slice(&v[start..i]);
                out.push(b'\\');
                out.push(esc);
                start = i + 1;
            }
            out.extend_from_slice(&v[start..]);
            out.push(b'\'');
        }
    }
}

/// Whether the row whose literal text is `row` ends an `INSERT` statement.
/// Decided by the row's own first bytes (its key, for tables whose key comes
/// first), never by how much came before: a changed or new row moves at
/// most the statement it is in, and the statements after it are the same
/// bytes as in the previous backup, which is what lets rows deduplicate
/// across backups. About one row in `2^bits` ends a statement.
pub fn ends_statement(row: &[u8], bits: u32) -> bool {
    // FNV-1a over at most 64 bytes: cheap, and enough to spread keys.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in &row[..row.len().min(64)] {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h >> 40) & ((1 << bits) - 1) == 0
}

/// A name as it appears in a file name of the dump: letters, digits, `_`,
/// `-` and `$` kept, every other byte `%XX` (so `.` and `/` never appear,
/// and two names never share a file).
pub fn file_name(name: &str) -> String {
    let mut s = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'$') {
            s.push(b as char);
        } else {
            s.push('%');
            s.push(HEX[(b >> 4) as usize].to_ascii_uppercase() as char);
            s.push(HEX[(b & 15) as usize].to_ascii_uppercase() as char);
        }
    }
    s
}

/// A `CREATE TABLE` without what changes as rows come and go
/// (` AUTO_INCREMENT=n`), to tell a DDL from ordinary writes.
pub fn schema_shape(create: &str) -> String {
    let mut out = String::with_capacity(create.len());
    let mut rest = create;
    while let Some(i) = rest.find(" AUTO_INCREMENT=") {
        out.push_str(&rest[..i]);
        let tail = &rest[i + " AUTO_INCREMENT=".len()..];
        let digits = tail.bytes().take_while(u8::is_ascii_digit).count();
        rest = &tail[digits..];
    }
    out.push_str(rest);
    out
}

/// A `CREATE TABLE` (as `SHOW CREATE TABLE` writes it, one definition per
/// line) split into the table without its plain secondary indexes and the
/// `ALTER TABLE` that adds them back, for loading the rows first and
/// building the indexes once, sorted. `None` when nothing is to defer, or
/// when the table has foreign keys (InnoDB wants their indexes as the rows
/// arrive). Unique, full-text and spatial indexes stay where they are.
pub fn defer_secondary_indexes(create: &str, table: &str) -> Option<(String, String)> {
    if create.contains("FOREIGN KEY") {
        return None;
    }
    let lines: Vec<&str> = create.lines().collect();
    // InnoDB wants an index that starts with the AUTO_INCREMENT column.
    let auto: Option<String> = lines
        .iter()
        .find(|l| l.starts_with("  `") && l.contains(" AUTO_INCREMENT"))
        .and_then(|l| l[2..].split("` ").next())
        .map(|n| format!("{n}`"));
    let is_key = |l: &str| {
        l.starts_with("  KEY `")
            && !auto.as_deref().is_some_and(|a| {
                l.split_once(" (").is_some_and(|(_, cols)| {
                    cols.starts_with(a) && cols[a.len()..].starts_with([',', '(', ')'])
                })
            })
    };
    let keys: Vec<&str> = lines.iter().copied().filter(|l| is_key(l)).collect();
    if keys.is_empty() {
        return None;
    }
    let kept: Vec<&str> = lines.iter().copied().filter(|l| !is_key(l)).collect();
    // The definition before the closing line must not end with a comma.
    let mut out: Vec<String> = kept.iter().map(|l| l.to_string()).collect();
    if let Some(close) = out.iter().position(|l| l.starts_with(')')) {
        if close > 0 {
            let prev = &mut out[close - 1];
            if prev.ends_with(',') {
                prev.pop();
            }
        }
    } else {
        return None;
    }
    let adds: Vec<String> = keys
        .iter()
        .map(|k| format!("ADD {}", k.trim().trim_end_matches(',')))
        .collect();
    Some((
        out.join("\n"),
        format!("ALTER TABLE {} {}", ident(table), adds.join(", ")),
    ))
}

/// Rewrites the database names a view, trigger, routine or event body
/// qualifies its objects with (`` `old`.`` → `` `new`.``), for a restore
/// into renamed databases. Only backquoted, qualified names are rewritten,
/// which is how the server itself writes them in `SHOW CREATE`.
pub fn rename_databases(sql: &str, rename: &std::collections::BTreeMap<String, String>) -> String {
    if rename.is_empty() {
        return sql.to_string();
    }
    let mut out = String::with_capacity(sql.len());
    let b = sql.as_bytes();
    let mut i = 0;
    let mut copied = 0;
    while i < b.len() {
        if b[i] == b'`' {
            // Read one quoted identifier.
            let mut j = i + 1;
            let mut name = Vec::new();
            while j < b.len() {
                if b[j] == b'`' {
                    if j + 1 < b.len() && b[j + 1] == b'`' {
                        name.push(b'`');
                        j += 2;
                        continue;
                    }
                    break;
                }
                name.push(b[j]);
                j += 1;
            }
            let end = (j + 1).min(b.len());
            if end < b.len()
                && b[end] == b'.'
                && let Some(new) = std::str::from_utf8(&name).ok().and_then(|n| rename.get(n))
            {
                out.push_str(&sql[copied..i]);
                out.push_str(&ident(new));
                copied = end;
            }
            i = end;
        } else if let Some(end) = comment_end(b, i) {
            // Comments are left as they are.
            i = end;
        } else if b[i] == b'\'' || b[i] == b'"' {
            // Skip string literals: a name inside one is data.
            let q = b[i];
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                if b[j] == b'\\' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    if copied < sql.len() {
        out.push_str(&sql[copied.min(sql.len())..]);
    }
    out
}

/// Where a comment starting at `i` ends (`-- `, `#` to the end of the
/// line; `/* … */`), if one starts there.
fn comment_end(b: &[u8], i: usize) -> Option<usize> {
    let rest = &b[i..];
    if rest.starts_with(b"-- ") || rest.starts_with(b"--\t") || rest.starts_with(b"#") {
        return Some(
            rest.iter()
                .position(|&c| c == b'\n')
                .map_or(b.len(), |p| i + p + 1),
        );
    }
    if rest.starts_with(b"/*") {
        return Some(
            rest.windows(2)
                .skip(2)
                .position(|w| w == b"*/")
                .map_or(b.len(), |p| i + 2 + p + 2),
        );
    }
    None
}

/// Whether `sql` names database `db` without backquotes (`db.t`), outside
/// strings and comments: a reference [`rename_databases`] cannot follow.
pub fn names_database_unquoted(sql: &str, db: &str) -> bool {
    let b = sql.as_bytes();
    let d = db.as_bytes();
    let ident_byte = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
    let mut i = 0;
    while i < b.len() {
        if let Some(end) = comment_end(b, i) {
            i = end;
        } else if matches!(b[i], b'\'' | b'"' | b'`') {
            let q = b[i];
            let mut j = i + 1;
            while j < b.len() && b[j] != q {
                if b[j] == b'\\' && q != b'`' {
                    j += 1;
                }
                j += 1;
            }
            i = j + 1;
        } else if ident_byte(b[i]) {
            let start = i;
            while i < b.len() && ident_byte(b[i]) {
                i += 1;
            }
            if b[start..i].eq_ignore_ascii_case(d) && b.get(i) == Some(&b'.') {
                return true;
            }
        } else {
            i += 1;
        }
    }
    false
}

/// Orders views so that each comes after the views it uses (their
/// definitions, as `SHOW CREATE VIEW` writes them, name other views
/// `` `db`.`view` ``); a cycle keeps its listed order.
pub fn order_views<'a>(views: Vec<(&'a str, &'a str, String)>) -> Vec<(&'a str, &'a str, String)> {
    let mut left = views;
    let mut out: Vec<(&str, &str, String)> = Vec::with_capacity(left.len());
    while !left.is_empty() {
        let names: Vec<String> = left.iter().map(|(db, v, _)| qualified(db, v)).collect();
        let pos = (0..left.len()).find(|&k| {
            let body = &left[k].2;
            names
                .iter()
                .enumerate()
                .all(|(j, n)| j == k || !body.contains(n.as_str()))
        });
        out.push(left.remove(pos.unwrap_or(0)));
    }
    out
}

/// The session every dump and restore statement runs in: values travel as
/// raw bytes, times in UTC, zero dates and `0` in `AUTO_INCREMENT` columns
/// kept as they are, backslash escapes on, checks that would only slow a
/// load (or refuse rows the source holds) off. Also the header of an
/// exported dump, so `mariadb < dump.sql` reads it the same way.
pub const SESSION: &[&str] = &[
    "SET NAMES binary",
    "SET SESSION time_zone = '+00:00'",
    "SET SESSION sql_mode = 'NO_AUTO_VALUE_ON_ZERO'",
];

/// What a restore or an exported dump adds for loading.
pub const LOAD_SESSION: &[&str] = &[
    "SET SESSION foreign_key_checks = 0",
    "SET SESSION unique_checks = 0",
];

#[cfg(test)]
mod tests {
    use super::*;

    fn lit(kind: ValueKind, v: Option<&[u8]>) -> String {
        let mut out = Vec::new();
        push_value(&mut out, kind, v);
        String::from_utf8_lossy(&out).into_owned()
    }

    #[test]
    fn values_become_literals() {
        assert_eq!(lit(ValueKind::Number, None), "NULL");
        assert_eq!(lit(ValueKind::Number, Some(b"-12.50")), "-12.50");
        assert_eq!(lit(ValueKind::Bits, Some(&[0x01, 0xff])), "0x01ff");
        assert_eq!(lit(ValueKind::Quoted, Some(b"")), "''");
        assert_eq!(
            lit(ValueKind::Json, Some(b"{\"a\": 1}")),
            "_utf8mb4'{\"a\": 1}'"
        );
        assert_eq!(
            lit(ValueKind::Quoted, Some(b"a'b\\c\nd\re\0f\x1ag\"")),
            "'a\\'b\\\\c\\nd\\re\\0f\\Zg\"'"
        );
        // Bytes that are not UTF-8 pass through untouched.
        let mut out = Vec::new();
        push_value(&mut out, ValueKind::Quoted, Some(&[0xe9, 0xff, b'x']));
        assert_eq!(out, b"'\xe9\xffx'");
    }

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(ident("t"), "`t`");
        assert_eq!(ident("a`b"), "`a``b`");
        assert_eq!(qualified("d b", "t"), "`d b`.`t`");
        assert_eq!(string_literal("it's"), "'it\\'s'");
    }

    #[test]
    fn file_names_are_safe_and_distinct() {
        assert_eq!(file_name("shop_1"), "shop_1");
        assert_eq!(file_name("a.b"), "a%2Eb");
        assert_eq!(file_name("a/b"), "a%2Fb");
        assert_eq!(file_name("é"), "%C3%A9");
        assert_ne!(file_name("a.b"), file_name("a%2Eb"));
    }

    #[test]
    fn statement_ends_depend_on_the_row_alone() {
        let rows: Vec<Vec<u8>> = (0..100_000)
            .map(|i| format!("({i},'name {i}')").into_bytes())
            .collect();
        let ends: Vec<bool> = rows.iter().map(|r| ends_statement(r, 8)).collect();
        let n = ends.iter().filter(|e| **e).count();
        // About one in 256.
        assert!((200..700).contains(&n), "{n}");
        // The same rows end statements whatever precedes them.
        assert_eq!(
            ends[50_000..],
            rows[50_000..]
                .iter()
                .map(|r| ends_statement(r, 8))
                .collect::<Vec<_>>()[..]
        );
    }

    #[test]
    fn schema_shape_ignores_auto_increment() {
        let a = "CREATE TABLE `t` (\n  `id` int NOT NULL AUTO_INCREMENT\n) ENGINE=InnoDB AUTO_INCREMENT=17 DEFAULT CHARSET=utf8mb4";
        let b = "CREATE TABLE `t` (\n  `id` int NOT NULL AUTO_INCREMENT\n) ENGINE=InnoDB AUTO_INCREMENT=9000 DEFAULT CHARSET=utf8mb4";
        assert_eq!(schema_shape(a), schema_shape(b));
        assert!(schema_shape(a).contains("`id` int NOT NULL AUTO_INCREMENT\n"));
        assert_ne!(schema_shape(a), schema_shape(&a.replace("int", "bigint")));
    }

    #[test]
    fn secondary_indexes_are_deferred() {
        let t = "CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `u` (`c`),\n  KEY `k_1` (`k`),\n  KEY `k_2` (`k`,`c`)\n) ENGINE=InnoDB";
        let (table, alter) = defer_secondary_indexes(t, "sbtest1").unwrap();
        assert_eq!(
            table,
            "CREATE TABLE `sbtest1` (\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `k` int(11) NOT NULL DEFAULT 0,\n  `c` char(120) NOT NULL DEFAULT '',\n  PRIMARY KEY (`id`),\n  UNIQUE KEY `u` (`c`)\n) ENGINE=InnoDB"
        );
        assert_eq!(
            alter,
            "ALTER TABLE `sbtest1` ADD KEY `k_1` (`k`), ADD KEY `k_2` (`k`,`c`)"
        );
        assert!(
            defer_secondary_indexes(
                "CREATE TABLE `t` (\n  `id` int,\n  PRIMARY KEY (`id`)\n)",
                "t"
            )
            .is_none()
        );
        assert!(defer_secondary_indexes("CREATE TABLE `t` (\n  `a` int,\n  KEY `a` (`a`),\n  CONSTRAINT `f` FOREIGN KEY (`a`) REFERENCES `p` (`id`)\n)", "t").is_none());
    }

    #[test]
    fn the_auto_increment_columns_index_stays() {
        let t = "CREATE TABLE `p` (\n  `created` date NOT NULL,\n  `id` int(11) NOT NULL AUTO_INCREMENT,\n  `v` int(11) DEFAULT NULL,\n  PRIMARY KEY (`created`,`id`),\n  KEY `id` (`id`),\n  KEY `v` (`v`)\n) ENGINE=InnoDB";
        let (table, alter) = defer_secondary_indexes(t, "p").unwrap();
        assert!(table.contains("  KEY `id` (`id`)\n) ENGINE"), "{table}");
        assert_eq!(alter, "ALTER TABLE `p` ADD KEY `v` (`v`)");
        // Only its own index: `id2` is another column.
        let t2 = t.replace("KEY `v` (`v`)", "KEY `v` (`id2`)");
        let (_, alter) = defer_secondary_indexes(&t2, "p").unwrap();
        assert_eq!(alter, "ALTER TABLE `p` ADD KEY `v` (`id2`)");
    }

    #[test]
    fn control_characters_are_kept_out_of_names_and_comments() {
        assert!(check_name("table", "a b.ü").is_ok());
        assert!(check_name("database", "x\n\\! sh").is_err());
        assert_eq!(comment_text("10.11\n\\! rm"), "10.11?\\! rm");
    }

    #[test]
    fn unquoted_references_are_found_outside_strings_and_comments() {
        assert!(names_database_unquoted(
            "INSERT INTO shop.audit VALUES (1)",
            "shop"
        ));
        assert!(names_database_unquoted("insert into SHOP.audit", "shop"));
        assert!(!names_database_unquoted(
            "INSERT INTO `shop`.`audit`",
            "shop"
        ));
        assert!(!names_database_unquoted(
            "SELECT 'shop.x' -- shop.y\n",
            "shop"
        ));
        assert!(!names_database_unquoted("INSERT INTO myshop.a", "shop"));
        assert!(!names_database_unquoted("/* shop.a */ SELECT 1", "shop"));
    }

    #[test]
    fn views_come_after_the_views_they_use() {
        let v = vec![
            (
                "d",
                "a",
                "CREATE VIEW `a` AS select * from `d`.`b`".to_string(),
            ),
            (
                "d",
                "b",
                "CREATE VIEW `b` AS select * from `d`.`t`".to_string(),
            ),
            ("d", "c", "CREATE VIEW `c` AS select 1".to_string()),
        ];
        let names: Vec<&str> = order_views(v).iter().map(|x| x.1).collect();
        assert_eq!(names, ["b", "a", "c"]);
    }

    #[test]
    fn comments_do_not_confuse_renames() {
        let m: std::collections::BTreeMap<String, String> =
            [("shop".to_string(), "shop2".to_string())].into();
        assert_eq!(
            rename_databases("-- don't\nINSERT INTO `shop`.`a` VALUES ('`shop`.x')", &m),
            "-- don't\nINSERT INTO `shop2`.`a` VALUES ('`shop`.x')"
        );
    }

    #[test]
    fn renames_only_qualified_database_names() {
        let m: std::collections::BTreeMap<String, String> =
            [("shop".to_string(), "shop2".to_string())].into();
        let v = "CREATE VIEW `shop`.`v` AS select `shop`.`t`.`id` AS `id`, 'shop`.x' AS `s` from `shop`.`t` join `other`.`u`";
        assert_eq!(
            rename_databases(v, &m),
            "CREATE VIEW `shop2`.`v` AS select `shop2`.`t`.`id` AS `id`, 'shop`.x' AS `s` from `shop2`.`t` join `other`.`u`"
        );
        // A column named like the database is left alone.
        assert_eq!(
            rename_databases("select `shop` from `t`", &m),
            "select `shop` from `t`"
        );
    }
}
