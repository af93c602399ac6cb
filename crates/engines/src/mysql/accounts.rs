//! User accounts and their grants in a logical set.
//!
//! A backup reads every account of the server except its own (`root`,
//! `mariadb.sys`, `mysql.*`, `PUBLIC`, anonymous users) with `SHOW CREATE
//! USER` (password hashes and authentication plugins included) and `SHOW
//! GRANTS`, into `stowage-accounts.json` in the dump archive. A restore
//! creates them only when asked (`restore --accounts`): accounts are the
//! server's, not one database's, and creating them is the target owner's
//! decision.
//!
//! Invariant: an account the target has already is never changed (neither
//! its password nor its grants): it is told apart by the server refusing
//! to create it again (error 1396), and its statements are not run. Every
//! statement run names only the account it belongs to (checked before
//! anything is written), and a failed restore drops the accounts it
//! created.

use super::dump::{OpenedDump, put};
use super::{Facts, Flavor, Session, err, sql};
use crate::{EngineError, ErrorKind};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use stowage_repo::ArchiveWriter;

/// The accounts' file in a logical set's dump archive.
pub const FILE: &str = "stowage-accounts.json";

/// Accounts that belong to the server itself, never backed up or created.
const SERVER_ACCOUNTS: &[&str] = &[
    "root",
    "mariadb.sys",
    "mysql.sys",
    "mysql.session",
    "mysql.infoschema",
    "PUBLIC",
];

/// ER_CANNOT_USER: "Operation CREATE USER failed" (it exists; on `SHOW
/// CREATE USER`: it no longer does).
const CANNOT_USER: u16 = 1396;
/// ER_NONEXISTING_GRANT: no such account (dropped during the backup).
const NONEXISTING_GRANT: u16 = 1141;
/// Privilege refusals.
const DENIED: &[u16] = &[1044, 1142, 1143, 1227, 1370];

/// One account (a user, or a role: MariaDB roles have no host).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Account {
    pub user: String,
    pub host: String,
    #[serde(default)]
    pub role: bool,
    /// `CREATE USER …` as the server shows it (or `CREATE ROLE …`).
    pub create: String,
    /// `GRANT …` (and `SET DEFAULT ROLE …`) statements, in the server's order.
    pub grants: Vec<String>,
}

impl Account {
    /// `'user'@'host'`, or a role's quoted name.
    pub fn name(&self) -> String {
        if self.role {
            sql::ident(&self.user)
        } else {
            format!(
                "{}@{}",
                sql::string_literal(&self.user),
                sql::string_literal(&self.host)
            )
        }
    }

    /// The account as `SHOW CREATE USER` and `SHOW GRANTS` write it
    /// (backquoted; `PROXY` grants in quotes).
    fn shown(&self) -> [String; 2] {
        if self.role {
            [sql::ident(&self.user), sql::string_literal(&self.user)]
        } else {
            [
                format!("{}@{}", sql::ident(&self.user), sql::ident(&self.host)),
                self.name(),
            ]
        }
    }

    /// Why a statement of this account may not run: it must be one
    /// statement, and create or grant to this account alone.
    fn check(&self) -> Result<(), String> {
        let me = self.shown();
        let refuse = |what: &str, s: &str| {
            Err(format!(
                "account {}: its {what} does not act on it alone, so it is not run: {s}",
                self.name()
            ))
        };
        let create_head = if self.role {
            "CREATE ROLE "
        } else {
            "CREATE USER "
        };
        if !single_statement(&self.create)
            || !self
                .create
                .strip_prefix(create_head)
                .is_some_and(|r| names_first(r, &me))
        {
            return refuse("definition", &self.create);
        }
        for g in &self.grants {
            let masked = mask_quoted(g);
            let target = if g.starts_with("GRANT ") {
                masked.rfind(" TO ").map(|i| i + 4)
            } else if g.starts_with("SET DEFAULT ROLE ") {
                masked.rfind(" FOR ").map(|i| i + 5)
            } else {
                None
            };
            if !single_statement(g) || !target.is_some_and(|i| names_first(&g[i..], &me)) {
                return refuse("grant", g);
            }
        }
        Ok(())
    }
}

/// `rest` begins with the account (either spelling), followed by nothing
/// or a clause.
fn names_first(rest: &str, me: &[String; 2]) -> bool {
    me.iter().any(|me| {
        rest.strip_prefix(me.as_str())
            .is_some_and(|after| after.is_empty() || after.starts_with(' '))
    })
}

