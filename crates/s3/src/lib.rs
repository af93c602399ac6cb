//! A repository in an S3-compatible object store, behind the repository's
//! [`Storage`] trait.
//!
//! * Layout: the local backend's, under a key prefix:
//!   `<prefix>/config`, `<prefix>/keys/<id>`, `<prefix>/data/<2 hex>/<id>`,
//!   `<prefix>/index/<id>`, `<prefix>/snapshots/<id>`, `<prefix>/locks/<id>`.
//! * Client: `object_store`'s S3 client (SigV4, rustls on ring). Transient
//!   failures (connection errors, timeouts, 5xx, 429, `SlowDown`) are
//!   retried with capped exponential backoff and decorrelated jitter until
//!   [`S3Options::retry_timeout`] has passed; anything else (refused
//!   credentials, a missing bucket) fails at once.
//! * Every `put` is verified before it returns: the ETag the store answers
//!   must be the MD5 of the bytes sent (multipart: MD5 of the parts' MD5s
//!   and the part count), else the object's size is read back and must
//!   match. The repository writes an index only after every pack it names
//!   was put, so nothing half-written is ever named.
//! * Objects of [`MULTIPART_MIN`] bytes or more go up in
//!   [`PART_SIZE`] parts, sent at once; a failed upload is aborted so no
//!   parts are left behind.
//! * `put_new` is a conditional write (`If-None-Match: *`); lock staleness
//!   uses the store's `Last-Modified` times (see `stowage_repo::lock`).
//!
//! The trait is synchronous: calls run on a small runtime owned by the
//! storage and are waited for on the caller's thread, so they work from
//! worker threads and from inside another runtime alike.

use futures_util::StreamExt;
use md5::{Digest, Md5};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::{
    BackoffConfig, ClientOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig,
};
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::time::Duration;
use stowage_repo::storage::{FileType, Storage, StorageError, StorageResult, valid_name};

/// Objects this large or larger are uploaded in parts.
pub const MULTIPART_MIN: usize = 8 * 1024 * 1024;
/// Size of each part but the last (S3's minimum is 5 MiB).
pub const PART_SIZE: usize = 8 * 1024 * 1024;

/// Where and how to reach the bucket.
#[derive(Clone)]
pub struct S3Options {
    pub bucket: String,
    /// Key prefix without leading or trailing `/` (may be empty).
    pub prefix: String,
    /// `http(s)://host:port` of an S3-compatible server; `None`: AWS.
    pub endpoint: Option<String>,
    pub region: String,
    /// Path-style requests (`endpoint/bucket/key`) instead of
    /// virtual-hosted ones (`bucket.endpoint/key`).
    pub path_style: bool,
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
    /// How long a request is retried through transient failures.
    pub retry_timeout: Duration,
    /// PEM certificates trusted besides the system's (a private CA).
    pub ca_file: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret or the session token.
        f.debug_struct("S3Options")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("path_style", &self.path_style)
            .field("access_key_id", &self.access_key_id)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

/// The default retry budget for transient failures.
pub const DEFAULT_RETRY_TIMEOUT: Duration = Duration::from_secs(120);

impl S3Options {
    /// `s3://bucket[/prefix]`, with the rest from the environment in AWS's
    /// names: `AWS_ENDPOINT_URL_S3` or `AWS_ENDPOINT_URL`, `AWS_REGION` or
    /// `AWS_DEFAULT_REGION` (default `us-east-1`), `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`, `AWS_CA_BUNDLE` (PEM
    /// certificates to trust besides the system's). Path-style requests
    /// are the default where an endpoint is given (S3-compatible servers),
    /// virtual-hosted ones on AWS. The caller may change any field after.
    pub fn from_url(url: &str, env: impl Fn(&str) -> Option<String>) -> Result<S3Options, String> {
        let rest = url
            .strip_prefix("s3://")
            .ok_or_else(|| format!("{url:?} is not an s3://bucket/prefix URL"))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        check_bucket(bucket)?;
        let prefix = prefix.trim_end_matches('/');
        check_prefix(prefix)?;
        let env = |k: &str| env(k).filter(|v| !v.is_empty());
        let endpoint = env("AWS_ENDPOINT_URL_S3").or_else(|| env("AWS_ENDPOINT_URL"));
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|| "us-east-1".into());
        let (Some(access_key_id), Some(secret_access_key)) =
            (env("AWS_ACCESS_KEY_ID"), env("AWS_SECRET_ACCESS_KEY"))
        else {
            return Err(
                "S3 credentials missing: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY".into(),
            );
        };
        let o = S3Options {
            bucket: bucket.into(),
            prefix: prefix.into(),
            path_style: endpoint.is_some(),
            endpoint,
            region,
            access_key_id,
            secret_access_key,
            session_token: env("AWS_SESSION_TOKEN"),
            retry_timeout: DEFAULT_RETRY_TIMEOUT,
            ca_file: env("AWS_CA_BUNDLE").map(Into::into),
        };
        o.check()?;
        Ok(o)
    }

