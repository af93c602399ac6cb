//! Serving download files by their signed, expiring links
//! (`stowage_service::downloads`): no access key, the link is the
//! permission. Streamed from disk in 256 KiB pieces (never the whole file in
//! memory), with `Content-Length`, `ETag`, `Content-Disposition` and single
//! `Range` requests. A link that is changed, expired, of another server, or
//! whose file is gone gets the same 403 that says nothing more.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::io::{Read, Seek, SeekFrom};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use stowage_service::Service;

#[derive(Deserialize)]
pub struct LinkQuery {
    expires: Option<i64>,
    sig: Option<String>,
}

fn refused() -> Response {
    (
        StatusCode::FORBIDDEN,
        axum::Json(serde_json::json!({"error": {"code": "LinkRefused", "message": "this download link is not valid (changed, expired, or not this server's)"}})),
    )
        .into_response()
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` against a file of `len` bytes.
fn range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            (len.checked_sub(n.min(len))?, len.checked_sub(1)?)
        }
        (a, "") => (a.parse().ok()?, len.checked_sub(1)?),
        (a, b) => (
            a.parse().ok()?,
            b.parse::<u64>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && end < len).then_some((start, end))
}

/// A file's bytes from a blocking reader thread.
struct FileStream(tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>);

impl futures_core::Stream for FileStream {
    type Item = Result<Bytes, std::io::Error>;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

pub async fn serve_link(
    State(svc): State<Arc<Service>>,
    Path((task, file)): Path<(i64, String)>,
    Query(q): Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return refused();
    };
    let now = stowage_service::now_ms() / 1000;
    let Some(path) = svc.downloads.open_link(task, &file, expires, &sig, now) else {
        return refused();
    };
    let Ok(mut f) = std::fs::File::open(&path) else {
        return refused();
    };
    let Ok(meta) = f.metadata() else {
        return refused();
    };
    let len = meta.len();
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let etag = format!("\"{task}-{len:x}-{mtime:x}\"");
    let asked = headers.get(header::RANGE).and_then(|h| h.to_str().ok());
    let (status, start, end) = match asked {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(h) => match range(h, len) {
            Some((a, b)) => (StatusCode::PARTIAL_CONTENT, a, b),
            None => {
                return (
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    [(header::CONTENT_RANGE, format!("bytes */{len}"))],
                )
                    .into_response();
            }
        },
    };
    let count = if len == 0 { 0 } else { end - start + 1 };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        if let Err(e) = f.seek(SeekFrom::Start(start)) {
            let _ = tx.blocking_send(Err(e));
            return;
        }
        let mut left = count;
        let mut buf = vec![0u8; 256 * 1024];
        while left > 0 {
            let want = buf.len().min(left as usize);
            match f.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => {
                    left -= n as u64;
                    if tx
                        .blocking_send(Ok(Bytes::copy_from_slice(&buf[..n])))
                        .is_err()
                    {
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
    });
    let mut r = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CONTENT_LENGTH, count)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag)
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        );
    if status == StatusCode::PARTIAL_CONTENT {
        r = r.header(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"));
    }
    r.body(Body::from_stream(FileStream(rx)))
        .unwrap_or_else(|_| refused())
}

/// Bytes written by a blocking exporter, sent on in 256 KiB pieces.
struct ChannelWriter {
    tx: tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    const PIECE: usize = 256 * 1024;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        self.tx
            .blocking_send(Ok(Bytes::from(piece)))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "client went away"))
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        let n = b.len().min(Self::PIECE - self.buf.len());
        self.buf.extend_from_slice(&b[..n]);
        if self.buf.len() == Self::PIECE {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// `GET /v1/downloads/sets/{account}/{set}/{file}`: an on-demand set link
/// (`stowage_service::downloads`), packaged while it streams. Refused like
/// any invalid link if the set or part is gone; 503 with `Retry-After` when
/// the repository is busy or [`stowage_service::downloads::STREAMS`]
/// streams already run.
pub async fn serve_set_link(
    State(svc): State<Arc<Service>>,
    Path((account, set, file)): Path<(String, i64, String)>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return refused();
    };
    let Some((set, part)) = svc.open_set_link(&account, set, &file, expires, &sig).await else {
        return refused();
    };
    let busy = |why: &str| {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "30")],
            axum::Json(serde_json::json!({"error": {"code": "Busy", "message": why}})),
        )
            .into_response()
    };
    let Ok(permit) = svc.downloads.streams.clone().try_acquire_owned() else {
        return busy("too many downloads are being packaged; try again shortly");
    };
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let (ready_tx, ready) = tokio::sync::oneshot::channel();
    let s = svc.clone();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let export = match s.open_export(&set, &part) {
            Ok(e) => {
                let _ = ready_tx.send(Ok(()));
                e
            }
            Err(e) => {
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut w = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(ChannelWriter::PIECE),
        };
        // The export ends with a flush, which sends the last piece.
        if let Err(e) = export.write_to(&mut w) {
            // The body ends in an error: the client sees a broken transfer,
            // never a short file that looks complete.
            tracing::warn!(set = set.id, part = %part, error = %e.message, "on-demand download failed");
            let _ = tx.blocking_send(Err(std::io::Error::other("export failed")));
        }
    });
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind.is_transient() => {
            return busy("the repository is busy; try again shortly");
        }
        _ => return refused(),
    }
    Response::builder()
        .status(StatusCode::OK)
        .header(header::CONTENT_TYPE, "application/x-tar")
        .header(header::CACHE_CONTROL, "no-store")
        .header(
            header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"{file}\""),
        )
        .body(Body::from_stream(FileStream(rx)))
        .unwrap_or_else(|_| refused())
}

#[cfg(test)]
mod tests {
    use super::range;

    #[test]
    fn ranges() {
        assert_eq!(range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(range("bytes=95-200", 100), Some((95, 99)));
        assert_eq!(range("bytes=100-", 100), None);
        assert_eq!(range("bytes=5-1", 100), None);
        assert_eq!(range("bytes=0-1,3-4", 100), None);
        assert_eq!(range("items=0-1", 100), None);
    }
}
