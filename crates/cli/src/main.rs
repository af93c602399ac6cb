//! `stowage`: the server and its command-line client in one binary.

mod client;
mod watch;

use clap::{Args, Parser, Subcommand};
use client::{CallError, Client, enc};
use indicatif::HumanBytes;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::process::ExitCode;

const DEFAULT_SERVER: &str = "http://127.0.0.1:8420";

#[derive(Parser)]
#[command(
    name = "stowage",
    version,
    about = "Self-hosted database backup service: consistent online backups into a deduplicated, compressed, encrypted repository, with live task progress.",
    long_about = "Self-hosted database backup service.\n\n\
`stowage serve` runs the server (API, task engine, repository). Every other command is a client of a running server's REST API.\n\n\
Quick start:\n  stowage serve &\n  stowage instance add --name pg1 --host 127.0.0.1 --port 5432 --user postgres\n  stowage backup pg1 --wait\n  stowage set list\n  stowage restore <set-id> --target /srv/restored --wait\n\n\
Exit codes: 0 success, 1 the task or job failed or was cancelled, 2 the server refused the request, 3 the server could not be reached."
)]
struct Cli {
    #[command(flatten)]
    g: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Global {
    /// Server URL for client commands.
    #[arg(long, global = true, env = "STOWAGE_SERVER", default_value = DEFAULT_SERVER)]
    server: String,
    /// Data directory (server state; the client reads admin-credentials from it by default).
    #[arg(long, global = true, env = "STOWAGE_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Access key id (default: from <data-dir>/admin-credentials).
    #[arg(long, global = true, env = "STOWAGE_ACCESS_KEY_ID")]
    access_key_id: Option<String>,
    /// Access key secret (default: from <data-dir>/admin-credentials).
    #[arg(
        long,
        global = true,
        env = "STOWAGE_ACCESS_KEY_SECRET",
        hide_env_values = true
    )]
    access_key_secret: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: REST API, task engine and repository, with embedded defaults.
    Serve(ServeArgs),
    /// Register, list, check and remove database instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Start a backup of an instance (by id or name).
    Backup {
        instance: String,
        /// Follow the task with a progress bar until it ends.
        #[arg(long)]
        wait: bool,
        /// Idempotency token: repeating a request with the same token returns the same task.
        #[arg(long)]
        client_token: Option<String>,
    },
    /// Inspect and control backup tasks.
    #[command(subcommand)]
    Task(TaskCmd),
    /// Inspect and delete backup sets.
    #[command(subcommand)]
    Set(SetCmd),
    /// Show or change an instance's backup policy: when automated backups run and how long sets are kept.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Restore a backup set into an empty folder on the server's machine.
    #[command(
        after_help = "Examples:\n  stowage restore 7 --target pg1-monday          # into <restore root>/<your account>/pg1-monday\n  stowage restore 7 --target /srv/restores/acc-default/pg1 --force   (admin, inside a root)"
    )]
    Restore {
        /// Id of the backup set (see `stowage set list`).
        set_id: i64,
        /// Folder on the SERVER's machine, sent as given: a relative path is
        /// resolved by the server under your account's folder of the first
        /// restore root (`<root>/<account-id>/…`); an absolute path must lie
        /// inside a restore root (other accounts' folders: admin only).
        /// Created if missing; must be empty unless --force.
        #[arg(long)]
        target: String,
        /// Replace the contents of a non-empty target folder.
        #[arg(long)]
        force: bool,
        /// Return at once instead of following the restore.
        #[arg(long)]
        no_wait: bool,
    },
    /// Re-read every pack of the repository (admin), or only those of one
    /// set (--set, its owner), and check every chunk's hash and MAC.
    Verify {
        /// Verify only the packs this backup set needs.
        #[arg(long, value_name = "SET_ID")]
        set: Option<i64>,
        /// Return at once instead of following the job.
        #[arg(long)]
        no_wait: bool,
    },
    /// Reclaim repository space no backup set uses any more.
    Gc {
        #[arg(long)]
        no_wait: bool,
    },
    /// Inspect restore, verify and gc jobs.
    #[command(subcommand)]
    Job(JobCmd),
    /// Manage accounts (admin key only). Every instance, task and set belongs to one account.
    #[command(subcommand)]
    Account(AccountCmd),
    /// Manage access keys. A new key's secret is shown once.
    #[command(subcommand)]
    Key(KeyCmd),
}