    /// Checks what a caller may have set after [`from_url`](Self::from_url).
    pub fn check(&self) -> Result<(), String> {
        check_bucket(&self.bucket)?;
        check_prefix(&self.prefix)?;
        if let Some(e) = &self.endpoint {
            if e.contains('@') {
                // Never echoed: it may hold a user and password.
                return Err(
                    "S3 endpoint: give scheme, host and port only (credentials go in AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY)"
                        .into(),
                );
            }
            let hostport = e
                .strip_prefix("http://")
                .or_else(|| e.strip_prefix("https://"))
                .ok_or_else(|| format!("S3 endpoint {e:?}: must start with http:// or https://"))?;
            let hostport = hostport.trim_end_matches('/');
            if hostport.is_empty()
                || hostport.contains(['/', '?', '#', '@', ' '])
                || hostport.chars().any(|c| c.is_control())
            {
                return Err(format!(
                    "S3 endpoint {e:?}: give scheme, host and port only (http://host:port)"
                ));
            }
        }
        if self.region.is_empty()
            || self.region.len() > 64
            || !self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!("S3 region {:?}: not a region name", self.region));
        }
        if self.retry_timeout.is_zero() {
            return Err("S3 retry timeout: must be more than 0 s".into());
        }
        Ok(())
    }
}

/// S3's bucket naming rules (3–63 of `a-z 0-9 . -`, starting and ending
/// with a letter or digit).
fn check_bucket(b: &str) -> Result<(), String> {
    let ok = (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.as_bytes()[0].is_ascii_alphanumeric()
        && b.as_bytes()[b.len() - 1].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(format!(
            "S3 bucket {b:?}: 3 to 63 lowercase letters, digits, dots and hyphens"
        ))
    }
}

/// A prefix is `/`-separated segments of letters, digits, `.`, `_`, `-`,
/// none empty, `.` or `..`.
fn check_prefix(p: &str) -> Result<(), String> {
    if p.is_empty() {
        return Ok(());
    }
    let ok = p.len() <= 512
        && p.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes()
                    .all(|c| c.is_ascii_alphanumeric() || b"._-".contains(&c))
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "S3 prefix {p:?}: /-separated names of letters, digits, '.', '_' and '-'"
        ))
    }
}

/// The storage. Owns a small runtime its requests run on.
pub struct S3Storage {
    store: Arc<AmazonS3>,
    opts: S3Options,
    rt: Option<tokio::runtime::Runtime>,
}

