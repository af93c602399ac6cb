//! `stowage`: the server and its command-line client in one binary.

/// A line to stdout; a closed pipe (`… | head`) ends the program quietly
/// instead of panicking.
macro_rules! out {
    ($($t:tt)*) => {
        $crate::emit(format_args!($($t)*))
    };
}

mod client;
mod watch;

fn emit(args: std::fmt::Arguments) {
    use std::io::Write;
    if let Err(e) = writeln!(std::io::stdout().lock(), "{args}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        eprintln!("error: cannot write to standard output: {e}");
        std::process::exit(1);
    }
}

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
Quick start:\n  stowage serve &\n  stowage instance add --name pg1 --host 127.0.0.1 --port 5432 --user postgres\n  stowage backup pg1\n  stowage set list\n  stowage restore <set-id> --target pg1-restored   # under <data-dir>/restores/<account>/\n\n\
Exit codes: 0 success, 1 the task or job failed or was cancelled, 2 the server refused the request, 3 the server could not be reached, 4 the client is not set up (no credentials, malformed --server; nothing was sent)."
)]
struct Cli {
    #[command(flatten)]
    g: Global,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Args, Clone)]
struct Global {
    /// Server URL (client commands).
    #[arg(long, global = true, env = "STOWAGE_SERVER", default_value = DEFAULT_SERVER, help_heading = "Client options (ignored by serve)")]
    server: String,
    /// Data directory: the server's state; client commands read
    /// <data-dir>/admin-credentials from it when no key is given.
    #[arg(long, global = true, env = "STOWAGE_DATA_DIR", default_value_os_t = default_data_dir())]
    data_dir: PathBuf,
    /// Access key id (default: from <data-dir>/admin-credentials).
    #[arg(
        long,
        global = true,
        env = "STOWAGE_ACCESS_KEY_ID",
        help_heading = "Client options (ignored by serve)"
    )]
    access_key_id: Option<String>,
    /// Access key secret (default: from <data-dir>/admin-credentials).
    #[arg(
        long,
        global = true,
        env = "STOWAGE_ACCESS_KEY_SECRET",
        hide_env_values = true,
        help_heading = "Client options (ignored by serve)"
    )]
    access_key_secret: Option<String>,
    /// Print machine-readable JSON instead of tables.
    #[arg(
        long,
        global = true,
        help_heading = "Client options (ignored by serve)"
    )]
    json: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the server: REST API, task engine and repository, with embedded defaults.
    Serve(ServeArgs),
    /// Re-seal the catalog's secrets with a new server key (offline: stop
    /// every node first, then start them all with the new key file).
    #[command(
        after_help = "Examples:\n  stowage rotate-server-key --new-key-file /etc/stowage/server.key.new\n  STOWAGE_CATALOG=postgres://stowage@db/stowage stowage rotate-server-key \\\n    --server-key-file /etc/stowage/server.key --new-key-file /etc/stowage/server.key.new"
    )]
    RotateServerKey(RotateArgs),
    /// Register, list, check and remove database instances.
    #[command(subcommand)]
    Instance(InstanceCmd),
    /// Back up an instance and follow the task until it ends (--no-wait to return at once).
    #[command(
        after_help = "Examples:\n  stowage backup pg1\n  stowage backup rm-0a1b2c3d4e5f6a7b --comment 'before the upgrade' --retention-days 90\n  stowage backup pg1 --no-wait --json"
    )]
    Backup {
        /// Instance id (rm-…, pc-…, dds-…) or name.
        instance: String,
        /// Return as soon as the task is created instead of following it.
        #[arg(long)]
        no_wait: bool,
        /// Follow the task (the default; kept for older scripts).
        #[arg(long, hide = true, conflicts_with = "no_wait")]
        wait: bool,
        /// Idempotency token: repeating a request with the same token returns the same task.
        #[arg(long)]
        client_token: Option<String>,
        /// A note kept with the task and its backup set.
        #[arg(long)]
        comment: Option<String>,
        /// Keep this backup's set this many days instead of the policy's retention (1 to 7300).
        #[arg(long)]
        retention_days: Option<u32>,
        /// Read everything again. By default a MongoDB backup reuses the dump of the
        /// instance's newest set and captures only the oplog since (still a complete
        /// set); it takes a new dump anyway when that one is 7 days old or the oplog
        /// since it outgrew it (more than 1 entry per 20 documents, or a quarter of its
        /// bytes). No effect on PostgreSQL (always a full base backup).
        #[arg(long)]
        full: bool,
        /// MySQL/MariaDB: logical (the default: SQL read over the connection,
        /// restores into any server) or physical (mariadb-backup copies the data
        /// directory; the server must be on the machine Stowage runs on; restores
        /// into a folder that mariadbd starts on; admin keys only).
        #[arg(long, value_parser = ["logical", "physical"])]
        method: Option<String>,
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
        /// Created if missing; must be empty unless --force. (PostgreSQL.)
        #[arg(long, required_unless_present = "into", conflicts_with = "into")]
        target: Option<String>,
        /// Replace the contents of a non-empty target folder.
        #[arg(long, conflicts_with = "into")]
        force: bool,
        /// Restore into this registered instance (MongoDB: id or name, of
        /// your account), replaying the oplog to the set's consistent point.
        #[arg(long)]
        into: Option<String>,
        /// With --into: restore database OLD as NEW (repeatable).
        #[arg(long = "rename-db", value_name = "OLD=NEW", requires = "into")]
        rename_db: Vec<String>,
        /// With --into: drop databases the target already holds instead of refusing.
        #[arg(long, requires = "into")]
        drop: bool,
        /// With --into: restore only this part of a sharded cluster's set (a
        /// shard's id, e.g. dds-…_1; see `stowage set show`), into a replica
        /// set or the same part of another cluster. Without it a cluster's set
        /// restores whole into a cluster with as many shards.
        #[arg(long, requires = "into")]
        part: Option<String>,
        /// With --into (MySQL): also create the set's user accounts with their
        /// grants (databases renamed as with --rename-db). Accounts the target
        /// already has are left exactly as they are. Needs CREATE USER and
        /// GRANT OPTION on the target.
        #[arg(long, requires = "into")]
        accounts: bool,
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
    /// Package one part of a backup set into one file (MongoDB: a tar of the
    /// mongodump layout that `mongorestore --oplogReplay` reads; PostgreSQL:
    /// the base-backup tar) served by an expiring link; list and show them.
    #[command(subcommand)]
    Download(DownloadCmd),
    /// Reclaim repository space no backup set uses any more.
    Gc {
        /// Return at once instead of following the job.
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
enum DownloadCmd {
    /// Package one part of a set into one file, follow it with a progress
    /// bar and print its link (fetch it with `curl -fO`; it expires, by
    /// default after 2 hours). A transient failure (the repository locked
    /// by another process, a full disk) is retried after 5, 20 and 80 s.
    #[command(
        after_help = "Examples:\n  stowage download create 7                 # the set's only part (PostgreSQL: its data directory)\n  stowage download create 9 --part dds-…_1  # one shard of a sharded cluster's set\n  curl -fO \"$(stowage download create 7)\""
    )]
    Create {
        /// Id of the backup set (see `stowage set list`).
        set_id: i64,
        /// The part to package: a replica set or shard id (see `stowage set
        /// show`); default: the set's only part, or PostgreSQL's data directory.
        #[arg(long)]
        part: Option<String>,
        /// Follow the packaging and print the link (the default).
        #[arg(long, conflicts_with = "no_wait")]
        wait: bool,
        /// Return at once with the task's id (its link is then in
        /// `stowage download show <id>` once it finished).
        #[arg(long)]
        no_wait: bool,
    },
    /// List download tasks, newest first, with the links of finished ones.
    List {
        /// Only downloads of this backup set.
        #[arg(long, value_name = "SET_ID")]
        set: Option<i64>,
        /// Only downloads of this instance (id or name).
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one download task: its state, size and (while it works) link.
    Show {
        /// Task id (see `stowage download list`).
        id: i64,
    },
}

#[derive(Subcommand)]
enum AccountCmd {
    /// List accounts.
    List,
    /// Create an account; then give it a key with `stowage key create --account NAME`.
    Add {
        /// Account name: 1 to 64 letters, digits, '-', '_' or '.'.
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCmd {
    /// List keys (of --account, or of the caller's own account).
    List {
        /// Account name (admin key only; default: your own account).
        #[arg(long)]
        account: Option<String>,
    },
    /// Create a key; prints its id and secret (the only time the secret is shown).
    Create {
        /// Account to create the key for (admin key only; default: your own account).
        #[arg(long)]
        account: Option<String>,
        /// What the key is for (shown in `key list`).
        #[arg(long, default_value = "")]
        description: String,
    },
    /// Disable a key: requests signed with it are refused until it is enabled.
    Disable {
        /// Access key id (STWK…).
        id: String,
    },
    /// Enable a disabled key.
    Enable {
        /// Access key id (STWK…).
        id: String,
    },
    /// Delete a key for good.
    Delete {
        /// Access key id (STWK…).
        id: String,
    },
    /// Limit a key with a RAM-style policy (JSON file), or lift the limit.
    /// Example: {"Version":"1","Statement":[{"Effect":"Allow","Action":"rds:Describe*","Resource":"acs:rds:*:*:dbinstance/*"}]}
    Policy {
        /// Access key id (STWK…).
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
struct RotateArgs {
    /// The catalog (as `serve --catalog`); default the SQLite catalog in the data dir.
    #[arg(
        long,
        env = "STOWAGE_CATALOG",
        value_name = "URL",
        hide_env_values = true
    )]
    catalog: Option<String>,
    /// The key the catalog's secrets are sealed with now (default <data-dir>/server.key).
    #[arg(long, env = "STOWAGE_SERVER_KEY_FILE", value_name = "FILE")]
    server_key_file: Option<PathBuf>,
    /// The new key: created (mode 0600) if the file does not exist.
    #[arg(long, value_name = "FILE")]
    new_key_file: PathBuf,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "STOWAGE_LISTEN", default_value = "127.0.0.1:8420")]
    listen: String,
    /// Repository: a local folder, file:///path, or s3://bucket/prefix on
    /// S3 or an S3-compatible store (default: <data-dir>/repository). An S3
    /// repository takes its credentials from AWS_ACCESS_KEY_ID,
    /// AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN), and its endpoint and
    /// region from the flags below or AWS_ENDPOINT_URL and AWS_REGION.
    #[arg(long, env = "STOWAGE_REPOSITORY")]
    repository: Option<String>,
    /// Endpoint of an S3-compatible store (http(s)://host:port) for an
    /// s3:// repository; default AWS_ENDPOINT_URL_S3 or AWS_ENDPOINT_URL,
    /// else AWS itself.
    #[arg(long, value_name = "URL")]
    s3_endpoint: Option<String>,
    /// Region of an s3:// repository; default AWS_REGION or
    /// AWS_DEFAULT_REGION, else us-east-1.
    #[arg(long, value_name = "REGION")]
    s3_region: Option<String>,
    /// Request style of an s3:// repository: `path` (endpoint/bucket/key)
    /// or `virtual` (bucket.endpoint/key); default: path with an endpoint,
    /// virtual on AWS.
    #[arg(long, value_name = "STYLE", value_parser = ["path", "virtual"])]
    s3_addressing: Option<String>,
    /// How long a request to an s3:// repository is retried through
    /// transient failures (timeouts, 5xx, SlowDown, connection errors)
    /// before the task that made it fails.
    #[arg(long, value_name = "SECONDS", default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    s3_retry_secs: u64,
    /// PEM file of certificates to trust for an https:// S3 endpoint besides
    /// the system's (a private CA); default AWS_CA_BUNDLE.
    #[arg(long, value_name = "FILE")]
    s3_ca_file: Option<PathBuf>,
    /// Catalog: a PostgreSQL database shared by several nodes
    /// (postgres://user@host:port/database; the password in PGPASSWORD,
    /// TLS with ?sslmode=verify-full&sslrootcert=…). Default: the SQLite
    /// file <data-dir>/catalog.db.
    #[arg(
        long,
        env = "STOWAGE_CATALOG",
        value_name = "URL",
        hide_env_values = true
    )]
    catalog: Option<String>,
    /// Key the catalog's secrets (access-key secrets, database passwords)
    /// are sealed with; every node sharing a catalog needs the same file
    /// (default: <data-dir>/server.key, created on first start).
    #[arg(long, env = "STOWAGE_SERVER_KEY_FILE", value_name = "FILE")]
    server_key_file: Option<PathBuf>,
    /// With a shared catalog: how long a node's lease on a task it runs
    /// lasts. The node renews it every quarter of that; a task whose node
    /// stops renewing (killed, cut off) is taken over by another node
    /// after at most this long.
    #[arg(long, env = "STOWAGE_LEASE_SECS", value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(2..=600))]
    lease_secs: u64,
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
    /// Name of this node: on restart it fails the tasks it left running,
    /// so nodes sharing a catalog need distinct names. Default: `local`
    /// with the SQLite catalog; with a shared catalog, the host name and a
    /// hash of the data dir (stable across restarts).
    #[arg(long, env = "STOWAGE_NODE")]
    node: Option<String>,
    /// Cloud-dialect requests per second per access key before `Throttling.User`.
    #[arg(long, env = "STOWAGE_RATE_PER_KEY", default_value_t = 5000)]
    rate_per_key: u32,
    /// Average chunk size in KiB for a NEW repository (min = avg/4, max = avg*4). For benchmarks.
    #[arg(long, hide = true)]
    chunk_avg_kib: Option<u32>,
    /// Do not run automated backups, expiry or automatic gc (manual operations still work).
    #[arg(long, env = "STOWAGE_NO_SCHEDULER")]
    no_scheduler: bool,
    /// How many automated backups may run at once (on a shared catalog: across its nodes); the others wait their turn.
    #[arg(long, env = "STOWAGE_MAX_AUTOMATED_BACKUPS", default_value_t = 4)]
    max_automated_backups: usize,
    /// Seconds between two passes of the scheduler.
    #[arg(long, hide = true, default_value_t = 10)]
    scheduler_interval_secs: u64,
    /// How long a download link works, in seconds (300 to 86400); the
    /// packaged file is deleted once its link expired.
    #[arg(long, env = "STOWAGE_DOWNLOAD_LINK_SECS", default_value_t = 7200)]
    download_link_secs: u64,
}