#[derive(Subcommand)]
enum AccountCmd {
    List,
    Add { name: String },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List keys (of --account, or of the caller's own account).
    List {
        #[arg(long)]
        account: Option<String>,
    },
    /// Create a key; prints its id and secret (the only time the secret is shown).
    Create {
        #[arg(long)]
        account: Option<String>,
        #[arg(long, default_value = "")]
        description: String,
    },
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Limit a key with a RAM-style policy (JSON file), or lift the limit.
    /// Example: {"Version":"1","Statement":[{"Effect":"Allow","Action":"rds:Describe*","Resource":"acs:rds:*:*:dbinstance/*"}]}
    Policy {
        id: String,
        /// Policy document (JSON).
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        file: Option<PathBuf>,
        /// Remove the policy: the key may do everything its account may.
        #[arg(long)]
        clear: bool,
    },
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "127.0.0.1:8420")]
    listen: String,
    /// Repository: a local folder or file:///path (default: <data-dir>/repository).
    /// Other schemes (s3://…) are refused: not supported by this build yet.
    #[arg(long, env = "STOWAGE_REPOSITORY")]
    repository: Option<String>,
    /// Folder that directory restores may write into (repeatable; default
    /// <data-dir>/restores). Each account restores into <root>/<account-id>/;
    /// only the admin account may use the whole root.
    #[arg(long = "restore-root", value_name = "DIR")]
    restore_roots: Vec<PathBuf>,
    /// Hardening: a network (10.0.0.0/8), address or host name that
    /// instances of accounts other than the admin's may point at
    /// (repeatable; default: anywhere).
    #[arg(long = "tenant-allow", value_name = "CIDR|HOST")]
    tenant_allow: Vec<stowage_service::netpolicy::AllowRule>,
    /// File holding the repository password (default: generated into <data-dir>/repository.password).
    #[arg(long, env = "STOWAGE_REPO_PASSWORD_FILE")]
    repo_password_file: Option<PathBuf>,
    /// Name of this node.
    #[arg(long, env = "STOWAGE_NODE", default_value = "local")]
    node: String,
    /// Cloud-dialect requests per second per access key before `Throttling.User`.
    #[arg(long, env = "STOWAGE_RATE_PER_KEY", default_value_t = 5000)]
    rate_per_key: u32,
    /// Average chunk size in KiB for a NEW repository (min = avg/4, max = avg*4). For benchmarks.
    #[arg(long, hide = true)]
    chunk_avg_kib: Option<u32>,
    /// Do not run automated backups, expiry or automatic gc (manual operations still work).
    #[arg(long, env = "STOWAGE_NO_SCHEDULER")]
    no_scheduler: bool,
    /// How many automated backups may run at once; the others wait their turn.
    #[arg(long, env = "STOWAGE_MAX_AUTOMATED_BACKUPS", default_value_t = 4)]
    max_automated_backups: usize,
    /// Seconds between two passes of the scheduler.
    #[arg(long, hide = true, default_value_t = 10)]
    scheduler_interval_secs: u64,
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum InstanceCmd {
    /// Register a database. The password comes from STOWAGE_DB_PASSWORD or --password-file.
    Add {
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "postgresql")]
        engine: String,
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 5432)]
        port: u16,
        #[arg(long, default_value = "postgres")]
        user: String,
        /// Read the password from this file.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Read the password from this environment variable.
        #[arg(long, default_value = "STOWAGE_DB_PASSWORD")]
        password_env: Option<String>,
        #[arg(long)]
        dbname: Option<String>,
        /// Id format: rds (rm-…), polardb (pc-…), dds (dds-…), tencent_mongo (cmgo-…).
        #[arg(long)]
        dialect: Option<String>,
        /// Throttle backups of this instance to this many kB/s (32 to 1048576).
        #[arg(long)]
        max_rate_kbps: Option<u32>,
        /// TLS to the database, as libpq: disable, prefer (default), require, verify-ca, verify-full.
        #[arg(long)]
        sslmode: Option<String>,
        /// CA certificate (PEM) for verify-ca / verify-full: an absolute path on the server's machine, or "system" for the OS trust store.
        #[arg(long)]
        sslrootcert: Option<String>,
        /// Register without connecting first (by default the server connects
        /// and checks privileges, and refuses an instance it cannot back up).
        #[arg(long)]
        no_check: bool,
    },
    /// List registered instances.
    List,
    /// Show one instance.
    Show { instance: String },
    /// Connect to the instance and check privileges and settings.
    Check { instance: String },
    /// Change how to reach an instance (options left out stay as they are);
    /// the next backup uses them. A new password comes from --password-file
    /// or the variable named by --password-env.
    Set {
        instance: String,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(long)]
        user: Option<String>,
        /// Read the new password from this file.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Read the new password from this environment variable.
        #[arg(long)]
        password_env: Option<String>,
        #[arg(long)]
        dbname: Option<String>,
        #[arg(long)]
        max_rate_kbps: Option<u32>,
        #[arg(long)]
        sslmode: Option<String>,
        #[arg(long)]
        sslrootcert: Option<String>,
    },
    /// Unregister an instance (its backup sets stay).
    Remove { instance: String },
}

