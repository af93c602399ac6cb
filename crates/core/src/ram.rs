//! RAM-style access policies for access keys, as Alibaba Cloud writes them:
//!
//! ```json
//! {"Version": "1", "Statement": [
//!   {"Effect": "Allow", "Action": ["rds:Describe*", "rds:CreateBackup"],
//!    "Resource": "acs:rds:*:*:dbinstance/rm-*"},
//!   {"Effect": "Deny", "Action": "rds:DeleteBackup", "Resource": "*"}]}
//! ```
//!
//! A key without a policy may do everything its account may. With one, a
//! request is allowed only if some `Allow` statement matches its action and
//! resource and no `Deny` statement does (an explicit deny always wins).
//! `*` matches any run of characters and `?` one character; actions compare
//! without regard to case, resources exactly. Conditions are refused rather
//! than ignored: ignoring one would grant more than the author meant.

use serde_json::Value;

/// The longest policy document accepted (the cloud's limit).
pub const MAX_POLICY_LEN: usize = 6144;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RAM policy: {0}")]
pub struct RamError(pub String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Statement {
    effect: Effect,
    actions: Vec<String>,
    resources: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamPolicy {
    statements: Vec<Statement>,
}

/// Why a request was allowed or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    /// No `Allow` statement matched.
    ImplicitDeny,
    /// A `Deny` statement matched.
    ExplicitDeny,
}

impl Decision {
    pub fn as_str(self) -> &'static str {
        match self {
            Decision::Allow => "Allow",
            Decision::ImplicitDeny => "ImplicitDeny",
            Decision::ExplicitDeny => "ExplicitDeny",
        }
    }
}

fn err(m: impl Into<String>) -> RamError {
    RamError(m.into())
}

/// A string or a non-empty list of strings.
fn strings(v: Option<&Value>, field: &str) -> Result<Vec<String>, RamError> {
    let list = match v {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) if !a.is_empty() => a
            .iter()
            .map(|x| {
                x.as_str()
                    .map(str::to_string)
                    .ok_or_else(|| err(format!("{field} entries must be strings")))
            })
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(err(format!("{field} must be a string or a non-empty list"))),
        None => return Err(err(format!("a statement has no {field}"))),
    };
    if list.iter().any(|s| s.is_empty()) {
        return Err(err(format!("{field} entries must not be empty")));
    }
    Ok(list)
}