// Parsed once per process; boxing the big variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum InstanceCmd {
    /// Register a database. The password comes from STOWAGE_DB_PASSWORD or --password-file.
    #[command(
        after_help = "Examples:\n  STOWAGE_DB_PASSWORD=... stowage instance add --name orders --host db1 --user backup\n  stowage instance add --name shop --engine mongodb --uri 'mongodb://m1:27017,m2:27017/?replicaSet=rs0' --user backup\n  stowage instance add --name big --engine mongodb --shard 'mongodb://s0:27018/?replicaSet=sh0' --shard 'mongodb://s1:27018/?replicaSet=sh1' --config 'mongodb://c1:27019/?replicaSet=cfg'\n  stowage instance add --name shop --engine mysql --host db3 --user backup   # MySQL 8 / MariaDB 10.5+\n  stowage instance add --name pg-tls --host db2 --sslmode verify-full --sslrootcert /etc/ssl/db-ca.pem\n  stowage instance add --name later --host 10.0.0.9 --no-check   # register without connecting"
    )]
    Add {
        /// A name to refer to it by (1 to 64 letters, digits, '-', '_' or '.').
        #[arg(long)]
        name: String,
        /// Database engine.
        #[arg(long, default_value = "postgresql", value_parser = ["postgresql", "mysql", "mongodb"])]
        engine: String,
        /// MongoDB: the replica set's connection string WITHOUT credentials
        /// (mongodb://h1:27017,h2:27017/?replicaSet=rs0); --user and the
        /// password (STOWAGE_DB_PASSWORD or --password-file) are added by the server.
        #[arg(long, conflicts_with_all = ["shard", "config"])]
        uri: Option<String>,
        /// MongoDB sharded cluster: one shard's connection string (a replica
        /// set), without credentials; repeat for every shard, in order (their
        /// ids are <instance id>_0, _1, …). Leave out to read the shards from
        /// the config servers (config.shards) or --mongos.
        #[arg(long, value_name = "URI")]
        shard: Vec<String>,
        /// MongoDB sharded cluster: the config servers' connection string
        /// (mongodb://cfg1:27019/?replicaSet=cfg), backed up as their own part.
        #[arg(long, value_name = "URI")]
        config: Option<String>,
        /// MongoDB sharded cluster: a mongos; the balancer is stopped for each
        /// backup and put back as it was afterwards.
        #[arg(long, value_name = "URI", requires = "config")]
        mongos: Option<String>,
        /// Host name or IP address the server connects to.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        /// Port of the database server (default 5432 for PostgreSQL, 3306 for MySQL).
        #[arg(long)]
        port: Option<u16>,
        /// Role to connect as (PostgreSQL: needs the REPLICATION attribute;
        /// default postgres). MySQL/MariaDB: default root; a backup user
        /// needs SELECT, RELOAD, LOCK TABLES, BINLOG MONITOR (MySQL:
        /// REPLICATION CLIENT), SHOW VIEW, TRIGGER and EVENT on *.*.
        /// MongoDB: the user to authenticate as, if any.
        #[arg(long)]
        user: Option<String>,
        /// Read the password from this file.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Read the password from this environment variable.
        #[arg(long, default_value = "STOWAGE_DB_PASSWORD")]
        password_env: Option<String>,
        /// PostgreSQL: database to connect to for checks (default: the user's).
        /// MongoDB: the authentication database (default admin; or authSource in --uri).
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
    Show {
        /// Instance id or name.
        instance: String,
    },
    /// Connect to the instance and check privileges and settings.
    Check {
        /// Instance id or name.
        instance: String,
    },
    /// Change how to reach an instance (options left out stay as they are);
    /// the next backup uses them. A new password comes from --password-file
    /// or the variable named by --password-env.
    Set {
        /// Instance id or name.
        instance: String,
        /// New host name or IP address.
        #[arg(long)]
        host: Option<String>,
        /// New port.
        #[arg(long)]
        port: Option<u16>,
        /// New role to connect as.
        #[arg(long)]
        user: Option<String>,
        /// Read the new password from this file.
        #[arg(long, conflicts_with = "password_env")]
        password_file: Option<PathBuf>,
        /// Read the new password from this environment variable.
        #[arg(long)]
        password_env: Option<String>,
        /// New database for checks.
        #[arg(long)]
        dbname: Option<String>,
        /// Throttle backups to this many kB/s (32 to 1048576); 0 removes the throttle.
        #[arg(long)]
        max_rate_kbps: Option<u32>,
        /// TLS: disable, prefer, require, verify-ca, verify-full.
        #[arg(long)]
        sslmode: Option<String>,
        /// CA certificate (PEM) on the server's machine, or "system".
        #[arg(long)]
        sslrootcert: Option<String>,
        /// MongoDB: a new connection string, without credentials
        /// (mongodb://h1:27017,h2:27017/?replicaSet=rs0).
        #[arg(long)]
        uri: Option<String>,
    },
    /// Unregister an instance (its backup sets stay).
    Remove {
        /// Instance id or name.
        instance: String,
    },
}

