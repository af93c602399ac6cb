//! A small synchronous PostgreSQL frontend: startup, authentication
//! (SCRAM-SHA-256, MD5, cleartext), simple queries, COPY OUT messages.
//! Message framing and SCRAM come from `postgres-protocol`; this module only
//! drives them over a `TcpStream`, and maps the server's errors to
//! [`ErrorKind`]s a user can act on.

use crate::{ConnSpec, EngineError, ErrorKind};
use bytes::BytesMut;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use postgres_protocol::message::{backend::Message, frontend};
use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// An `ErrorResponse`, kept whole.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    pub severity: String,
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

fn parse_error(fields: Vec<(u8, String)>) -> ServerError {
    let mut e = ServerError::default();
    for (t, v) in fields {
        match t {
            b'V' => e.severity = v,
            b'S' if e.severity.is_empty() => e.severity = v,
            b'C' => e.code = v,
            b'M' => e.message = v,
            b'D' => e.detail = Some(v),
            b'H' => e.hint = Some(v),
            _ => {}
        }
    }
    e
}

/// Classifies a server error into what the user should do about it.
pub fn classify(e: &ServerError, user: &str) -> EngineError {
    let kind = match e.code.as_str() {
        "28P01" => ErrorKind::Authentication,
        "28000" if e.message.contains("password") => ErrorKind::Authentication,
        "28000" | "42501" => ErrorKind::Permission,
        "53300" | "53400" | "53200" => ErrorKind::Capacity,
        "57P01" | "57P02" | "57P03" | "08006" => ErrorKind::ServerGone,
        "0A000" => ErrorKind::Unsupported,
        "3D000" => ErrorKind::Unreachable,
        _ => ErrorKind::Protocol,
    };
    let advice = match kind {
        ErrorKind::Authentication => format!(" (check the password of role {user:?})"),
        // pg_hba rejected the connection before any role check: the role's
        // attributes are not the problem.
        ErrorKind::Permission if e.message.contains("pg_hba.conf") => {
            " (add a pg_hba.conf line allowing this host to open replication connections, e.g. `host replication <role> <this host>/32 scram-sha-256`, then reload the server)".into()
        }
        ErrorKind::Permission if e.message.contains("replication") || e.message.contains("walsender") => {
            format!(" (role {user:?} needs the REPLICATION attribute and a pg_hba.conf entry for replication connections)")
        }
        ErrorKind::Capacity if e.message.contains("max_wal_senders") => {
            " (raise max_wal_senders on the server, or wait for other replication connections to end)".into()
        }
        _ => String::new(),
    };
    EngineError::new(kind, format!("PostgreSQL refused: {}{advice}", e))
}

/// The connection: plain TCP or TLS over it.
enum Stream {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.flush(),
            Stream::Tls(s) => s.flush(),
        }
    }
}

fn timed_out(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
    )
}