/// `*` any run of characters, `?` exactly one.
pub fn glob(pattern: &str, s: &str) -> bool {
    let (p, s): (Vec<char>, Vec<char>) = (pattern.chars().collect(), s.chars().collect());
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

impl RamPolicy {
    pub fn parse(doc: &Value) -> Result<RamPolicy, RamError> {
        if doc.to_string().len() > MAX_POLICY_LEN {
            return Err(err(format!("longer than {MAX_POLICY_LEN} characters")));
        }
        let o = doc
            .as_object()
            .ok_or_else(|| err("expected a JSON object"))?;
        if let Some(k) = o.keys().find(|k| *k != "Version" && *k != "Statement") {
            return Err(err(format!("unknown field {k:?}")));
        }
        if o.get("Version").and_then(Value::as_str) != Some("1") {
            return Err(err("Version must be \"1\""));
        }
        let st = match o.get("Statement") {
            Some(Value::Array(a)) if !a.is_empty() => a,
            _ => return Err(err("Statement must be a non-empty list")),
        };
        let mut statements = Vec::new();
        for s in st {
            let so = s
                .as_object()
                .ok_or_else(|| err("each statement must be an object"))?;
            if let Some(k) = so
                .keys()
                .find(|k| !["Effect", "Action", "Resource"].contains(&k.as_str()))
            {
                return Err(err(format!(
                    "statement field {k:?} is not supported (only Effect, Action, Resource)"
                )));
            }
            let effect = match so.get("Effect").and_then(Value::as_str) {
                Some("Allow") => Effect::Allow,
                Some("Deny") => Effect::Deny,
                _ => return Err(err("Effect must be Allow or Deny")),
            };
            let actions = strings(so.get("Action"), "Action")?;
            for a in &actions {
                if a != "*" && !a.contains(':') {
                    return Err(err(format!(
                        "action {a:?}: expected product:Action, e.g. rds:DescribeBackupTasks"
                    )));
                }
            }
            statements.push(Statement {
                effect,
                actions: actions
                    .into_iter()
                    .map(|a| a.to_ascii_lowercase())
                    .collect(),
                resources: strings(so.get("Resource"), "Resource")?,
            });
        }
        Ok(RamPolicy { statements })
    }

    /// `action` like `rds:DescribeBackupTasks`; `resource` like
    /// `acs:rds:cn-hangzhou:acc-team:dbinstance/rm-…`.
    pub fn evaluate(&self, action: &str, resource: &str) -> Decision {
        let action = action.to_ascii_lowercase();
        let matching = |e: Effect| {
            self.statements.iter().any(|s| {
                s.effect == e
                    && s.actions.iter().any(|a| glob(a, &action))
                    && s.resources.iter().any(|r| glob(r, resource))
            })
        };
        if matching(Effect::Deny) {
            Decision::ExplicitDeny
        } else if matching(Effect::Allow) {
            Decision::Allow
        } else {
            Decision::ImplicitDeny
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("rds:describe*", "rds:describebackups"));
        assert!(glob("a?c", "abc") && !glob("a?c", "ac"));
        assert!(glob(
            "acs:rds:*:*:dbinstance/rm-*",
            "acs:rds:x:acc-1:dbinstance/rm-1"
        ));
        assert!(!glob(
            "acs:rds:*:*:dbinstance/rm-1",
            "acs:rds:x:acc-1:dbinstance/rm-12"
        ));
        assert!(glob("*a*b*", "xxaxxbxx") && !glob("*a*b", "xxaxxbxx"));
    }

    #[test]
    fn allow_deny_and_default() {
        let p = RamPolicy::parse(&json!({"Version": "1", "Statement": [
            {"Effect": "Allow", "Action": ["rds:Describe*", "rds:CreateBackup"], "Resource": "acs:rds:*:*:dbinstance/rm-a*"},
            {"Effect": "Deny", "Action": "rds:DescribeBackups", "Resource": "*"}
        ]}))
        .unwrap();
        let r = |id: &str| format!("acs:rds:local:acc-x:dbinstance/{id}");
        assert_eq!(
            p.evaluate("rds:DescribeBackupTasks", &r("rm-a1")),
            Decision::Allow
        );
        assert_eq!(p.evaluate("RDS:createbackup", &r("rm-a1")), Decision::Allow);
        assert_eq!(
            p.evaluate("rds:DescribeBackupTasks", &r("rm-b1")),
            Decision::ImplicitDeny
        );
        assert_eq!(
            p.evaluate("rds:DeleteBackup", &r("rm-a1")),
            Decision::ImplicitDeny
        );
        assert_eq!(
            p.evaluate("rds:DescribeBackups", &r("rm-a1")),
            Decision::ExplicitDeny
        );
        assert_eq!(
            p.evaluate("dds:DescribeBackupTasks", &r("rm-a1")),
            Decision::ImplicitDeny
        );
    }

    #[test]
    fn bad_documents_are_refused() {
        for bad in [
            json!([]),
            json!({"Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
            json!({"Version": "1", "Statement": []}),
            json!({"Version": "1", "Statement": [{"Effect": "Maybe", "Action": "*", "Resource": "*"}]}),
            json!({"Version": "1", "Statement": [{"Effect": "Allow", "Resource": "*"}]}),
            json!({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "Describe", "Resource": "*"}]}),
            json!({"Version": "1", "Statement": [{"Effect": "Allow", "Action": [], "Resource": "*"}]}),
            json!({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*", "Condition": {}}]}),
            json!({"Version": "1", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": ["x".repeat(7000)]}]}),
            json!({"Version": "1", "Extra": 1, "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}),
        ] {
            assert!(RamPolicy::parse(&bad).is_err(), "{bad}");
        }
    }
}