impl S3Storage {
    /// Builds the client and checks the bucket answers (a listing of the
    /// prefix): wrong credentials, a missing bucket or no server fail here.
    pub fn open(opts: S3Options) -> StorageResult<S3Storage> {
        opts.check().map_err(|m| other_err(&opts.bucket, m))?;
        let mut client = ClientOptions::new()
            .with_connect_timeout(Duration::from_secs(5))
            .with_timeout(Duration::from_secs(120))
            .with_allow_http(
                opts.endpoint
                    .as_deref()
                    .is_some_and(|e| e.starts_with("http://")),
            );
        if let Some(f) = &opts.ca_file {
            let pem = std::fs::read(f).map_err(|e| StorageError::Io {
                path: f.display().to_string(),
                source: e,
            })?;
            let certs = object_store::Certificate::from_pem_bundle(&pem)
                .map_err(|e| other_err(&f.display().to_string(), format!("CA bundle: {e}")))?;
            if certs.is_empty() {
                return Err(other_err(
                    &f.display().to_string(),
                    "CA bundle: no PEM certificate in it",
                ));
            }
            for c in certs {
                client = client.with_root_certificate(c);
            }
        }
        let mut b = AmazonS3Builder::new()
            .with_bucket_name(&opts.bucket)
            .with_region(&opts.region)
            .with_access_key_id(&opts.access_key_id)
            .with_secret_access_key(&opts.secret_access_key)
            .with_virtual_hosted_style_request(!opts.path_style)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(200),
                    max_backoff: Duration::from_secs(10),
                    base: 2.0,
                },
                max_retries: 1000,
                retry_timeout: opts.retry_timeout,
            })
            .with_client_options(client);
        if let Some(e) = &opts.endpoint {
            b = b.with_endpoint(e.trim_end_matches('/'));
        }
        if let Some(t) = &opts.session_token {
            b = b.with_token(t);
        }
        // One try, no retries: a certificate nobody vouches for is not
        // transient, and fails the start at once rather than after the
        // retry budget.
        let once = b
            .clone()
            .with_retry(RetryConfig {
                max_retries: 0,
                ..RetryConfig::default()
            })
            .build()
            .map_err(|e| other_err(&opts.bucket, format!("S3 client: {e}")))?;
        let store = b
            .build()
            .map_err(|e| other_err(&opts.bucket, format!("S3 client: {e}")))?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("s3")
            .enable_all()
            .build()
            .map_err(|e| StorageError::Io {
                path: opts.bucket.clone(),
                source: e,
            })?;
        let s = S3Storage {
            store: Arc::new(store),
            opts,
            rt: Some(rt),
        };
        let what = s.location();
        match s.probe(Arc::new(once)) {
            Err(StorageError::Io { source, .. })
                if source.to_string().contains("invalid peer certificate") =>
            {
                let hint = if source.to_string().contains("UnknownIssuer") {
                    "the server's TLS certificate is not trusted; give the CA that signed it with --s3-ca-file or AWS_CA_BUNDLE"
                } else {
                    "the server's TLS certificate was refused (check that it names the endpoint's host and has not expired)"
                };
                return Err(other_err(&what, format!("{source}: {hint}")));
            }
            Ok(()) => return Ok(s),
            Err(_) => {}
        }
        // Anything else may pass: again within the retry budget.
        s.probe(s.store.clone())?;
        Ok(s)
    }

    /// One listing request: fails on refused credentials, no bucket, no
    /// server (after `store`'s retry budget for a server that does not
    /// answer).
    fn probe(&self, store: Arc<AmazonS3>) -> StorageResult<()> {
        let prefix = self.dir_path("locks");
        let what = self.location();
        self.run(&what, async move {
            let mut l = store.list(Some(&prefix));
            match l.next().await {
                Some(Err(e)) => Err(e),
                _ => Ok(()),
            }
        })
    }

    fn key(&self, ft: FileType, name: &str) -> StorageResult<String> {
        if !valid_name(ft, name) {
            return Err(StorageError::InvalidName(name.to_string()));
        }
        let rel = match ft {
            FileType::Config => "config".to_string(),
            FileType::Pack => format!("data/{}/{name}", &name[..2]),
            _ => format!("{}/{name}", ft.dir()),
        };
        Ok(if self.opts.prefix.is_empty() {
            rel
        } else {
            format!("{}/{rel}", self.opts.prefix)
        })
    }

    fn dir_path(&self, dir: &str) -> Path {
        Path::from_iter(
            self.opts
                .prefix
                .split('/')
                .filter(|s| !s.is_empty())
                .chain(std::iter::once(dir)),
        )
    }

    fn path(&self, ft: FileType, name: &str) -> StorageResult<(Path, String)> {
        let k = self.key(ft, name)?;
        let p = Path::parse(&k).map_err(|e| other_err(&k, e.to_string()))?;
        Ok((p, format!("s3://{}/{k}", self.opts.bucket)))
    }

    /// Runs `f` on the storage's runtime and waits for it here.
    fn run<T: Send + 'static>(
        &self,
        what: &str,
        f: impl Future<Output = Result<T, object_store::Error>> + Send + 'static,
    ) -> StorageResult<T> {
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        self.rt.as_ref().expect("runtime").spawn(async move {
            let _ = tx.send(f.await);
        });
        match rx.recv() {
            Ok(r) => r.map_err(|e| map_err(what, e)),
            Err(_) => Err(other_err(what, "the S3 request ended without an answer")),
        }
    }

    fn put_verified(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<()> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        let len = data.len() as u64;
        let (etag, expected) = if data.len() >= MULTIPART_MIN {
            let parts: Vec<bytes::Bytes> = data
                .chunks(PART_SIZE)
                .map(bytes::Bytes::copy_from_slice)
                .collect();
            let mut outer = Md5::new();
            for p in &parts {
                outer.update(Md5::digest(p));
            }
            let expected = format!("{}-{}", hex::encode(outer.finalize()), parts.len());
            let p = path.clone();
            let etag = self.run(&what, async move {
                let mut up = store.put_multipart(&p).await?;
                let sent = futures_util::future::try_join_all(
                    parts.into_iter().map(|b| up.put_part(PutPayload::from(b))),
                )
                .await;
                match sent {
                    Ok(_) => match up.complete().await {
                        Ok(r) => Ok(r.e_tag),
                        Err(e) => {
                            let _ = up.abort().await;
                            Err(e)
                        }
                    },
                    Err(e) => {
                        // No parts left behind to be billed for.
                        let _ = up.abort().await;
                        Err(e)
                    }
                }
            })?;
            (etag, expected)
        } else {
            let expected = hex::encode(Md5::digest(data));
            let payload = PutPayload::from(data.to_vec());
            let p = path.clone();
            let etag = self.run(&what, async move {
                store.put(&p, payload).await.map(|r| r.e_tag)
            })?;
            (etag, expected)
        };
        let got = etag
            .as_deref()
            .map(|e| e.trim_matches('"').to_ascii_lowercase());
        if got.as_deref() == Some(expected.as_str()) {
            return Ok(());
        }
        // An ETag that is not the MD5 (encryption with KMS, some servers):
        // the stored size must be what was sent.
        tracing::debug!(object = %what, etag = ?etag, "ETag is not the content's MD5; checking the size");
        let store = self.store.clone();
        let size = self.run(
            &what,
            async move { store.head(&path).await.map(|m| m.size) },
        )?;
        if size != len {
            return Err(other_err(
                &what,
                format!("the store holds {size} bytes after a put of {len}"),
            ));
        }
        Ok(())
    }
}