/// The statement with the inside of every quoted string and identifier
/// replaced by `x` (same byte length), so keywords are found only where
/// the server reads them.
fn mask_quoted(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = b.to_vec();
    let mut i = 0;
    while i < b.len() {
        let q = b[i];
        if q == b'\'' || q == b'"' || q == b'`' {
            let mut j = i + 1;
            while j < b.len() {
                if q != b'`' && b[j] == b'\\' {
                    out[j] = b'x';
                    if j + 1 < b.len() {
                        out[j + 1] = b'x';
                    }
                    j += 2;
                    continue;
                }
                if b[j] == q {
                    if j + 1 < b.len() && b[j + 1] == q {
                        out[j] = b'x';
                        out[j + 1] = b'x';
                        j += 2;
                        continue;
                    }
                    break;
                }
                out[j] = b'x';
                j += 1;
            }
            i = j + 1;
        } else {
            i += 1;
        }
    }
    // Only ASCII bytes inside quotes were replaced by ASCII; a multi-byte
    // character inside is replaced whole, byte by byte.
    String::from_utf8(out).unwrap_or_default()
}

/// One statement: no `;` or comment outside quotes, quotes closed.
fn single_statement(s: &str) -> bool {
    let m = mask_quoted(s);
    if m.len() != s.len() {
        return false;
    }
    let quotes = m
        .bytes()
        .filter(|c| matches!(c, b'\'' | b'"' | b'`'))
        .count();
    quotes % 2 == 0
        && !m.contains(';')
        && !m.contains("/*")
        && !m.contains("--")
        && !m.contains('#')
}

/// The server's accounts, or (inner `Err`) why the user may not read them:
/// a set without accounts is still a good set.
pub fn read(c: &mut Session, f: &Facts) -> Result<Result<Vec<Account>, String>, EngineError> {
    let denied = |what: &str| {
        format!(
            "the backup user may not read the accounts ({what} refused), so the set holds none; GRANT SELECT ON mysql.* to include them"
        )
    };
    let q = match f.flavor {
        Flavor::MariaDb => "SELECT User, Host, is_role FROM mysql.user ORDER BY User, Host",
        // MySQL 8's roles are accounts that cannot log in: SHOW CREATE USER
        // shows them as such. Password hashes as hex: caching_sha2's are
        // binary.
        Flavor::MySql => {
            c.exec("SET SESSION print_identified_with_as_hex = ON")?;
            "SELECT User, Host, 'N' FROM mysql.user ORDER BY User, Host"
        }
    };
    let rows = match c.rows_unless(q, DENIED)? {
        Ok(r) => r,
        Err(_) => return Ok(Err(denied("reading mysql.user"))),
    };
    let text = |v: &Option<Vec<u8>>| {
        v.as_deref()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_default()
    };
    let gone = [CANNOT_USER, NONEXISTING_GRANT];
    let codes: Vec<u16> = gone.iter().chain(DENIED).copied().collect();
    let mut out = Vec::new();
    for r in rows {
        let g = |i: usize| r.get(i).map(text).unwrap_or_default();
        let (user, host, role) = (g(0), g(1), g(2).eq_ignore_ascii_case("Y"));
        if user.is_empty() || SERVER_ACCOUNTS.contains(&user.as_str()) || user.starts_with("mysql.")
        {
            continue;
        }
        let mut a = Account {
            user,
            host,
            role,
            create: String::new(),
            grants: Vec::new(),
        };
        if !role {
            match c.rows_unless(format!("SHOW CREATE USER {}", a.name()), &codes)? {
                Ok(r) => {
                    a.create = r
                        .first()
                        .and_then(|r| r.first())
                        .map(text)
                        .unwrap_or_default()
                }
                // Dropped since it was listed.
                Err(code) if gone.contains(&code) => continue,
                Err(_) => return Ok(Err(denied("SHOW CREATE USER"))),
            }
        } else {
            a.create = format!("CREATE ROLE {}", a.name());
        }
        match c.rows_unless(format!("SHOW GRANTS FOR {}", a.name()), &codes)? {
            Ok(r) => {
                a.grants = r.iter().filter_map(|r| r.first().map(text)).collect();
            }
            Err(code) if gone.contains(&code) => continue,
            Err(_) => return Ok(Err(denied("SHOW GRANTS"))),
        }
        out.push(a);
    }
    Ok(Ok(out))
}

