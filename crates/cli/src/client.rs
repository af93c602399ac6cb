//! A small blocking client of Stowage's REST API.

use serde_json::Value;
use std::time::Duration;

pub struct Client {
    base: String,
    auth: String,
    agent: ureq::Agent,
}

/// Why a call failed, with the exit code the CLI uses for it.
pub enum CallError {
    /// The server answered with an error (exit 2).
    Api { code: String, message: String },
    /// The server could not be reached (exit 3).
    Unreachable(String),
    /// The client is not set up: no credentials, a malformed server URL
    /// (exit 4; nothing was sent).
    Setup(String),
}

impl CallError {
    pub fn exit_code(&self) -> i32 {
        match self {
            CallError::Api { .. } => 2,
            CallError::Unreachable(_) => 3,
            CallError::Setup(_) => 4,
        }
    }
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Api { code, message, .. } => write!(f, "{code}: {message}"),
            CallError::Unreachable(m) | CallError::Setup(m) => f.write_str(m),
        }
    }
}

impl Client {
    /// A client of the server at `base` (`http://host:port`).
    pub fn new(base: &str, key_id: &str, secret: &str) -> Result<Client, CallError> {
        let b = base.trim();
        let rest = b.strip_prefix("http://").ok_or_else(|| {
            CallError::Setup(if b.starts_with("https://") {
                format!("--server {b}: this client speaks plain http:// only; put a TLS proxy's plain side or the server's own address")
            } else {
                format!("--server / STOWAGE_SERVER must be a URL like http://127.0.0.1:8420 (got {b:?})")
            })
        })?;
        if rest.is_empty() || rest.starts_with('/') || rest.contains(char::is_whitespace) {
            return Err(CallError::Setup(format!(
                "--server / STOWAGE_SERVER must be a URL like http://127.0.0.1:8420 (got {b:?})"
            )));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(120)))
            .build()
            .into();
        Ok(Client {
            base: b.trim_end_matches('/').to_string(),
            auth: format!("Bearer {key_id}:{secret}"),
            agent,
        })
    }

    fn not_stowage(&self, status: u16) -> CallError {
        CallError::Unreachable(format!(
            "the server at {} answered HTTP {status} but not like a Stowage server; is --server / STOWAGE_SERVER pointing at `stowage serve`?",
            self.base
        ))
    }

    fn finish(
        &self,
        r: Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> Result<Value, CallError> {
        let mut resp = r.map_err(|e| {
            CallError::Unreachable(format!("cannot reach the Stowage server at {}: {e} (is `stowage serve` running? see --server)", self.base))
        })?;
        let status = resp.status().as_u16();
        let text = resp.body_mut().read_to_string().unwrap_or_default();
        let v: Value = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).map_err(|_| self.not_stowage(status))?
        };
        if status >= 400 {
            let (Some(code), Some(message)) =
                (v["error"]["code"].as_str(), v["error"]["message"].as_str())
            else {
                return Err(self.not_stowage(status));
            };
            return Err(CallError::Api {
                code: code.to_string(),
                message: message.to_string(),
            });
        }
        Ok(v)
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn get(&self, path: &str) -> Result<Value, CallError> {
        self.finish(
            self.agent
                .get(&self.url(path))
                .header("Authorization", &self.auth)
                .call(),
        )
    }

    pub fn post(&self, path: &str, body: Option<&Value>) -> Result<Value, CallError> {
        let req = self
            .agent
            .post(&self.url(path))
            .header("Authorization", &self.auth);
        self.finish(match body {
            Some(b) => req.send_json(b),
            None => req.send_empty(),
        })
    }

    /// PUT or PATCH with a JSON body.
    pub fn send(&self, method: &str, path: &str, body: &Value) -> Result<Value, CallError> {
        let url = self.url(path);
        let req = match method {
            "PUT" => self.agent.put(&url),
            _ => self.agent.patch(&url),
        };
        self.finish(req.header("Authorization", &self.auth).send_json(body))
    }

    pub fn delete(&self, path: &str) -> Result<Value, CallError> {
        self.finish(
            self.agent
                .delete(&self.url(path))
                .header("Authorization", &self.auth)
                .call(),
        )
    }
}

/// Percent-encodes a path segment or query value.
pub fn enc(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