impl Drop for S3Storage {
    fn drop(&mut self) {
        // Dropping a runtime blocks; this may run inside another runtime.
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

fn other_err(what: &str, msg: impl Into<String>) -> StorageError {
    StorageError::Io {
        path: what.to_string(),
        source: io::Error::other(msg.into()),
    }
}

fn map_err(what: &str, e: object_store::Error) -> StorageError {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => return StorageError::NotFound(what.to_string()),
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => io::ErrorKind::PermissionDenied,
        _ => io::ErrorKind::Other,
    };
    // The causes too: "error sending request" alone does not say that a
    // certificate was refused or a connection reset.
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        let t = c.to_string();
        if !text.contains(&t) {
            text.push_str(": ");
            text.push_str(&t);
        }
        cause = c.source();
    }
    StorageError::Io {
        path: what.to_string(),
        source: io::Error::new(kind, text),
    }
}

impl Storage for S3Storage {
    fn location(&self) -> String {
        let mut s = format!("s3://{}", self.opts.bucket);
        if !self.opts.prefix.is_empty() {
            s.push('/');
            s.push_str(&self.opts.prefix);
        }
        if let Some(e) = &self.opts.endpoint {
            s.push_str(&format!(" at {e}"));
        }
        s
    }

    fn put(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<()> {
        self.put_verified(ft, name, data)
    }

    fn get(&self, ft: FileType, name: &str) -> StorageResult<Vec<u8>> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        self.run(&what, async move {
            let r = store.get(&path).await?;
            r.bytes().await.map(|b| b.to_vec())
        })
    }