/// Asks for TLS (SSLRequest) and, if the server agrees, does the handshake.
/// `prefer` falls back to plain TCP when the server says no.
fn negotiate_tls(mut sock: TcpStream, spec: &ConnSpec) -> Result<Stream, EngineError> {
    use super::tls::TlsMode;
    if spec.tls_mode == TlsMode::Disable {
        return Ok(Stream::Plain(sock));
    }
    let mut req = BytesMut::new();
    frontend::ssl_request(&mut req);
    sock.write_all(&req)
        .map_err(io_err("while asking for TLS"))?;
    let deadline = Instant::now() + spec.connect_timeout;
    let mut answer = [0u8; 1];
    loop {
        match sock.read(&mut answer) {
            Ok(1) => break,
            Ok(_) => {
                return Err(io_err("while asking for TLS")(
                    io::ErrorKind::UnexpectedEof.into(),
                ));
            }
            Err(e) if timed_out(&e) && Instant::now() < deadline => continue,
            Err(e) => return Err(io_err("while asking for TLS")(e)),
        }
    }
    match answer[0] {
        b'S' => {}
        b'N' if spec.tls_mode == TlsMode::Prefer => return Ok(Stream::Plain(sock)),
        b'N' => {
            return Err(EngineError::new(
                ErrorKind::Unsupported,
                format!(
                    "the server does not accept TLS connections, which sslmode={} requires (set ssl = on in postgresql.conf, or lower sslmode)",
                    spec.tls_mode.as_str()
                ),
            ));
        }
        other => {
            return Err(EngineError::new(
                ErrorKind::Protocol,
                format!("unexpected answer {other:#x} to the TLS request"),
            ));
        }
    }
    let cfg = super::tls::client_config(spec.tls_mode, spec.tls_root_cert.as_deref())?;
    let name = super::tls::server_name(&spec.host)?;
    let mut conn = rustls::ClientConnection::new(cfg, name)
        .map_err(|e| EngineError::new(ErrorKind::Protocol, format!("TLS setup failed: {e}")))?;
    while conn.is_handshaking() {
        match conn.complete_io(&mut sock) {
            Ok(_) => {}
            Err(e) if timed_out(&e) && Instant::now() < deadline => {}
            Err(e) => {
                let cert = e
                    .get_ref()
                    .and_then(|i| i.downcast_ref::<rustls::Error>())
                    .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(_)));
                return Err(if cert {
                    EngineError::new(
                        ErrorKind::Authentication,
                        format!(
                            "the server's TLS certificate was not accepted (sslmode={}): {e}",
                            spec.tls_mode.as_str()
                        ),
                    )
                } else {
                    EngineError::new(ErrorKind::Protocol, format!("TLS handshake failed: {e}"))
                });
            }
        }
    }
    Ok(Stream::Tls(Box::new(rustls::StreamOwned::new(conn, sock))))
}