#[derive(Subcommand)]
enum TaskCmd {
    /// List backup tasks, newest first.
    List {
        #[arg(long)]
        instance: Option<String>,
        /// Comma-separated states, e.g. running,pending.
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Show one task.
    Show { id: i64 },
    /// Follow a task with a progress bar until it ends.
    Watch { id: i64 },
    /// Ask a running task to stop.
    Cancel { id: i64 },
}

#[derive(Subcommand)]
enum SetCmd {
    /// List backup sets, newest first.
    List {
        #[arg(long)]
        instance: Option<String>,
    },
    /// Show one set; --files lists its files.
    Show {
        id: i64,
        #[arg(long)]
        files: bool,
    },
    /// Delete a set (its data is reclaimed by the next gc).
    Delete { id: i64 },
    /// Change when a set expires (a policy change no longer affects it).
    Expire {
        id: i64,
        /// Expiry time, RFC 3339 (e.g. 2027-01-01T00:00:00Z).
        #[arg(long, required_unless_present = "never", conflicts_with = "never")]
        at: Option<String>,
        /// Keep the set until it is deleted.
        #[arg(long)]
        never: bool,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Show the policy (the default until one is set: daily 02:00Z-03:00Z, kept 7 days).
    Show { instance: String },
    /// Change the policy; options left out stay as they are.
    Set {
        instance: String,
        /// Daily window for automated backups, UTC: HH:mmZ-HH:mmZ (e.g. 02:00Z-03:00Z).
        #[arg(long)]
        window: Option<String>,
        /// Days automated backups run on, e.g. Monday,Wednesday,Friday.
        #[arg(long)]
        weekdays: Option<String>,
        /// Keep each set this many days after it finished (1 to 7300).
        #[arg(long)]
        retention_days: Option<u32>,
        /// Turn automated backups on.
        #[arg(long, conflicts_with = "disable")]
        enable: bool,
        /// Turn automated backups off (retention still applies).
        #[arg(long)]
        disable: bool,
    },
}

#[derive(Subcommand)]
enum JobCmd {
    List,
    Show { id: i64 },
    Watch { id: i64 },
    Cancel { id: i64 },
}

/// A path made absolute against the current directory (server-side flags).
fn absolute(p: &std::path::Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf())
}

fn default_data_dir() -> PathBuf {
    match std::env::var_os("HOME") {
        Some(h) => PathBuf::from(h).join(".local/share/stowage"),
        None => PathBuf::from("stowage-data"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let data_dir = cli.g.data_dir.clone().unwrap_or_else(default_data_dir);
    match cli.cmd {
        Cmd::Serve(a) => serve(a, data_dir),
        cmd => {
            let c = match client_for(&cli.g, &data_dir) {
                Ok(c) => c,
                Err(m) => {
                    eprintln!("error: {m}");
                    return ExitCode::from(2);
                }
            };
            match run(&c, &cli.g, cmd) {
                Ok(code) => ExitCode::from(code),
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::from(e.exit_code() as u8)
                }
            }
        }
    }
}

fn client_for(g: &Global, data_dir: &std::path::Path) -> Result<Client, String> {
    let (id, secret) = match (&g.access_key_id, &g.access_key_secret) {
        (Some(i), Some(s)) => (i.clone(), s.clone()),
        _ => {
            let f = data_dir.join("admin-credentials");
            let text = std::fs::read_to_string(&f).map_err(|e| {
                format!(
                    "no access key: set STOWAGE_ACCESS_KEY_ID and STOWAGE_ACCESS_KEY_SECRET, or let the client read {} ({e})",
                    f.display()
                )
            })?;
            let v: Value =
                serde_json::from_str(&text).map_err(|e| format!("{}: {e}", f.display()))?;
            (
                v["access_key_id"].as_str().unwrap_or_default().to_string(),
                v["access_key_secret"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    Ok(Client::new(&g.server, &id, &secret))
}

fn serve(a: ServeArgs, data_dir: PathBuf) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let res = rt.block_on(async move {
        let repo_password = match &a.repo_password_file {
            Some(f) => Some(stowage_core::Secret::new(
                std::fs::read_to_string(f).map_err(|e| format!("{}: {e}", f.display()))?.trim().to_string(),
            )),
            None => None,
        };
        let cfg = stowage_service::Config {
            data_dir: data_dir.clone(),
            repository: a.repository,
            repo_password,
            node: a.node,
            insecure_fast_kdf: std::env::var("STOWAGE_INSECURE_FAST_KDF").is_ok_and(|v| v == "1"),
            chunker: a.chunk_avg_kib.map(|k| stowage_repo::ChunkerParams { min: k * 256, avg: k * 1024, max: k * 4096 }),
            restore_roots: a.restore_roots.iter().map(|r| absolute(r)).collect(),
            tenant_allow: a.tenant_allow,
        };
        let (svc, boot) = stowage_service::Service::start(cfg).await.map_err(|e| e.to_string())?;
        if let Some(p) = &boot.admin_credentials_file {
            tracing::info!(file = %p.display(), "created the admin access key (first start); the CLI reads it from this file; keep it private");
        }
        if boot.interrupted_tasks > 0 {
            tracing::warn!(count = boot.interrupted_tasks, "tasks interrupted by the last shutdown were marked failed");
        }
        tracing::info!(data_dir = %data_dir.display(), repository = %boot.repository, "stowage ready");
        let roots: Vec<String> = svc.restore_roots().iter().map(|r| r.display().to_string()).collect();
        tracing::info!(roots = %roots.join(", "), "directory restores go into <root>/<account-id>/ (the admin account: anywhere inside a root)");
        if a.no_scheduler {
            tracing::info!("scheduler off: no automated backups, expiry or automatic gc");
        } else {
            svc.spawn_scheduler(
                std::time::Duration::from_secs(a.scheduler_interval_secs.max(1)),
                a.max_automated_backups,
            );
        }
        let listener = tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
        tracing::info!("listening on http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let rpc = stowage_api::alibaba::RpcConfig { rate_per_key: a.rate_per_key };
        stowage_api::serve(listener, svc.clone(), rpc, shutdown_signal()).await.map_err(|e| e.to_string())?;
        let left = svc.shutdown(std::time::Duration::from_secs(30)).await;
        if left > 0 {
            tracing::warn!(count = left, "tasks still running at shutdown; they are marked failed at the next start");
        }
        Ok::<(), String>(())
    });
    match res {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {},
        _ = term.recv() => {},
    }
    tracing::info!("shutting down");
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn table(headers: &[&str], rows: Vec<Vec<String>>) {
    let mut w: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (i, c) in r.iter().enumerate() {
            w[i] = w[i].max(c.chars().count());
        }
    }
    let line = |cells: Vec<String>| {
        let s: Vec<String> = cells
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{c:<width$}", width = w[i]))
            .collect();
        println!("{}", s.join("  ").trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r);
    }
}

fn bytes(v: &Value) -> String {
    v.as_u64()
        .map(|b| HumanBytes(b).to_string())
        .unwrap_or_else(|| "-".into())
}

fn task_row(t: &Value) -> Vec<String> {
    vec![
        s(&t["id"]),
        s(&t["instance_id"]),
        s(&t["mode"]),
        match (t["state"].as_str(), t["scheduled_for"].as_str()) {
            // An automated task waiting for its window.
            (Some("pending"), Some(at)) => format!("pending, window opens {at}"),
            _ => s(&t["state"]),
        },
        format!("{}%", s(&t["progress"]["percent"])),
        format!(
            "{}/{}",
            bytes(&t["progress"]["bytes_done"]),
            bytes(&t["progress"]["bytes_total"])
        ),
        s(&t["created_at"]),
        s(&t["set_id"]),
    ]
}

const TASK_HEADERS: [&str; 8] = [
    "ID", "INSTANCE", "MODE", "STATE", "PROGRESS", "BYTES", "CREATED", "SET",
];

fn show_task(t: &Value, json: bool) {
    if json {
        return print_json(t);
    }
    table(&TASK_HEADERS, vec![task_row(t)]);
    if let Some(e) = t["error"].as_str() {
        println!("error: {e}");
    }
    if !t["consistent_point"].is_null() {
        println!("consistent point: {}", t["consistent_point"]);
    }
}

/// Follows a task or job; exit code 0 if it finished, 1 otherwise.
fn finish_follow(v: &Value, json: bool, what: &str) -> u8 {
    if json {
        print_json(v);
    }
    let state = v["state"].as_str().unwrap_or("?");
    if state == "finished" {
        if !json {
            eprintln!("{what} finished");
        }
        0
    } else {
        eprintln!(
            "{what} {state}: {}",
            v["error"].as_str().unwrap_or("no reason recorded")
        );
        1
    }
}

/// A database password from a file (trailing newline dropped) or an
/// environment variable; `env_required`: a named variable must be set.
fn read_password(
    file: Option<PathBuf>,
    env: Option<String>,
    env_required: bool,
) -> Result<Option<String>, CallError> {
    let bad = |message: String| CallError::Api {
        code: "InvalidParameter".into(),
        message,
    };
    match (file, env) {
        (Some(f), _) => Ok(Some(
            std::fs::read_to_string(&f)
                .map_err(|e| bad(format!("{}: {e}", f.display())))?
                .trim_end_matches(['\n', '\r'])
                .to_string(),
        )),
        (None, Some(var)) => match std::env::var(&var) {
            Ok(v) => Ok(Some(v)),
            Err(_) if env_required => Err(bad(format!("environment variable {var} is not set"))),
            Err(_) => Ok(None),
        },
        _ => Ok(None),
    }
}

fn run(c: &Client, g: &Global, cmd: Cmd) -> Result<u8, CallError> {
    let json = g.json;
    match cmd {
        Cmd::Serve(_) => unreachable!("handled in main"),
        Cmd::Instance(ic) => match ic {
            InstanceCmd::Add {
                name,
                engine,
                host,
                port,
                user,
                password_file,
                password_env,
                dbname,
                dialect,
                max_rate_kbps,
                sslmode,
                sslrootcert,
                no_check,
            } => {
                let password = read_password(password_file, password_env, false)?;
                let body = json!({"name": name, "engine": engine, "host": host, "port": port, "user": user, "password": password, "dbname": dbname, "dialect": dialect, "max_rate_kbps": max_rate_kbps, "sslmode": sslmode, "sslrootcert": sslrootcert, "check": !no_check});
                let v = c.post("/v1/instances", Some(&body))?;
                if json {
                    print_json(&v);
                } else {
                    println!("registered instance {} ({})", s(&v["id"]), s(&v["name"]));
                }
            }
            InstanceCmd::List => {
                let v = c.get("/v1/instances")?;
                if json {
                    print_json(&v);
                } else {
                    let rows = v["instances"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|i| {
                            vec![
                                s(&i["id"]),
                                s(&i["name"]),
                                s(&i["engine"]),
                                format!("{}:{}", s(&i["host"]), s(&i["port"])),
                                s(&i["user"]),
                                s(&i["created_at"]),
                            ]
                        })
                        .collect();
                    table(
                        &["ID", "NAME", "ENGINE", "ADDRESS", "USER", "CREATED"],
                        rows,
                    );
                }
            }
            InstanceCmd::Show { instance } => {
                print_json(&c.get(&format!("/v1/instances/{}", enc(&instance)))?)
            }
            InstanceCmd::Check { instance } => {
                let v = c.post(&format!("/v1/instances/{}/check", enc(&instance)), None)?;
                if json {
                    print_json(&v);
                } else {
                    println!(
                        "ok: PostgreSQL {} (system {})",
                        s(&v["server"]["version"]),
                        s(&v["server"]["system_identifier"])
                    );
                }
            }
            InstanceCmd::Set {
                instance,
                host,
                port,
                user,
                password_file,
                password_env,
                dbname,
                max_rate_kbps,
                sslmode,
                sslrootcert,
            } => {
                let password = read_password(password_file, password_env, true)?;
                let mut b = serde_json::Map::new();
                for (k, v) in [
                    ("host", host.map(Value::from)),
                    ("port", port.map(Value::from)),
                    ("user", user.map(Value::from)),
                    ("password", password.map(Value::from)),
                    ("dbname", dbname.map(Value::from)),
                    ("max_rate_kbps", max_rate_kbps.map(Value::from)),
                    ("sslmode", sslmode.map(Value::from)),
                    ("sslrootcert", sslrootcert.map(Value::from)),
                ] {
                    if let Some(v) = v {
                        b.insert(k.into(), v);
                    }
                }
                let v = c.send(
                    "PATCH",
                    &format!("/v1/instances/{}", enc(&instance)),
                    &Value::Object(b),
                )?;
                if json {
                    print_json(&v);
                } else {
                    println!("updated instance {} ({})", s(&v["id"]), s(&v["name"]));
                }
            }
            InstanceCmd::Remove { instance } => {
                c.delete(&format!("/v1/instances/{}", enc(&instance)))?;
                if !json {
                    println!("removed instance {instance}");
                }
            }
        },
        Cmd::Backup {
            instance,
            wait,
            client_token,
        } => {
            let body = json!({"client_token": client_token});
            let t = c.post(
                &format!("/v1/instances/{}/backups", enc(&instance)),
                Some(&body),
            )?;
            let id = t["id"].as_i64().unwrap_or(0);
            if !wait {
                show_task(&t, json);
                return Ok(0);
            }
            if !json {
                eprintln!("backup task {id} of {} started", s(&t["instance_id"]));
            }
            let v = watch::follow(c, &format!("/v1/tasks/{id}"), &format!("task {id}"), json)?;
            let code = finish_follow(&v, json, &format!("backup task {id}"));
            if code == 0 && !json {
                println!(
                    "backup set {} created: {} read, {} newly stored, consistent at {}",
                    s(&v["set_id"]),
                    bytes(&v["progress"]["bytes_done"]),
                    bytes(&v["progress"]["bytes_stored"]),
                    s(&v["consistent_point"]["stop_lsn"])
                );
            }
            return Ok(code);
        }
        Cmd::Task(tc) => match tc {
            TaskCmd::List {
                instance,
                state,
                limit,
            } => {
                let mut q = vec![];
                if let Some(i) = instance {
                    q.push(format!("instance={}", enc(&i)));
                }
                if let Some(st) = state {
                    q.push(format!("state={}", enc(&st)));
                }
                if let Some(l) = limit {
                    q.push(format!("limit={l}"));
                }
                let v = c.get(&format!("/v1/tasks?{}", q.join("&")))?;
                if json {
                    print_json(&v);
                } else {
                    table(
                        &TASK_HEADERS,
                        v["tasks"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(task_row)
                            .collect(),
                    );
                }
            }
            TaskCmd::Show { id } => show_task(&c.get(&format!("/v1/tasks/{id}"))?, json),
            TaskCmd::Watch { id } => {
                let v = watch::follow(c, &format!("/v1/tasks/{id}"), &format!("task {id}"), json)?;
                return Ok(finish_follow(&v, json, &format!("backup task {id}")));
            }
            TaskCmd::Cancel { id } => {
                show_task(&c.post(&format!("/v1/tasks/{id}/cancel"), None)?, json)
            }
        },
        Cmd::Set(sc) => match sc {
            SetCmd::List { instance } => {
                let q = instance
                    .map(|i| format!("?instance={}", enc(&i)))
                    .unwrap_or_default();
                let v = c.get(&format!("/v1/sets{q}"))?;
                if json {
                    print_json(&v);
                } else {
                    let rows = v["sets"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|x| {
                            vec![
                                s(&x["id"]),
                                s(&x["instance_id"]),
                                s(&x["method"]),
                                s(&x["finished_at"]),
                                bytes(&x["bytes_logical"]),
                                bytes(&x["bytes_stored"]),
                                s(&x["consistent_point"]["stop_lsn"]),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "ID",
                            "INSTANCE",
                            "METHOD",
                            "FINISHED",
                            "SIZE",
                            "NEW STORED",
                            "STOP LSN",
                        ],
                        rows,
                    );
                }
            }
            SetCmd::Show { id, files } => {
                let v = c.get(&format!("/v1/sets/{id}"))?;
                if files {
                    let m = c.get(&format!("/v1/sets/{id}/manifest"))?;
                    if json {
                        print_json(&json!({"set": v, "manifest": m}));
                    } else {
                        print_json(&v);
                        for f in m["files"].as_array().cloned().unwrap_or_default() {
                            println!(
                                "{:>6} {:>12} {}/{}",
                                s(&f["mode"]),
                                s(&f["size"]),
                                s(&f["archive"]),
                                s(&f["path"])
                            );
                        }
                    }
                } else {
                    print_json(&v);
                }
            }
            SetCmd::Delete { id } => {
                c.delete(&format!("/v1/sets/{id}"))?;
                if !json {
                    println!(
                        "deleted backup set {id}; its space is reclaimed by the next gc (automatic, or `stowage gc`)"
                    );
                }
            }
            SetCmd::Expire { id, at, never } => {
                let body = json!({"expires_at": if never { None } else { at }});
                let v = c.send("PATCH", &format!("/v1/sets/{id}"), &body)?;
                if json {
                    print_json(&v);
                } else {
                    println!(
                        "backup set {id} expires: {}",
                        v["expires_at"].as_str().unwrap_or("never")
                    );
                }
            }
        },
        Cmd::Policy(pc) => {
            let (instance, v) = match pc {
                PolicyCmd::Show { instance } => {
                    let v = c.get(&format!("/v1/instances/{}/policy", enc(&instance)))?;
                    (instance, v)
                }
                PolicyCmd::Set {
                    instance,
                    window,
                    weekdays,
                    retention_days,
                    enable,
                    disable,
                } => {
                    let mut b = serde_json::Map::new();
                    if let Some(w) = window {
                        b.insert("window".into(), w.into());
                    }
                    if let Some(d) = weekdays {
                        b.insert("weekdays".into(), d.into());
                    }
                    if let Some(r) = retention_days {
                        b.insert("retention_days".into(), r.into());
                    }
                    if enable || disable {
                        b.insert("enabled".into(), enable.into());
                    }
                    let v = c.send(
                        "PUT",
                        &format!("/v1/instances/{}/policy", enc(&instance)),
                        &Value::Object(b),
                    )?;
                    (instance, v)
                }
            };
            if json {
                print_json(&v);
            } else {
                println!("instance:        {instance}");
                println!(
                    "automated:       {}",
                    if v["enabled"] == true { "on" } else { "off" }
                );
                println!("window (UTC):    {}", s(&v["window"]));
                println!("weekdays:        {}", s(&v["weekdays"]));
                println!("retention:       {} days", s(&v["retention_days"]));
                println!(
                    "next backup at:  {}",
                    v["next_backup_at"].as_str().unwrap_or("-")
                );
            }
        }
        Cmd::Restore {
            set_id,
            target,
            force,
            no_wait,
        } => {
            // Sent as given: the server decides what a relative path means.
            let j = c.post(
                &format!("/v1/sets/{set_id}/restore"),
                Some(&json!({"target": target, "force": force})),
            )?;
            return follow_job(c, &j, json, no_wait, "restore");
        }
        Cmd::Verify { set, no_wait } => {
            let j = match set {
                Some(id) => c.post("/v1/verify", Some(&json!({"set_id": id})))?,
                None => c.post("/v1/verify", None)?,
            };
            let code = follow_job(c, &j, json, no_wait, "verify")?;
            return Ok(code);
        }
        Cmd::Gc { no_wait } => {
            let j = c.post("/v1/gc", None)?;
            return follow_job(c, &j, json, no_wait, "gc");
        }
        Cmd::Account(ac) => match ac {
            AccountCmd::List => {
                let v = c.get("/v1/accounts")?;
                if json {
                    print_json(&v);
                } else {
                    let rows = v["accounts"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|a| vec![s(&a["name"]), s(&a["id"]), s(&a["created_at"])])
                        .collect();
                    table(&["NAME", "ID", "CREATED"], rows);
                }
            }
            AccountCmd::Add { name } => {
                let v = c.post("/v1/accounts", Some(&json!({"name": name})))?;
                if json {
                    print_json(&v);
                } else {
                    println!("created account {}", s(&v["name"]));
                }
            }
        },
        Cmd::Key(kc) => match kc {
            KeyCmd::List { account } => {
                let path = match &account {
                    Some(a) => format!("/v1/accounts/{}/keys", enc(a)),
                    None => "/v1/keys".into(),
                };
                let v = c.get(&path)?;
                if json {
                    print_json(&v);
                } else {
                    let rows = v["keys"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|k| {
                            vec![
                                s(&k["access_key_id"]),
                                s(&k["account"]),
                                s(&k["status"]),
                                s(&k["created_at"]),
                                s(&k["description"]),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "ACCESS KEY ID",
                            "ACCOUNT",
                            "STATUS",
                            "CREATED",
                            "DESCRIPTION",
                        ],
                        rows,
                    );
                }
            }
            KeyCmd::Create {
                account,
                description,
            } => {
                let path = match &account {
                    Some(a) => format!("/v1/accounts/{}/keys", enc(a)),
                    None => "/v1/keys".into(),
                };
                let v = c.post(&path, Some(&json!({"description": description})))?;
                if json {
                    print_json(&v);
                } else {
                    println!(
                        "access key id:     {}\naccess key secret: {}\n(the secret is shown only now)",
                        s(&v["access_key_id"]),
                        s(&v["access_key_secret"])
                    );
                }
            }
            KeyCmd::Disable { id } => {
                c.post(&format!("/v1/keys/{}/disable", enc(&id)), None)?;
            }
            KeyCmd::Enable { id } => {
                c.post(&format!("/v1/keys/{}/enable", enc(&id)), None)?;
            }
            KeyCmd::Delete { id } => {
                c.delete(&format!("/v1/keys/{}", enc(&id)))?;
            }
            KeyCmd::Policy { id, file, clear } => {
                let path = format!("/v1/keys/{}/policy", enc(&id));
                if clear {
                    c.delete(&path)?;
                } else {
                    let f = file.expect("clap: --file or --clear");
                    let doc: Value = std::fs::read_to_string(&f)
                        .map_err(|e| format!("{}: {e}", f.display()))
                        .and_then(|t| {
                            serde_json::from_str(&t)
                                .map_err(|e| format!("{}: not JSON: {e}", f.display()))
                        })
                        .map_err(|m| CallError::Api {
                            code: "InvalidParameter".into(),
                            message: m,
                        })?;
                    c.send("PUT", &path, &doc)?;
                }
            }
        },
        Cmd::Job(jc) => match jc {
            JobCmd::List => {
                let v = c.get("/v1/jobs")?;
                if json {
                    print_json(&v);
                } else {
                    let rows = v["jobs"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|j| {
                            vec![
                                s(&j["id"]),
                                s(&j["kind"]),
                                s(&j["state"]),
                                format!("{}%", s(&j["progress"]["percent"])),
                                s(&j["created_at"]),
                                s(&j["error"]),
                            ]
                        })
                        .collect();
                    table(
                        &["ID", "KIND", "STATE", "PROGRESS", "CREATED", "ERROR"],
                        rows,
                    );
                }
            }
            JobCmd::Show { id } => print_json(&c.get(&format!("/v1/jobs/{id}"))?),
            JobCmd::Watch { id } => {
                let v = watch::follow(c, &format!("/v1/jobs/{id}"), &format!("job {id}"), json)?;
                return Ok(finish_follow(&v, json, &format!("job {id}")));
            }
            JobCmd::Cancel { id } => print_json(&c.post(&format!("/v1/jobs/{id}/cancel"), None)?),
        },
    }
    Ok(0)
}

fn follow_job(
    c: &Client,
    j: &Value,
    json: bool,
    no_wait: bool,
    what: &str,
) -> Result<u8, CallError> {
    let id = j["id"].as_i64().unwrap_or(0);
    if no_wait {
        if json {
            print_json(j);
        } else {
            println!("{what} job {id} started; follow it with `stowage job watch {id}`");
        }
        return Ok(0);
    }
    let v = watch::follow(c, &format!("/v1/jobs/{id}"), &format!("{what} {id}"), json)?;
    let code = finish_follow(&v, json, &format!("{what} job {id}"));
    if code == 0 && !json {
        match what {
            "restore" => println!(
                "restored {} into {}",
                bytes(&v["result"]["bytes"]),
                s(&v["result"]["target"])
            ),
            "verify" => println!(
                "repository OK: {} packs, {} chunks, {} snapshots checked ({} read); {} unreferenced packs reclaimable by gc",
                s(&v["result"]["packs_checked"]),
                s(&v["result"]["chunks_checked"]),
                s(&v["result"]["snapshots_checked"]),
                bytes(&v["result"]["bytes_read"]),
                s(&v["result"]["unreferenced_packs"])
            ),
            "gc" => println!(
                "gc: {} packs deleted, {} reclaimed, {} packs kept",
                s(&v["result"]["packs_deleted"]),
                bytes(&v["result"]["bytes_reclaimed"]),
                s(&v["result"]["packs_kept"])
            ),
            _ => {}
        }
    }
    Ok(code)
}