    fn get_range(&self, ft: FileType, name: &str, offset: u64, len: u64) -> StorageResult<Vec<u8>> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        let Some(end) = offset.checked_add(len) else {
            return Err(other_err(&what, format!("range {offset}+{len} overflows")));
        };
        if len == 0 {
            let size = self.run(
                &what,
                async move { store.head(&path).await.map(|m| m.size) },
            )?;
            if offset > size {
                return Err(other_err(
                    &what,
                    format!("range {offset}+0 beyond object size {size}"),
                ));
            }
            return Ok(Vec::new());
        }
        let got = self.run(&what, async move {
            store
                .get_range(&path, offset..end)
                .await
                .map(|b| b.to_vec())
        })?;
        if got.len() as u64 != len {
            return Err(StorageError::Io {
                path: what,
                source: io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("range {offset}+{len}: {} bytes returned", got.len()),
                ),
            });
        }
        Ok(got)
    }

    fn list(&self, ft: FileType) -> StorageResult<Vec<(String, u64)>> {
        if ft == FileType::Config {
            return match self.stat(ft, "config") {
                Ok(n) => Ok(vec![("config".into(), n)]),
                Err(StorageError::NotFound(_)) => Ok(vec![]),
                Err(e) => Err(e),
            };
        }
        let prefix = self.dir_path(ft.dir());
        let what = format!("s3://{}/{prefix}/", self.opts.bucket);
        let store = self.store.clone();
        let metas = self.run(&what, async move {
            let mut out = Vec::new();
            let mut l = store.list(Some(&prefix));
            while let Some(m) = l.next().await {
                let m = m?;
                out.push((
                    m.location.filename().unwrap_or_default().to_string(),
                    m.size,
                ));
            }
            Ok(out)
        })?;
        Ok(metas
            .into_iter()
            .filter(|(n, _)| valid_name(ft, n))
            .collect())
    }

    fn stat(&self, ft: FileType, name: &str) -> StorageResult<u64> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        self.run(
            &what,
            async move { store.head(&path).await.map(|m| m.size) },
        )
    }

    fn delete(&self, ft: FileType, name: &str) -> StorageResult<()> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        match self.run(&what, async move { store.delete(&path).await }) {
            Err(StorageError::NotFound(_)) => Ok(()),
            r => r,
        }
    }

    fn put_new(&self, ft: FileType, name: &str, data: &[u8]) -> StorageResult<bool> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        let payload = PutPayload::from(data.to_vec());
        let len = data.len() as u64;
        let r = self.run(&what, async move {
            let o = PutOptions {
                mode: PutMode::Create,
                ..Default::default()
            };
            match store.put_opts(&path, payload, o).await {
                Ok(_) => Ok(true),
                Err(object_store::Error::AlreadyExists { .. })
                | Err(object_store::Error::Precondition { .. }) => Ok(false),
                Err(e) => Err(e),
            }
        });
        match r {
            Ok(true) => {
                // Verified like any write.
                let got = self.stat(ft, name)?;
                if got != len {
                    return Err(other_err(
                        &what,
                        format!("the store holds {got} bytes after a put of {len}"),
                    ));
                }
                Ok(true)
            }
            Ok(false) => Ok(false),
            Err(StorageError::Io { path, source }) if source.to_string().contains("501") => {
                Err(other_err(
                    &path,
                    format!(
                        "the object store does not support conditional writes (If-None-Match: *), which a shared repository needs: {source}"
                    ),
                ))
            }
            Err(e) => Err(e),
        }
    }

    fn modified_ms(&self, ft: FileType, name: &str) -> StorageResult<i64> {
        let (path, what) = self.path(ft, name)?;
        let store = self.store.clone();
        self.run(&what, async move {
            store
                .head(&path)
                .await
                .map(|m| m.last_modified.timestamp_millis())
        })
    }

    fn write_concurrency(&self) -> usize {
        3
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: std::collections::HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const KEYS: [(&str, &str); 2] = [
        ("AWS_ACCESS_KEY_ID", "AK"),
        ("AWS_SECRET_ACCESS_KEY", "very-secret"),
    ];

    #[test]
    fn urls_and_the_environment() {
        let o = S3Options::from_url("s3://backups/stowage/prod/", env(&KEYS)).unwrap();
        assert_eq!(
            (o.bucket.as_str(), o.prefix.as_str()),
            ("backups", "stowage/prod")
        );
        assert_eq!(o.region, "us-east-1");
        assert!(!o.path_style, "AWS: virtual-hosted");
        assert!(!format!("{o:?}").contains("very-secret"));
        let mut e = KEYS.to_vec();
        e.extend([
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:8333"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_SESSION_TOKEN", "tok"),
        ]);
        let o = S3Options::from_url("s3://backups", env(&e)).unwrap();
        assert_eq!(o.prefix, "");
        assert_eq!(o.endpoint.as_deref(), Some("http://127.0.0.1:8333"));
        assert!(o.path_style, "an endpoint: path style");
        assert_eq!(o.region, "eu-west-1");
        assert!(!format!("{o:?}").contains("tok"));
        e.push(("AWS_ENDPOINT_URL_S3", "https://s3.example:9000"));
        let o = S3Options::from_url("s3://backups", env(&e)).unwrap();
        assert_eq!(o.endpoint.as_deref(), Some("https://s3.example:9000"));
    }

    #[test]
    fn bad_urls_and_settings_are_refused_with_the_reason() {
        for (url, why) in [
            ("http://b/p", "s3://"),
            ("s3://", "bucket"),
            ("s3://UPPER", "bucket"),
            ("s3://ab", "bucket"),
            ("s3://b_ucket", "bucket"),
            ("s3://bucket/../x", "prefix"),
            ("s3://bucket/a//b", "prefix"),
            ("s3://bucket/a b", "prefix"),
        ] {
            let e = S3Options::from_url(url, env(&KEYS)).unwrap_err();
            assert!(e.contains(why), "{url}: {e}");
        }
        let e = S3Options::from_url("s3://bucket", env(&[])).unwrap_err();
        assert!(e.contains("AWS_ACCESS_KEY_ID"), "{e}");
        for (ep, why) in [
            ("ftp://h", "http"),
            ("http://", "host"),
            ("http://user:pw@h:1", "scheme, host and port only"),
            ("http://h:1/path", "host"),
        ] {
            let mut k = KEYS.to_vec();
            k.push(("AWS_ENDPOINT_URL", ep));
            let e = S3Options::from_url("s3://bucket", env(&k)).unwrap_err();
            assert!(e.contains(why), "{ep}: {e}");
            assert!(!e.contains("very-secret"));
        }
        let mut k = KEYS.to_vec();
        k.push(("AWS_REGION", "eu west"));
        assert!(
            S3Options::from_url("s3://bucket", env(&k))
                .unwrap_err()
                .contains("region")
        );
    }
}