/// The server's accounts into the set: how many, or why none.
pub fn store(
    c: &mut Session,
    f: &Facts,
    w: &mut ArchiveWriter,
) -> Result<Result<usize, String>, EngineError> {
    Ok(match read(c, f)? {
        Ok(list) => {
            let json = serde_json::to_vec_pretty(&list).expect("accounts serialize");
            put(w, FILE.into(), &json)?;
            Ok(list.len())
        }
        Err(why) => Err(why),
    })
}

/// The set's accounts, or why it has none.
pub fn of_set(
    d: &OpenedDump<'_>,
    m: &stowage_core::manifest::Manifest,
) -> Result<Vec<Account>, EngineError> {
    if !d.has(FILE) {
        let why = m
            .engine_meta
            .get("accounts_skipped")
            .and_then(|v| v.as_str())
            .unwrap_or("it was made before sets carried accounts");
        return Err(err(
            ErrorKind::Unsupported,
            format!("this set holds no user accounts ({why}); restore without --accounts"),
        ));
    }
    serde_json::from_slice(&d.read(FILE)?)
        .map_err(|e| err(ErrorKind::Protocol, format!("{FILE}: {e}")))
}

/// What a restore did with the set's accounts.
#[derive(Debug, Default, Serialize)]
pub struct Applied {
    pub created: Vec<String>,
    /// Accounts the target had already: left as they were.
    pub kept: Vec<String>,
}

/// Checks before anything is written that every statement acts on its own
/// account alone and that the restoring user may create accounts.
pub fn preflight(c: &mut Session, accounts: &[Account]) -> Result<(), EngineError> {
    for a in accounts {
        a.check().map_err(|m| err(ErrorKind::Unsupported, m))?;
    }
    let have = super::own_privileges(c)?;
    let missing: Vec<&str> = ["CREATE USER", "GRANT OPTION"]
        .into_iter()
        .filter(|p| !have.contains(*p))
        .collect();
    if !missing.is_empty() {
        return Err(err(
            ErrorKind::Permission,
            format!(
                "creating the set's accounts (--accounts) needs {} on the target, and the privileges they hold: GRANT CREATE USER ON *.* TO '<user>'@'<host>' WITH GRANT OPTION",
                missing.join(" and ")
            ),
        ));
    }
    Ok(())
}

/// Database names in grants may be written with `_` and `%` escaped
/// (`` `shop\_data`.* ``): both spellings follow the rename.
fn grant_renames(rename: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let esc = |s: &str| {
        s.replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    };
    let mut all = rename.clone();
    for (a, b) in rename {
        all.entry(esc(a)).or_insert_with(|| esc(b));
    }
    all
}

/// Creates the accounts the target lacks, then gives them their grants
/// (roles first, so a grant of a role finds it), with databases renamed as
/// the data was. On MariaDB, the admin option on each created role that
/// `CREATE ROLE` gives the restoring user is taken back. If anything
/// fails, the accounts created here are dropped again.
pub fn apply(
    c: &mut Session,
    accounts: &[Account],
    rename: &BTreeMap<String, String>,
) -> Result<Applied, EngineError> {
    let mut applied = Applied::default();
    let mut created: Vec<&Account> = Vec::new();
    let r = create_and_grant(
        c,
        accounts,
        &grant_renames(rename),
        &mut applied,
        &mut created,
    );
    if let Err(e) = r {
        let mut left = Vec::new();
        for a in created.iter().rev() {
            let what = if a.role { "ROLE" } else { "USER" };
            if c.exec(format!("DROP {what} IF EXISTS {}", a.name()))
                .is_err()
            {
                left.push(a.name());
            }
        }
        let note = if left.is_empty() {
            "the accounts this restore created were dropped again".to_string()
        } else {
            format!("accounts left behind: {}", left.join(", "))
        };
        return Err(EngineError {
            message: format!("{} ({note}; the data is restored)", e.message),
            ..e
        });
    }
    Ok(applied)
}