/// Paging of a listing.
#[derive(Args)]
struct PageArgs {
    /// At most this many (1 to 1000, default 100).
    #[arg(long)]
    limit: Option<u32>,
    /// Continue after the page that printed this cursor.
    #[arg(long)]
    cursor: Option<String>,
}

impl PageArgs {
    fn params(self) -> [(&'static str, Option<String>); 2] {
        [
            ("limit", self.limit.map(|l| l.to_string())),
            ("cursor", self.cursor),
        ]
    }
}

#[derive(Subcommand)]
enum TaskCmd {
    /// List tasks of every kind (backup, restore, verify, gc, download), newest first.
    List {
        /// Only these kinds, comma-separated: backup, restore, verify, gc, download.
        #[arg(long)]
        kind: Option<String>,
        /// Only tasks of this instance (id or name).
        #[arg(long)]
        instance: Option<String>,
        /// Comma-separated states: pending, checking, preparing, running, finishing, finished, failed, cancelled, retrying.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one task, with its parts (a backup of several shards has one per shard).
    Show {
        /// Task id.
        id: i64,
    },
    /// Follow a task with a progress bar until it ends.
    Watch {
        /// Task id.
        id: i64,
    },
    /// Ask a running task to stop.
    Cancel {
        /// Task id.
        id: i64,
    },
}

#[derive(Subcommand)]
enum SetCmd {
    /// List backup sets, newest first.
    List {
        /// Only sets of this instance (id or name).
        #[arg(long)]
        instance: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one set; --files lists its files.
    Show {
        /// Backup set id.
        id: i64,
        /// Also list every file of the set (mode, size, path).
        #[arg(long)]
        files: bool,
    },
    /// Delete a set (its data is reclaimed by the next gc).
    Delete {
        /// Backup set id.
        id: i64,
    },
    /// Change when a set expires (a policy change no longer affects it).
    Expire {
        /// Backup set id.
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
    Show {
        /// Instance id or name.
        instance: String,
    },
    /// Change the policy; options left out stay as they are.
    #[command(
        after_help = "Examples:\n  stowage policy set orders --window 01:00Z-02:00Z --weekdays Monday,Thursday --retention-days 14\n  stowage policy set orders --disable"
    )]
    Set {
        /// Instance id or name.
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
    /// List restore, verify and gc jobs, newest first.
    List {
        /// Comma-separated kinds: restore, verify, gc.
        #[arg(long)]
        kind: Option<String>,
        /// Comma-separated states, e.g. failed.
        #[arg(long)]
        state: Option<String>,
        #[command(flatten)]
        page: PageArgs,
    },
    /// Show one job.
    Show {
        /// Job id.
        id: i64,
    },
    /// Follow a job with a progress bar until it ends.
    Watch {
        /// Job id.
        id: i64,
    },
    /// Ask a running job to stop.
    Cancel {
        /// Job id.
        id: i64,
    },
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
    let data_dir = cli.g.data_dir.clone();
    match cli.cmd {
        Cmd::Serve(a) => serve(a, data_dir),
        Cmd::RotateServerKey(a) => rotate_server_key(a, data_dir),
        cmd => {
            let c = match client_for(&cli.g, &data_dir) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(e.exit_code() as u8);
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

fn client_for(g: &Global, data_dir: &std::path::Path) -> Result<Client, CallError> {
    let (id, secret) = match (&g.access_key_id, &g.access_key_secret) {
        (Some(i), Some(s)) => (i.clone(), s.clone()),
        _ => {
            let f = data_dir.join("admin-credentials");
            let text = std::fs::read_to_string(&f).map_err(|e| {
                CallError::Setup(format!(
                    "no access key: set STOWAGE_ACCESS_KEY_ID and STOWAGE_ACCESS_KEY_SECRET, or let the client read {} ({e})",
                    f.display()
                ))
            })?;
            let v: Value = serde_json::from_str(&text)
                .map_err(|e| CallError::Setup(format!("{}: {e}", f.display())))?;
            (
                v["access_key_id"].as_str().unwrap_or_default().to_string(),
                v["access_key_secret"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            )
        }
    };
    Client::new(&g.server, &id, &secret)
}

fn rotate_server_key(a: RotateArgs, data_dir: PathBuf) -> ExitCode {
    let data_dir = absolute(&data_dir);
    let old = absolute(
        &a.server_key_file
            .unwrap_or_else(|| data_dir.join("server.key")),
    );
    let new = absolute(&a.new_key_file);
    if old == new {
        eprintln!("error: the new key file is the current one");
        return ExitCode::from(2);
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(stowage_service::rotate_server_key(
        &data_dir,
        a.catalog.as_deref(),
        &old,
        &new,
    )) {
        Ok(0) => {
            println!("the catalog already uses {}", new.display());
            ExitCode::SUCCESS
        }
        Ok(n) => {
            println!(
                "re-sealed {n} secrets with {}; start every node with --server-key-file {} (or put it in place of {})",
                new.display(),
                new.display(),
                old.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(1)
        }
    }
}

fn serve(a: ServeArgs, data_dir: PathBuf) -> ExitCode {
    // Relative to where the server starts: made absolute once, so the
    // restore roots, repository and lock derived from it are too.
    let data_dir = if data_dir.is_relative() {
        match std::env::current_dir() {
            Ok(cwd) => cwd.join(&data_dir),
            Err(e) => {
                eprintln!("error: the current folder: {e}");
                return ExitCode::from(1);
            }
        }
    } else {
        data_dir
    };
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
            s3: stowage_service::S3Settings {
                endpoint: a.s3_endpoint,
                region: a.s3_region,
                path_style: a.s3_addressing.map(|s| s == "path"),
                retry_secs: Some(a.s3_retry_secs),
                ca_file: a.s3_ca_file.map(|f| absolute(&f)),
            },
            repo_password,
            catalog: a.catalog.clone(),
            server_key_file: a.server_key_file.map(|f| absolute(&f)),
            lease: std::time::Duration::from_secs(a.lease_secs),
            node: a.node.unwrap_or_else(|| match &a.catalog {
                None => "local".into(),
                Some(_) => {
                    let h = blake3::hash(data_dir.as_os_str().as_encoded_bytes()).to_hex();
                    format!("{}-{}", stowage_repo::lock::hostname(), &h[..8])
                }
            }),
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
        // With a shared catalog: take over the tasks of nodes that stopped.
        svc.spawn_lease_keeper();
        svc.downloads.set_link_secs(a.download_link_secs).map_err(|e| e.message)?;
        // Expired download files (and shared nonces) go, whether or not
        // the scheduler runs.
        let s3 = svc.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(60));
            loop {
                tick.tick().await;
                let n = s3.clean_downloads();
                if n > 0 {
                    tracing::info!(count = n, "expired download files deleted");
                }
                if let Err(e) = s3.forget_expired_nonces().await {
                    tracing::warn!(error = %e.message, "could not delete expired request nonces");
                }
            }
        });
        let listener = tokio::net::TcpListener::bind(&a.listen).await.map_err(|e| format!("cannot listen on {}: {e}", a.listen))?;
        tracing::info!("listening on http://{}", listener.local_addr().map_err(|e| e.to_string())?);
        let rpc = stowage_api::alibaba::RpcConfig { rate_per_key: a.rate_per_key };
        // On SIGTERM/SIGINT the API keeps answering while running tasks are
        // cancelled and record how they ended, so a client following one
        // sees "cancelled" rather than a refused connection.
        let s2 = svc.clone();
        let stopping = async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                _ = s2.fatal() => {}
            }
            let left = s2.shutdown(std::time::Duration::from_secs(30)).await;
            if left > 0 {
                tracing::warn!(count = left, "tasks still running at shutdown; they are marked failed at the next start");
            }
            // One more poll interval for clients following a task.
            tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
        };
        stowage_api::serve(listener, svc.clone(), rpc, stopping).await.map_err(|e| e.to_string())?;
        match svc.fatal_reason() {
            Some(why) => Err(why),
            None => Ok::<(), String>(()),
        }
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
    out!("{}", serde_json::to_string_pretty(v).expect("json"));
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
        out!("{}", s.join("  ").trim_end());
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

/// `?a=1&b=2` of the parameters that are set (or nothing).
fn query(params: &[(&str, Option<String>)]) -> String {
    let q: Vec<String> = params
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={}", enc(v))))
        .collect();
    if q.is_empty() {
        String::new()
    } else {
        format!("?{}", q.join("&"))
    }
}

/// Says how to get the next page of a listing, if there is one.
fn more(v: &Value) {
    if let Some(c) = v["next_cursor"].as_str() {
        eprintln!("(more: add --cursor {c})");
    }
}

/// Instance id → name, for tables.
fn instance_names(c: &Client) -> Result<std::collections::HashMap<String, String>, CallError> {
    let v = c.get("/v1/instances?limit=1000")?;
    Ok(v["instances"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|i| (s(&i["id"]), s(&i["name"])))
        .collect())
}

/// A duration in ms as "1m 05s".
fn duration(v: &Value) -> String {
    match v.as_i64() {
        Some(ms) if ms >= 0 => {
            let secs = ms / 1000;
            if secs >= 3600 {
                format!("{}h {:02}m", secs / 3600, secs % 3600 / 60)
            } else if secs >= 60 {
                format!("{}m {:02}s", secs / 60, secs % 60)
            } else {
                format!("{}.{}s", secs, ms % 1000 / 100)
            }
        }
        _ => "-".into(),
    }
}

fn task_row(t: &Value, names: &std::collections::HashMap<String, String>) -> Vec<String> {
    let id = s(&t["instance_id"]);
    vec![
        s(&t["id"]),
        s(&t["kind"]),
        names.get(&id).cloned().unwrap_or(id),
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
        s(&t["started_at"]),
        s(&t["finished_at"]),
        duration(&t["duration_ms"]),
        s(&t["set_id"]),
        // One line per task: the first line of the error.
        t["error"]
            .as_str()
            .map(|e| e.lines().next().unwrap_or("").to_string())
            .unwrap_or_else(|| "-".into()),
    ]
}

const TASK_HEADERS: [&str; 12] = [
    "ID", "KIND", "INSTANCE", "MODE", "STATE", "PROGRESS", "BYTES", "STARTED", "FINISHED", "TOOK",
    "SET", "ERROR",
];

/// Prints `label: value` lines (values formatted for people).
fn fields(rows: &[(&str, String)]) {
    let w = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0) + 1;
    for (k, v) in rows {
        out!("{:<w$} {v}", format!("{k}:"));
    }
}

fn show_task(c: &Client, t: &Value, json: bool) -> Result<(), CallError> {
    if json {
        print_json(t);
        return Ok(());
    }
    let names = instance_names(c)?;
    let inst = s(&t["instance_id"]);
    let mut rows = vec![
        ("task", s(&t["id"])),
        ("kind", s(&t["kind"])),
        (
            "instance",
            match names.get(&inst) {
                Some(n) => format!("{n} ({inst})"),
                None => inst,
            },
        ),
        ("mode", s(&t["mode"])),
        ("state", task_row(t, &names)[4].clone()),
        (
            "progress",
            format!(
                "{}% ({} of {}, {} newly stored)",
                s(&t["progress"]["percent"]),
                bytes(&t["progress"]["bytes_done"]),
                bytes(&t["progress"]["bytes_total"]),
                bytes(&t["progress"]["bytes_stored"])
            ),
        ),
        ("created", s(&t["created_at"])),
        ("started", s(&t["started_at"])),
        ("finished", s(&t["finished_at"])),
        ("took", duration(&t["duration_ms"])),
        ("backup set", s(&t["set_id"])),
    ];
    if t["kind"] == "backup" {
        rows.push(("consistent at", point(&t["consistent_point"])));
    } else {
        rows.push(("asked", compact(&t["params"])));
        rows.push(("result", compact(&t["result"])));
    }
    if let Some(parent) = t["parent_id"].as_i64() {
        rows.push(("part of task", format!("{parent} (part {})", s(&t["part"]))));
    }
    if t["state"] == "retrying" {
        rows.push((
            "retry",
            format!(
                "attempt {} failed ({}); the next starts at {}",
                s(&t["result"]["attempt"]),
                s(&t["result"]["error"]),
                t["result"]["retry_at_ms"]
                    .as_i64()
                    .map(stowage_core::time::format_rfc3339)
                    .unwrap_or_else(|| "-".into())
            ),
        ));
    }
    if t["download"]["url"].is_string() {
        rows.push(("link", s(&t["download"]["url"])));
        rows.push(("link expires", s(&t["download"]["expires_at"])));
    }
    rows.push(("error", s(&t["error"])));
    fields(&rows);
    let parts = t["parts"].as_array().cloned().unwrap_or_default();
    if !parts.is_empty() {
        out!("");
        out!("parts:");
        table(
            &["ID", "PART", "STATE", "PROGRESS", "BYTES", "TOOK", "ERROR"],
            parts
                .iter()
                .map(|p| {
                    vec![
                        s(&p["id"]),
                        s(&p["part"]),
                        s(&p["state"]),
                        format!("{}%", s(&p["progress"]["percent"])),
                        format!(
                            "{}/{}",
                            bytes(&p["progress"]["bytes_done"]),
                            bytes(&p["progress"]["bytes_total"])
                        ),
                        duration(&p["duration_ms"]),
                        p["error"]
                            .as_str()
                            .map(|e| e.lines().next().unwrap_or("").to_string())
                            .unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect(),
        );
    }
    Ok(())
}

/// A JSON value on one line, `-` for none.
fn compact(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::Object(m) if m.is_empty() => "-".into(),
        v => v.to_string(),
    }
}

fn show_set(v: &Value) {
    let mut rows = vec![
        ("set", s(&v["id"])),
        ("instance", s(&v["instance_id"])),
        ("task", s(&v["task_id"])),
        (
            "engine",
            format!("{} ({})", s(&v["engine"]), s(&v["method"])),
        ),
        ("started", s(&v["started_at"])),
        ("finished", s(&v["finished_at"])),
        ("size", bytes(&v["bytes_logical"])),
        ("newly stored", bytes(&v["bytes_stored"])),
        ("consistent at", point(&v["consistent_point"])),
        (
            "expires",
            v["expires_at"].as_str().unwrap_or("never").to_string(),
        ),
        ("comment", s(&v["meta"]["comment"])),
    ];
    // A logical set's dump: taken by its backup, or reused from an earlier
    // set with only the oplog since stored.
    let log = if v["engine"] == "mysql" {
        "binary log"
    } else {
        "oplog"
    };
    let dump_line = |d: &Value| match (&d["reused_from_set"], &d["why_new"]) {
        (Value::Number(n), _) => {
            format!("reused from set {n}, with the {log} since (a complete set)")
        }
        (_, Value::String(why)) => format!("new ({why})"),
        _ => "new".into(),
    };
    let d = &v["meta"]["dump"];
    if d.is_object() {
        rows.insert(8, ("dump", dump_line(d)));
    }
    // A sharded cluster's set: one part per shard and the config servers,
    // each with its replica set, size and dump.
    let parts: Vec<String> = v["meta"]["parts"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            format!(
                "{} {} (replica set {}): {}, {} documents; dump {}",
                s(&p["role"]),
                s(&p["id"]),
                s(&p["replica_set"]),
                bytes(&p["bytes"]),
                s(&p["documents"]),
                dump_line(&p["dump"])
            )
        })
        .collect();
    for p in &parts {
        rows.push(("part", p.clone()));
    }
    if let Some(b) = v["meta"]["balancer"].as_str() {
        rows.push(("balancer", b.to_string()));
    }
    fields(&rows);
}

/// A consistent point for people: the engine's position fields.
fn point(v: &Value) -> String {
    let ts = |t: &Value| format!("{}:{}", s(&t["t"]), s(&t["i"]));
    if v["cluster_time"].is_object() {
        let parts: Vec<String> = v["parts"].as_array().into_iter().flatten().map(s).collect();
        return format!(
            "cluster time {} (every part: {})",
            ts(&v["cluster_time"]),
            parts.join(", ")
        );
    }
    if v["oplog_ts"].is_object() {
        return format!(
            "oplog {} of replica set {}",
            ts(&v["oplog_ts"]),
            s(&v["replica_set"])
        );
    }
    if let Some(p @ stowage_core::ConsistentPoint::Binlog { .. }) =
        stowage_core::ConsistentPoint::from_json(v)
    {
        return p.to_string();
    }
    match v {
        Value::Object(m) if !m.is_empty() => m
            .iter()
            .map(|(k, v)| format!("{k} {}", s(v)))
            .collect::<Vec<_>>()
            .join(", "),
        _ => "-".into(),
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
        Cmd::Serve(_) | Cmd::RotateServerKey(_) => unreachable!("handled in main"),
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
                uri,
                shard,
                config,
                mongos,
            } => {
                let password = read_password(password_file, password_env, false)?;
                let body = if engine == "mongodb" {
                    // The server judges the rest: TLS settings are PostgreSQL's
                    // (refused), dbname is the authentication database.
                    let mut b = json!({"name": name, "engine": engine, "uri": uri, "user": user, "password": password, "dbname": dbname, "dialect": dialect, "max_rate_kbps": max_rate_kbps, "sslmode": sslmode, "sslrootcert": sslrootcert, "check": !no_check});
                    if !shard.is_empty() || config.is_some() || mongos.is_some() {
                        b["shards"] = json!(shard);
                        b["config"] = json!(config);
                        b["mongos"] = json!(mongos);
                    }
                    b
                } else if !shard.is_empty() || config.is_some() || mongos.is_some() {
                    return Err(CallError::Setup(
                        "--shard, --config and --mongos are for --engine mongodb".into(),
                    ));
                } else {
                    let mysql = engine == "mysql";
                    let user =
                        user.unwrap_or_else(|| if mysql { "root" } else { "postgres" }.into());
                    let port = port.unwrap_or(if mysql { 3306 } else { 5432 });
                    json!({"name": name, "engine": engine, "host": host, "port": port, "user": user, "password": password, "dbname": dbname, "dialect": dialect, "max_rate_kbps": max_rate_kbps, "sslmode": sslmode, "sslrootcert": sslrootcert, "check": !no_check, "uri": uri})
                };
                let v = c.post("/v1/instances", Some(&body))?;
                if json {
                    print_json(&v);
                } else {
                    out!("registered instance {} ({})", s(&v["id"]), s(&v["name"]));
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
                let v = c.get(&format!("/v1/instances/{}", enc(&instance)))?;
                if json {
                    print_json(&v);
                } else {
                    let mongo = v["engine"] == "mongodb";
                    let mut rows: Vec<(&str, String)> = vec![
                        ("id", s(&v["id"])),
                        ("name", s(&v["name"])),
                        ("engine", s(&v["engine"])),
                        ("topology", s(&v["topology"])),
                    ];
                    if mongo && v["topology"] == "sharded" {
                        for p in v["shards"].as_array().into_iter().flatten() {
                            rows.push(("shard", format!("{}  {}", s(&p["id"]), s(&p["uri"]))));
                        }
                        let cfg = &v["config"];
                        rows.push((
                            "config servers",
                            format!("{}  {}", s(&cfg["id"]), s(&cfg["uri"])),
                        ));
                        if !v["mongos"].is_null() {
                            rows.push(("mongos", s(&v["mongos"])));
                        }
                    } else if mongo {
                        rows.push(("connection", s(&v["uri"])));
                    } else {
                        rows.push(("address", format!("{}:{}", s(&v["host"]), s(&v["port"]))));
                    }
                    rows.push(("user", s(&v["user"])));
                    rows.push((
                        "password",
                        if v["has_password"] == true {
                            "set".into()
                        } else {
                            "none".into()
                        },
                    ));
                    if mongo {
                        rows.push(("auth database", s(&v["dbname"])));
                    } else {
                        rows.push(("database", s(&v["dbname"])));
                        rows.push(("tls", format!("sslmode={}", s(&v["sslmode"]))));
                        rows.push(("CA certificate", s(&v["sslrootcert"])));
                    }
                    rows.push((
                        "throttle",
                        v["max_rate_kbps"]
                            .as_u64()
                            .map(|r| format!("{r} kB/s"))
                            .unwrap_or_else(|| "none".into()),
                    ));
                    rows.push(("id format", s(&v["dialect"])));
                    rows.push(("registered", s(&v["created_at"])));
                    fields(&rows);
                }
            }
            InstanceCmd::Check { instance } => {
                let v = c.post(&format!("/v1/instances/{}/check", enc(&instance)), None)?;
                if json {
                    print_json(&v);
                } else {
                    let d = &v["server"]["details"];
                    if d["topology"] == "sharded" {
                        out!(
                            "ok: MongoDB {} sharded cluster, every replica set reachable:",
                            s(&v["server"]["version"])
                        );
                        for p in d["parts"].as_array().into_iter().flatten() {
                            out!(
                                "  {:<8} {}  (replica set {})",
                                s(&p["role"]),
                                s(&p["id"]),
                                s(&p["replica_set"])
                            );
                        }
                        return Ok(0);
                    }
                    if d["engine"] == "mongodb" {
                        out!(
                            "ok: MongoDB {} (replica set {}{})",
                            s(&v["server"]["version"]),
                            s(&d["replica_set"]),
                            if d["is_primary"] == true {
                                ", primary"
                            } else {
                                ""
                            }
                        );
                        return Ok(0);
                    }
                    if d["engine"] == "mysql" {
                        out!(
                            "ok: {} {} ({}), binary log {}, {}",
                            if d["flavor"] == "mariadb" {
                                "MariaDB"
                            } else {
                                "MySQL"
                            },
                            s(&v["server"]["version"]),
                            s(&v["server"]["system_identifier"]),
                            if d["log_bin"] == true {
                                "on"
                            } else {
                                "off (sets record no binlog position)"
                            },
                            if d["tls"] == true {
                                "over TLS"
                            } else {
                                "without TLS"
                            }
                        );
                        return Ok(0);
                    }
                    out!(
                        "ok: PostgreSQL {} (system {}), {}",
                        s(&v["server"]["version"]),
                        s(&v["server"]["system_identifier"]),
                        if d["tls"] == true {
                            format!("over TLS (sslmode={})", s(&d["sslmode"]))
                        } else {
                            format!("without TLS (sslmode={})", s(&d["sslmode"]))
                        }
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
                uri,
            } => {
                let password = read_password(password_file, password_env, true)?;
                let mut b = serde_json::Map::new();
                for (k, v) in [
                    ("host", host.map(Value::from)),
                    ("port", port.map(Value::from)),
                    ("user", user.map(Value::from)),
                    ("password", password.map(Value::from)),
                    ("dbname", dbname.map(Value::from)),
                    // 0 removes the throttle.
                    (
                        "max_rate_kbps",
                        max_rate_kbps.map(|r| if r == 0 { Value::Null } else { r.into() }),
                    ),
                    ("sslmode", sslmode.map(Value::from)),
                    ("sslrootcert", sslrootcert.map(Value::from)),
                    ("uri", uri.map(Value::from)),
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
                    out!("updated instance {} ({})", s(&v["id"]), s(&v["name"]));
                }
            }
            InstanceCmd::Remove { instance } => {
                c.delete(&format!("/v1/instances/{}", enc(&instance)))?;
                if !json {
                    out!("removed instance {instance}");
                }
            }
        },
        Cmd::Backup {
            instance,
            no_wait,
            wait: _,
            client_token,
            comment,
            retention_days,
            full,
            method,
        } => {
            let mut body = json!({"client_token": client_token, "comment": comment, "retention_days": retention_days, "method": method});
            if full {
                body["full"] = json!(true);
            }
            let t = c.post(
                &format!("/v1/instances/{}/backups", enc(&instance)),
                Some(&body),
            )?;
            let id = t["id"].as_i64().unwrap_or(0);
            if no_wait {
                show_task(c, &t, json)?;
                return Ok(0);
            }
            if !json {
                eprintln!("backup task {id} of {} started", s(&t["instance_id"]));
            }
            let v = watch::follow(c, &format!("/v1/tasks/{id}"), &format!("task {id}"), json)?;
            let code = finish_follow(&v, json, &format!("backup task {id}"));
            if code == 0 && !json {
                out!(
                    "backup set {} created: {} read, {} newly stored, consistent at {}",
                    s(&v["set_id"]),
                    bytes(&v["progress"]["bytes_done"]),
                    bytes(&v["progress"]["bytes_stored"]),
                    point(&v["consistent_point"])
                );
            }
            return Ok(code);
        }
        Cmd::Task(tc) => match tc {
            TaskCmd::List {
                kind,
                instance,
                state,
                page,
            } => {
                let [l, cur] = page.params();
                let q = query(&[
                    ("kind", kind),
                    ("instance", instance),
                    ("state", state),
                    l,
                    cur,
                ]);
                let v = c.get(&format!("/v1/tasks{q}"))?;
                if json {
                    print_json(&v);
                } else {
                    let names = instance_names(c)?;
                    table(
                        &TASK_HEADERS,
                        v["tasks"]
                            .as_array()
                            .cloned()
                            .unwrap_or_default()
                            .iter()
                            .map(|t| task_row(t, &names))
                            .collect(),
                    );
                    more(&v);
                }
            }
            TaskCmd::Show { id } => show_task(c, &c.get(&format!("/v1/tasks/{id}"))?, json)?,
            TaskCmd::Watch { id } => {
                let v = watch::follow(c, &format!("/v1/tasks/{id}"), &format!("task {id}"), json)?;
                return Ok(finish_follow(&v, json, &format!("task {id}")));
            }
            TaskCmd::Cancel { id } => {
                show_task(c, &c.post(&format!("/v1/tasks/{id}/cancel"), None)?, json)?
            }
        },
        Cmd::Set(sc) => match sc {
            SetCmd::List { instance, page } => {
                let [l, cur] = page.params();
                let q = query(&[("instance", instance), l, cur]);
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
                    more(&v);
                }
            }
            SetCmd::Show { id, files } => {
                let v = c.get(&format!("/v1/sets/{id}"))?;
                if !json {
                    show_set(&v);
                }
                if files {
                    let m = c.get(&format!("/v1/sets/{id}/manifest"))?;
                    if json {
                        print_json(&json!({"set": v, "manifest": m}));
                    } else {
                        out!("");
                        for f in m["files"].as_array().cloned().unwrap_or_default() {
                            out!(
                                "{:>6} {:>12} {}/{}",
                                f["mode"]
                                    .as_u64()
                                    .map(|m| format!("{m:o}"))
                                    .unwrap_or_default(),
                                s(&f["size"]),
                                s(&f["archive"]),
                                s(&f["path"])
                            );
                        }
                    }
                } else if json {
                    print_json(&v);
                }
            }
            SetCmd::Delete { id } => {
                c.delete(&format!("/v1/sets/{id}"))?;
                if !json {
                    out!(
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
                    out!(
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
                out!("instance:        {instance}");
                out!(
                    "automated:       {}",
                    if v["enabled"] == true { "on" } else { "off" }
                );
                out!("window (UTC):    {}", s(&v["window"]));
                out!("weekdays:        {}", s(&v["weekdays"]));
                out!("retention:       {} days", s(&v["retention_days"]));
                out!(
                    "next backup at:  {}",
                    v["next_backup_at"].as_str().unwrap_or("-")
                );
            }
        }
        Cmd::Restore {
            set_id,
            target,
            force,
            into,
            rename_db,
            drop,
            part,
            accounts,
            no_wait,
        } => {
            let body = match into {
                Some(i) => {
                    let mut rename = serde_json::Map::new();
                    for r in rename_db {
                        let (a, b) = r.split_once('=').ok_or_else(|| {
                            CallError::Setup(format!("--rename-db {r:?}: expected OLD=NEW"))
                        })?;
                        rename.insert(a.to_string(), b.into());
                    }
                    json!({"into": i, "rename_db": rename, "drop": drop, "part": part, "accounts": accounts})
                }
                // Sent as given: the server decides what a relative path means.
                None => json!({"target": target, "force": force}),
            };
            let j = c.post(&format!("/v1/sets/{set_id}/restore"), Some(&body))?;
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
        Cmd::Download(dc) => match dc {
            DownloadCmd::Create {
                set_id,
                part,
                wait: _,
                no_wait,
            } => {
                let body = json!({"part": part});
                let j = c.post(&format!("/v1/sets/{set_id}/download"), Some(&body))?;
                if no_wait {
                    if json {
                        print_json(&j);
                    } else {
                        out!(
                            "download task {} started; see `stowage download show {}`",
                            s(&j["id"]),
                            s(&j["id"])
                        );
                    }
                    return Ok(0);
                }
                let code = follow_job(c, &j, json, false, "download")?;
                if code == 0 && !json {
                    let t = c.get(&format!("/v1/tasks/{}", j["id"]))?;
                    eprintln!(
                        "{} ({}) packaged; the link works until {}",
                        s(&t["result"]["file"]),
                        bytes(&t["result"]["bytes"]),
                        s(&t["download"]["expires_at"])
                    );
                    out!("{}", s(&t["download"]["url"]));
                }
                return Ok(code);
            }
            DownloadCmd::List {
                set,
                instance,
                page,
            } => {
                let [l, cur] = page.params();
                let q = query(&[
                    ("set", set.map(|s| s.to_string())),
                    ("instance", instance),
                    l,
                    cur,
                ]);
                let v = c.get(&format!("/v1/downloads{q}"))?;
                if json {
                    print_json(&v);
                } else {
                    let rows = v["downloads"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .iter()
                        .map(|t| {
                            vec![
                                s(&t["id"]),
                                s(&t["set_id"]),
                                // Named once packaged; asked for (or the default) before.
                                if t["result"]["part"].is_string() {
                                    s(&t["result"]["part"])
                                } else {
                                    s(&t["params"]["part"])
                                },
                                s(&t["state"]),
                                format!("{}%", s(&t["progress"]["percent"])),
                                bytes(&t["result"]["bytes"]),
                                s(&t["created_at"]),
                                s(&t["download"]["expires_at"]),
                                s(&t["download"]["url"]),
                            ]
                        })
                        .collect();
                    table(
                        &[
                            "ID", "SET", "PART", "STATE", "PROGRESS", "SIZE", "CREATED", "EXPIRES",
                            "LINK",
                        ],
                        rows,
                    );
                    more(&v);
                }
            }
            DownloadCmd::Show { id } => {
                let t = c.get(&format!("/v1/tasks/{id}"))?;
                if t["kind"] != "download" {
                    eprintln!(
                        "error: task {id} is a {} task, not a download",
                        s(&t["kind"])
                    );
                    return Ok(1);
                }
                show_task(c, &t, json)?;
            }
        },
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
                    out!("created account {}", s(&v["name"]));
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
                    out!(
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
            JobCmd::List { kind, state, page } => {
                let [l, cur] = page.params();
                let q = query(&[("kind", kind), ("state", state), l, cur]);
                let v = c.get(&format!("/v1/jobs{q}"))?;
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
                    more(&v);
                }
            }
            JobCmd::Show { id } => {
                let v = c.get(&format!("/v1/jobs/{id}"))?;
                if json {
                    print_json(&v);
                } else {
                    fields(&[
                        ("job", s(&v["id"])),
                        ("kind", s(&v["kind"])),
                        ("state", s(&v["state"])),
                        ("backup set", s(&v["set_id"])),
                        (
                            "progress",
                            format!(
                                "{}% ({} of {})",
                                s(&v["progress"]["percent"]),
                                bytes(&v["progress"]["bytes_done"]),
                                bytes(&v["progress"]["bytes_total"])
                            ),
                        ),
                        ("target", s(&v["params"]["target"])),
                        ("created", s(&v["created_at"])),
                        ("started", s(&v["started_at"])),
                        ("finished", s(&v["finished_at"])),
                        ("took", duration(&v["duration_ms"])),
                        ("error", s(&v["error"])),
                        (
                            "result",
                            if v["result"].is_null() {
                                "-".into()
                            } else {
                                v["result"].to_string()
                            },
                        ),
                    ]);
                }
            }
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
            out!("{what} job {id} started; follow it with `stowage job watch {id}`");
        }
        return Ok(0);
    }
    let v = watch::follow(c, &format!("/v1/jobs/{id}"), &format!("{what} {id}"), json)?;
    let code = finish_follow(&v, json, &format!("{what} job {id}"));
    if code == 0 && !json {
        match what {
            "restore" if v["result"]["documents"].is_u64() => out!(
                "restored {} documents in {} collections ({} views, {} indexes) and replayed {} oplog entries",
                s(&v["result"]["documents"]),
                s(&v["result"]["collections"]),
                s(&v["result"]["views"]),
                s(&v["result"]["indexes"]),
                s(&v["result"]["oplog_applied"])
            ),
            "restore" if v["result"]["rows"].is_u64() => {
                out!(
                    "restored {} rows in {} tables of {} databases ({} views; {} routines, triggers and events)",
                    s(&v["result"]["rows"]),
                    s(&v["result"]["tables"]),
                    s(&v["result"]["databases"]),
                    s(&v["result"]["views"]),
                    s(&v["result"]["objects"])
                );
                let a = &v["result"]["accounts"];
                if a.is_object() {
                    let list = |k: &str| {
                        let names: Vec<&str> = a[k]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter_map(|n| n.as_str())
                            .collect();
                        if names.is_empty() {
                            "none".to_string()
                        } else {
                            names.join(", ")
                        }
                    };
                    out!(
                        "accounts created with their grants: {}; left as the target had them: {}",
                        list("created"),
                        list("kept")
                    );
                }
            }
            "restore" => out!(
                "restored {} into {}",
                bytes(&v["result"]["bytes"]),
                s(&v["result"]["target"])
            ),
            "verify" => out!(
                "repository OK: {} packs, {} chunks, {} snapshots checked ({} read); {} unreferenced packs reclaimable by gc",
                s(&v["result"]["packs_checked"]),
                s(&v["result"]["chunks_checked"]),
                s(&v["result"]["snapshots_checked"]),
                bytes(&v["result"]["bytes_read"]),
                s(&v["result"]["unreferenced_packs"])
            ),
            "gc" => out!(
                "gc: {} packs deleted, {} reclaimed, {} packs kept; {} snapshots no set names deleted",
                s(&v["result"]["packs_deleted"]),
                bytes(&v["result"]["bytes_reclaimed"]),
                s(&v["result"]["packs_kept"]),
                s(&v["result"]["orphan_snapshots_deleted"])
            ),
            _ => {}
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every command and every option says what it is for.
    #[test]
    fn every_command_and_option_is_described() {
        fn walk(c: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let here = format!("{path} {}", c.get_name());
            if c.get_about().is_none() && !c.is_hide_set() {
                missing.push(format!("{here}: no description"));
            }
            for a in c.get_arguments() {
                let id = a.get_id().as_str();
                if id == "help" || id == "version" || a.is_hide_set() {
                    continue;
                }
                if a.get_help().is_none() {
                    missing.push(format!("{here} <{id}>: no description"));
                }
            }
            for s in c.get_subcommands() {
                walk(s, &here, missing);
            }
        }
        let cmd = Cli::command();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        walk(&cmd, "", &mut missing);
        assert!(missing.is_empty(), "{}", missing.join("\n"));
    }
}
