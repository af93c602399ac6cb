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

/// `GET /v1/downloads/{task}/{file}`: a download task's link. The node
/// that packaged the file serves it from disk; another node (a shared
/// catalog and repository) packages the same part again while it streams,
/// as for a set link (no `Content-Length`, no `Range`).
pub async fn serve_link(
    State(svc): State<Arc<Service>>,
    method: axum::http::Method,
    Path((task, file)): Path<(i64, String)>,
    Query(q): Query<LinkQuery>,
    headers: HeaderMap,
) -> Response {
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return refused();
    };
    let now = stowage_service::now_ms() / 1000;
    if !svc.downloads.link_ok(task, &file, expires, &sig, now) {
        return refused();
    }
    let Some(path) = svc.downloads.local_file(task, &file) else {
        return match svc.task_link_source(task, &file).await {
            Ok(Some((set, part))) => stream_export(svc, method, set, part, file).await,
            Ok(None) => refused(),
            Err(e) => {
                tracing::error!(error = %e.message, "reading a download link's task failed");
                server_error()
            }
        };
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
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = f.seek(SeekFrom::Start(start)) {
            let _ = send_piece(&rt, &tx, Err(e));
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
                    if send_piece(&rt, &tx, Ok(Bytes::copy_from_slice(&buf[..n]))).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let _ = send_piece(&rt, &tx, Err(e));
                    return;
                }
            }
        }
    });
    let mut r = Response::builder()
        .status(status)
        .header(
            header::CONTENT_TYPE,
            stowage_service::downloads::content_type(&file),
        )
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

/// How long a piece may wait for a client that stopped reading before the
/// transfer is given up (and whatever it holds released).
const STALL: std::time::Duration = std::time::Duration::from_secs(60);

type PieceTx = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// Sends one piece from a blocking thread, giving up after [`STALL`].
fn send_piece(
    rt: &tokio::runtime::Handle,
    tx: &PieceTx,
    piece: Result<Bytes, std::io::Error>,
) -> std::io::Result<()> {
    match rt.block_on(tokio::time::timeout(STALL, tx.send(piece))) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "client went away",
        )),
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::BrokenPipe,
            "client stopped reading",
        )),
    }
}

/// Bytes written by a blocking exporter, sent on in 256 KiB pieces.
struct ChannelWriter {
    rt: tokio::runtime::Handle,
    tx: PieceTx,
    buf: Vec<u8>,
}

impl ChannelWriter {
    const PIECE: usize = 256 * 1024;

    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(Self::PIECE));
        send_piece(&self.rt, &self.tx, Ok(Bytes::from(piece)))
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

/// Ends a streamed body with an error unless disarmed: however the
/// exporting thread ends (an error, a panic), the client never gets a short
/// file that looks complete.
struct BreakOnDrop {
    rt: tokio::runtime::Handle,
    tx: Option<PieceTx>,
}

impl Drop for BreakOnDrop {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = send_piece(&self.rt, &tx, Err(std::io::Error::other("export failed")));
        }
    }
}

fn server_error() -> Response {
    (
        StatusCode::INTERNAL_SERVER_ERROR,
        axum::Json(serde_json::json!({"error": {"code": "InternalError", "message": "the download could not be prepared (see the server log)"}})),
    )
        .into_response()
}

/// `GET /v1/downloads/sets/{account}/{set}/{file}`: an on-demand set link
/// (`stowage_service::downloads`), packaged while it streams. Refused like
/// any invalid link if the set or part is gone; 503 with `Retry-After` when
/// the repository is busy or [`stowage_service::downloads::STREAMS`]
/// streams already run; a `HEAD` is answered without packaging anything.
/// A client that stops reading for a minute loses the transfer.
pub async fn serve_set_link(
    State(svc): State<Arc<Service>>,
    method: axum::http::Method,
    Path((account, set, file)): Path<(String, i64, String)>,
    Query(q): Query<LinkQuery>,
) -> Response {
    let (Some(expires), Some(sig)) = (q.expires, q.sig) else {
        return refused();
    };
    let (set, part) = match svc.open_set_link(&account, set, &file, expires, &sig).await {
        Ok(Some(found)) => found,
        Ok(None) => return refused(),
        Err(e) => {
            tracing::error!(error = %e.message, "reading a set link's set failed");
            return server_error();
        }
    };
    stream_export(svc, method, set, part, file).await
}

/// One part of a set packaged while it is sent (`file`: its export file's
/// name). A `HEAD` is answered without packaging anything; 503 with
/// `Retry-After` when the repository is busy or
/// [`stowage_service::downloads::STREAMS`] streams already run.
async fn stream_export(
    svc: Arc<Service>,
    method: axum::http::Method,
    set: stowage_catalog::BackupSet,
    part: String,
    file: String,
) -> Response {
    let headers = |b: axum::http::response::Builder| {
        b.status(StatusCode::OK)
            .header(
                header::CONTENT_TYPE,
                stowage_service::downloads::content_type(&file),
            )
            .header(header::CACHE_CONTROL, "no-store")
            .header(
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file}\""),
            )
    };
    if method == axum::http::Method::HEAD {
        return headers(Response::builder())
            .body(Body::empty())
            .unwrap_or_else(|_| refused());
    }
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
    let rt = tokio::runtime::Handle::current();
    tokio::task::spawn_blocking(move || {
        let _permit = permit;
        let mut broken = BreakOnDrop {
            rt: rt.clone(),
            tx: Some(tx.clone()),
        };
        let export = match s.open_export(&set, &part) {
            Ok(e) => {
                let _ = ready_tx.send(Ok(()));
                e
            }
            Err(e) => {
                broken.tx = None;
                let _ = ready_tx.send(Err(e));
                return;
            }
        };
        let mut w = ChannelWriter {
            rt,
            tx,
            buf: Vec::with_capacity(ChannelWriter::PIECE),
        };
        // The export ends with a flush, which sends the last piece.
        match export.write_to(&mut w) {
            Ok(_) => broken.tx = None,
            Err(e) => {
                tracing::warn!(set = set.id, part = %part, error = %e.message, "on-demand download failed");
            }
        }
    });
    match ready.await {
        Ok(Ok(())) => {}
        Ok(Err(e)) if e.kind.is_transient() => {
            return busy("the repository is busy; try again shortly");
        }
        // The set has no such part (any more).
        Ok(Err(e)) if e.kind == stowage_service::DbErrorKind::Unsupported => return refused(),
        Ok(Err(e)) => {
            tracing::error!(error = %e.message, "opening a set for a download link failed");
            return server_error();
        }
        Err(_) => return server_error(),
    }
    headers(Response::builder())
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