fn create_and_grant<'a>(
    c: &mut Session,
    accounts: &'a [Account],
    rename: &BTreeMap<String, String>,
    applied: &mut Applied,
    created: &mut Vec<&'a Account>,
) -> Result<(), EngineError> {
    let mut order: Vec<&Account> = accounts.iter().collect();
    order.sort_by_key(|a| !a.role);
    for a in &order {
        let refused = c
            .exec_unless(a.create.as_str(), &[CANNOT_USER])
            .map_err(|e| EngineError {
                message: format!("creating account {}: {}", a.name(), e.message),
                ..e
            })?;
        if refused.is_some() {
            applied.kept.push(a.name());
        } else {
            applied.created.push(a.name());
            created.push(a);
        }
    }
    for a in created.iter() {
        for g in &a.grants {
            c.exec(sql::rename_databases(g, rename))
                .map_err(|e| EngineError {
                    message: format!(
                        "granting account {} what it had ({g}): {}",
                        a.name(),
                        e.message
                    ),
                    ..e
                })?;
        }
    }
    let mariadb = c
        .value("SELECT VERSION()")?
        .is_some_and(|v| v.contains("MariaDB"));
    if mariadb && created.iter().any(|a| a.role) {
        let me = c.value("SELECT CURRENT_USER()")?.unwrap_or_default();
        let (user, host) = me.rsplit_once('@').unwrap_or((me.as_str(), ""));
        let me = format!(
            "{}@{}",
            sql::string_literal(user),
            sql::string_literal(host)
        );
        for a in created.iter().filter(|a| a.role) {
            c.exec(format!("REVOKE {} FROM {me}", a.name()))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn app() -> Account {
        Account {
            user: "app".into(),
            host: "%".into(),
            role: false,
            create: "CREATE USER `app`@`%` IDENTIFIED BY PASSWORD '*AB'".into(),
            grants: vec![
                "GRANT USAGE ON *.* TO `app`@`%` IDENTIFIED BY PASSWORD '*AB'".into(),
                "GRANT SELECT (`id`) ON `shop`.`t` TO `app`@`%`".into(),
                "GRANT `reader` TO `app`@`%`".into(),
                "SET DEFAULT ROLE `reader` FOR `app`@`%`".into(),
            ],
        }
    }

    #[test]
    fn statements_that_act_on_their_own_account_pass() {
        assert_eq!(app().check(), Ok(()));
        assert_eq!(app().name(), "'app'@'%'");
        let r = Account {
            user: "reader".into(),
            host: String::new(),
            role: true,
            create: "CREATE ROLE `reader`".into(),
            grants: vec!["GRANT SELECT ON `shop`.* TO `reader`".into()],
        };
        assert_eq!(r.check(), Ok(()));
        assert_eq!(r.name(), "`reader`");
    }

    #[test]
    fn statements_naming_another_account_or_more_than_one_statement_are_refused() {
        let bad = [
            "GRANT ALL PRIVILEGES ON *.* TO `root`@`localhost`",
            "GRANT SELECT ON *.* TO `app`@`%`; DROP DATABASE shop",
            "GRANT SELECT ON *.* TO `app`@`%` /* */",
            "GRANT SELECT ON *.* TO `app`@`%x`",
            "GRANT SELECT ON *.* TO `app`@`%`, `other`@`%`",
            "DROP USER `app`@`%`",
            "GRANT SELECT ON `a TO ` TO `other`@`%`",
        ];
        for g in bad {
            let mut a = app();
            a.grants.push(g.into());
            assert!(a.check().is_err(), "{g}");
        }
        let mut a = app();
        a.create = "CREATE USER `other`@`%`".into();
        assert!(a.check().is_err());
        // A quoted TO is data, not the grantee.
        let mut a = app();
        a.grants
            .push("GRANT SELECT (`x TO y`) ON `shop`.`t` TO `app`@`%`".into());
        assert_eq!(a.check(), Ok(()));
    }

    #[test]
    fn escaped_database_names_in_grants_follow_the_rename() {
        let r = grant_renames(&[("shop_data".to_string(), "copy_1".to_string())].into());
        assert_eq!(
            sql::rename_databases("GRANT SELECT ON `shop\\_data`.* TO `app`@`%`", &r),
            "GRANT SELECT ON `copy\\_1`.* TO `app`@`%`"
        );
        assert_eq!(
            sql::rename_databases("GRANT SELECT ON `shop_data`.* TO `app`@`%`", &r),
            "GRANT SELECT ON `copy_1`.* TO `app`@`%`"
        );
    }
}