/// A TCP connection to the server (read timeout 500 ms, for cancel checks).
fn tcp(spec: &ConnSpec) -> Result<TcpStream, EngineError> {
    let addr = format!("{}:{}", spec.host, spec.port);
    let addrs: Vec<_> = if spec.addrs.is_empty() {
        addr.to_socket_addrs()
            .map_err(|e| {
                EngineError::new(
                    ErrorKind::Unreachable,
                    format!("cannot resolve {addr}: {e}"),
                )
            })?
            .collect()
    } else {
        spec.addrs.clone()
    };
    let mut last = None;
    let mut sock = None;
    for a in &addrs {
        match TcpStream::connect_timeout(a, spec.connect_timeout) {
            Ok(s) => {
                sock = Some(s);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let sock = sock.ok_or_else(|| {
        EngineError::new(
            ErrorKind::Unreachable,
            format!(
                "could not connect to PostgreSQL at {addr}: {}",
                last.map(|e| e.to_string())
                    .unwrap_or_else(|| "no address".into())
            ),
        )
    })?;
    sock.set_nodelay(true).ok();
    sock.set_read_timeout(Some(Duration::from_millis(500))).ok();
    Ok(sock)
}

pub struct PgConn {
    sock: Stream,
    buf: BytesMut,
    out: BytesMut,
    pub params: HashMap<String, String>,
    user: String,
    /// Cancel check while waiting for data.
    idle_limit: Duration,
}

/// One result set of a simple query (text format).
#[derive(Debug, Default, Clone)]
pub struct ResultSet {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

fn io_err(what: &str) -> impl FnOnce(io::Error) -> EngineError + '_ {
    move |e| match e.kind() {
        io::ErrorKind::UnexpectedEof
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionAborted => EngineError::new(
            ErrorKind::ServerGone,
            format!("the database server closed the connection {what}"),
        ),
        _ => EngineError::new(
            ErrorKind::ServerGone,
            format!("connection error {what}: {e}"),
        ),
    }
}

impl PgConn {
    /// Connects and authenticates. `replication` opens a physical
    /// replication (walsender) connection.
    pub fn connect(spec: &ConnSpec, replication: bool) -> Result<PgConn, EngineError> {
        let sock = match negotiate_tls(tcp(spec)?, spec) {
            Ok(s) => s,
            // As libpq: `prefer` goes on without TLS when the handshake fails.
            Err(e)
                if spec.tls_mode == super::tls::TlsMode::Prefer
                    && matches!(e.kind, ErrorKind::Protocol | ErrorKind::Authentication) =>
            {
                tracing::warn!(host = %spec.host, error = %e, "TLS failed; sslmode=prefer: connecting without TLS");
                Stream::Plain(tcp(spec)?)
            }
            Err(e) => return Err(e),
        };
        let mut c = PgConn {
            sock,
            buf: BytesMut::with_capacity(512 * 1024),
            out: BytesMut::new(),
            params: HashMap::new(),
            user: spec.user.clone(),
            idle_limit: Duration::from_secs(30),
        };
        let db = spec.dbname.clone().unwrap_or_else(|| "postgres".into());
        let mut params = vec![
            ("user", spec.user.as_str()),
            ("database", db.as_str()),
            ("application_name", "stowage"),
        ];
        if replication {
            params.push(("replication", "true"));
        }
        frontend::startup_message(params, &mut c.out)
            .map_err(|e| EngineError::new(ErrorKind::Protocol, e.to_string()))?;
        c.flush()?;
        c.authenticate(spec)?;
        Ok(c)
    }

    fn flush(&mut self) -> Result<(), EngineError> {
        let out = self.out.split();
        self.sock.write_all(&out).map_err(io_err("while sending"))
    }

    pub fn set_idle_limit(&mut self, d: Duration) {
        self.idle_limit = d;
    }

    /// Reads one message. `cancelled` is polled while waiting.
    pub fn read(&mut self, cancelled: &dyn Fn() -> bool) -> Result<Message, EngineError> {
        let started = Instant::now();
        loop {
            if let Some(m) = Message::parse(&mut self.buf).map_err(|e| {
                EngineError::new(ErrorKind::Protocol, format!("bad message from server: {e}"))
            })? {
                return Ok(m);
            }
            if cancelled() {
                return Err(EngineError::new(ErrorKind::Cancelled, "cancelled"));
            }
            if self.buf.capacity() - self.buf.len() < 64 * 1024 {
                self.buf.reserve(256 * 1024);
            }
            let len = self.buf.len();
            let cap = self.buf.capacity();
            self.buf.resize(cap, 0);
            match self.sock.read(&mut self.buf[len..]) {
                Ok(0) => {
                    self.buf.truncate(len);
                    return Err(io_err("unexpectedly")(io::ErrorKind::UnexpectedEof.into()));
                }
                Ok(n) => self.buf.truncate(len + n),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    self.buf.truncate(len);
                    if started.elapsed() > self.idle_limit {
                        return Err(EngineError::new(
                            ErrorKind::ServerGone,
                            format!(
                                "no data from the database server for {} s",
                                self.idle_limit.as_secs()
                            ),
                        ));
                    }
                }
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(io_err("unexpectedly")(e));
                }
            }
        }
    }

    pub fn server_error(
        &self,
        body: &postgres_protocol::message::backend::ErrorResponseBody,
    ) -> ServerError {
        let mut v = Vec::new();
        let mut it = body.fields();
        while let Ok(Some(f)) = it.next() {
            v.push((
                f.type_(),
                String::from_utf8_lossy(f.value_bytes()).into_owned(),
            ));
        }
        parse_error(v)
    }

    fn authenticate(&mut self, spec: &ConnSpec) -> Result<(), EngineError> {
        let never = || false;
        let password = || -> Result<&str, EngineError> {
            spec.password.as_ref().map(|p| p.expose()).ok_or_else(|| {
                EngineError::new(
                    ErrorKind::Authentication,
                    format!(
                        "the server asks a password for role {:?} and none is configured",
                        spec.user
                    ),
                )
            })
        };
        let mut scram: Option<ScramSha256> = None;
        loop {
            match self.read(&never)? {
                Message::AuthenticationOk => {}
                Message::AuthenticationCleartextPassword => {
                    frontend::password_message(password()?.as_bytes(), &mut self.out)
                        .map_err(|e| EngineError::new(ErrorKind::Protocol, e.to_string()))?;
                    self.flush()?;
                }
                Message::AuthenticationMd5Password(b) => {
                    let h = postgres_protocol::authentication::md5_hash(
                        spec.user.as_bytes(),
                        password()?.as_bytes(),
                        b.salt(),
                    );
                    frontend::password_message(h.as_bytes(), &mut self.out)
                        .map_err(|e| EngineError::new(ErrorKind::Protocol, e.to_string()))?;
                    self.flush()?;
                }
                Message::AuthenticationSasl(b) => {
                    let mut mechs = b.mechanisms();
                    let mut ok = false;
                    while let Ok(Some(m)) = mechs.next() {
                        ok |= m == SCRAM_SHA_256;
                    }
                    if !ok {
                        return Err(EngineError::new(
                            ErrorKind::Unsupported,
                            "the server offers no SASL mechanism this client supports (SCRAM-SHA-256)",
                        ));
                    }
                    let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut self.out)
                        .map_err(|e| EngineError::new(ErrorKind::Protocol, e.to_string()))?;
                    self.flush()?;
                    scram = Some(s);
                }
                Message::AuthenticationSaslContinue(b) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        EngineError::new(ErrorKind::Protocol, "SASL continue without start")
                    })?;
                    s.update(b.data()).map_err(|e| {
                        EngineError::new(ErrorKind::Authentication, format!("SCRAM: {e}"))
                    })?;
                    frontend::sasl_response(s.message(), &mut self.out)
                        .map_err(|e| EngineError::new(ErrorKind::Protocol, e.to_string()))?;
                    self.flush()?;
                }
                Message::AuthenticationSaslFinal(b) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        EngineError::new(ErrorKind::Protocol, "SASL final without start")
                    })?;
                    s.finish(b.data()).map_err(|e| {
                        EngineError::new(
                            ErrorKind::Authentication,
                            format!("SCRAM server signature invalid: {e}"),
                        )
                    })?;
                }
                Message::ParameterStatus(p) => {
                    if let (Ok(n), Ok(v)) = (p.name(), p.value()) {
                        self.params.insert(n.to_string(), v.to_string());
                    }
                }
                Message::BackendKeyData(_) | Message::NoticeResponse(_) => {}
                Message::ReadyForQuery(_) => return Ok(()),
                Message::ErrorResponse(b) => {
                    let e = self.server_error(&b);
                    return Err(classify(&e, &self.user));
                }
                _ => {
                    return Err(EngineError::new(
                        ErrorKind::Unsupported,
                        "the server asked for an authentication method this client does not support (GSS/SSPI)",
                    ));
                }
            }
        }
    }

    /// Sends a query without waiting for the answer.
    pub fn send_query(&mut self, q: &str) -> Result<(), EngineError> {
        frontend::query(q, &mut self.out)
            .map_err(|e| EngineError::new(ErrorKind::Protocol, e.to_string()))?;
        self.flush()
    }

    /// Runs a simple query and returns its result sets.
    pub fn simple_query(&mut self, q: &str) -> Result<Vec<ResultSet>, EngineError> {
        self.send_query(q)?;
        let mut sets = Vec::new();
        let mut err = None;
        loop {
            match self.read(&|| false)? {
                Message::RowDescription(d) => sets.push(ResultSet {
                    columns: columns(&d),
                    rows: Vec::new(),
                }),
                Message::DataRow(r) => {
                    let row = data_row(&r);
                    match sets.last_mut() {
                        Some(s) => s.rows.push(row),
                        None => {
                            return Err(EngineError::new(
                                ErrorKind::Protocol,
                                "data row without description",
                            ));
                        }
                    }
                }
                Message::ErrorResponse(b) => err = Some(self.server_error(&b)),
                Message::ReadyForQuery(_) => break,
                _ => {}
            }
        }
        match err {
            Some(e) => Err(classify(&e, &self.user)),
            None => Ok(sets),
        }
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self.sock, Stream::Tls(_))
    }

    pub fn close(mut self) {
        frontend::terminate(&mut self.out);
        let _ = self.flush();
    }
}

/// Column names of a `RowDescription`.
pub fn columns(d: &postgres_protocol::message::backend::RowDescriptionBody) -> Vec<String> {
    let mut cols = Vec::new();
    let mut it = d.fields();
    while let Ok(Some(f)) = it.next() {
        cols.push(f.name().to_string());
    }
    cols
}

pub fn data_row(r: &postgres_protocol::message::backend::DataRowBody) -> Vec<Option<String>> {
    let buf = r.buffer();
    let mut out = Vec::new();
    let mut it = r.ranges();
    while let Ok(Some(range)) = it.next() {
        out.push(range.map(|rg| String::from_utf8_lossy(&buf[rg]).into_owned()));
    }
    out
}
