//! A real PostgreSQL server (Debian's `postgresql-15`, or any version under
//! `/usr/lib/postgresql/*/bin`) in a fresh temp dir on a loopback port. Killed when dropped.
//!
//! PostgreSQL refuses to run as root: when the tests run as root, `initdb` and `postgres`
//! run as the `postgres` system user (which the Debian package creates) and the temp dir is
//! handed to it.
//!
//! The binaries come from, in order: `$DEPROV_PG_BIN` (a directory holding `initdb` and
//! `postgres`), the newest `/usr/lib/postgresql/<version>/bin`, `PATH`. `tests/run.sh`
//! installs them.
//!
//! ```ignore
//! let pg = Postgres::start().await;
//! pg.create_login_role("ada", "pw-ada").await;
//! pg.create_group_role("analysts").await;
//! pg.grant("analysts", "ada").await;
//! let session = pg.open_session("ada", "pw-ada").await;
//! assert!(session.is_alive().await);
//! ```

use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::task::JoinHandle;
use tokio_postgres::config::SslMode;
use tokio_postgres::{Client, NoTls};

use crate::free_port;

/// How long the server may take to accept its first connection.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The database every cluster has.
pub const DEFAULT_DB: &str = "postgres";

/// `name` as a double-quoted SQL identifier.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `value` as a SQL string literal.
pub fn quote_literal(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A role as the server holds it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RoleInfo {
    pub can_login: bool,
    /// The roles it is a direct member of, sorted.
    pub member_of: Vec<String>,
}

/// A client connected as some role, holding one backend open.
pub struct Session {
    pub client: Client,
    connection: JoinHandle<Result<(), tokio_postgres::Error>>,
}

impl Session {
    /// Whether the backend still answers a query.
    pub async fn is_alive(&self) -> bool {
        !self.client.is_closed() && self.client.simple_query("SELECT 1").await.is_ok()
    }

    /// Waits (at most `within`) until the server closes this session; true if it did.
    pub async fn closed_within(&self, within: Duration) -> bool {
        let started = Instant::now();
        loop {
            if self.connection.is_finished() || !self.is_alive().await {
                return true;
            }
            if started.elapsed() > within {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.connection.abort();
    }
}

pub struct Postgres {
    /// `127.0.0.1`
    pub host: String,
    pub port: u16,
    /// A superuser that logs in over TCP with `admin_password` (SCRAM-SHA-256).
    pub admin_user: String,
    pub admin_password: String,
    child: Child,
    log_path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl std::fmt::Debug for Postgres {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Postgres")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("admin_user", &self.admin_user)
            .finish_non_exhaustive()
    }
}

/// The system user the server runs as: `None` when we are not root (run as ourselves).
fn server_user() -> Result<Option<(u32, u32)>, String> {
    let uid = std::fs::metadata("/proc/self")
        .map(|meta| meta.uid())
        .map_err(|err| format!("cannot tell who we are: {err}"))?;
    if uid != 0 {
        return Ok(None);
    }
    let id = |flag: &str| -> Result<u32, String> {
        let output = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .map_err(|err| format!("cannot run id: {err}"))?;
        if !output.status.success() {
            return Err(
                "running as root and there is no \"postgres\" system user to run PostgreSQL as; \
                 install postgresql-15 (tests/run.sh does)"
                    .into(),
            );
        }
        String::from_utf8_lossy(&output.stdout)
            .trim()
            .parse()
            .map_err(|err| format!("id {flag} postgres: {err}"))
    };
    Ok(Some((id("-u")?, id("-g")?)))
}

/// The directory holding `initdb` and `postgres`; panics with what to do when there is none.
pub fn postgres_bin_dir() -> PathBuf {
    let has_binaries = |dir: &Path| dir.join("initdb").is_file() && dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("DEPROV_PG_BIN") {
        let dir = PathBuf::from(dir);
        if has_binaries(&dir) {
            return dir;
        }
        panic!(
            "DEPROV_PG_BIN={} holds no initdb and postgres; point it at PostgreSQL's bin directory or unset it",
            dir.display()
        );
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|entry| {
                    let version = entry.file_name().to_str()?.parse().ok()?;
                    Some((version, entry.path().join("bin")))
                })
                .filter(|(_, dir)| has_binaries(dir))
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some((_, dir)) = versions.pop() {
        return dir;
    }
    if let Some(paths) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&paths) {
            if has_binaries(&dir) {
                return dir;
            }
        }
    }
    panic!(
        "PostgreSQL is not installed: run tests/run.sh (it installs postgresql-15), or set \
         DEPROV_PG_BIN to the directory holding initdb and postgres"
    );
}

fn random_token() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

fn chown(path: &Path, owner: Option<(u32, u32)>) -> Result<(), String> {
    match owner {
        Some((uid, gid)) => std::os::unix::fs::chown(path, Some(uid), Some(gid))
            .map_err(|err| format!("cannot hand {} to postgres: {err}", path.display())),
        None => Ok(()),
    }
}

impl Postgres {
    /// Creates a cluster and starts its server, waiting (at most 20 s) until the admin can
    /// log in. Panics, with the server log, when it does not come up: this is test set-up.
    pub async fn start() -> Postgres {
        let bin = postgres_bin_dir();
        let mut last_error = String::new();
        for _ in 0..3 {
            match Self::try_start(&bin).await {
                Ok(server) => return server,
                // Most likely another process took the port between probe and bind.
                Err(err) => last_error = err,
            }
        }
        panic!("PostgreSQL did not start: {last_error}");
    }

    async fn try_start(bin: &Path) -> Result<Postgres, String> {
        let owner = server_user()?;
        let dir = tempfile::Builder::new()
            .prefix("deprov-pg-")
            .tempdir()
            .map_err(|err| format!("cannot create a temp dir: {err}"))?;
        let data = dir.path().join("data");
        let sockets = dir.path().join("sockets");
        std::fs::create_dir(&sockets).map_err(|err| format!("cannot create sockets dir: {err}"))?;
        let admin_user = "deprov_admin".to_string();
        let admin_password = format!("pg-admin-{}", random_token());
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{admin_password}\n"))
            .map_err(|err| format!("cannot write the password file: {err}"))?;
        let log_path = dir.path().join("postgres.log");
        let log = std::fs::File::create(&log_path)
            .map_err(|err| format!("cannot create {}: {err}", log_path.display()))?;
        for path in [dir.path(), &sockets, &pwfile, &log_path] {
            chown(path, owner)?;
        }
        let command = |name: &str| -> Result<Command, String> {
            let mut command = Command::new(bin.join(name));
            command
                .current_dir(dir.path())
                .env("LC_ALL", "C")
                .stdin(Stdio::null())
                .stdout(
                    log.try_clone()
                        .map_err(|err| format!("cannot share the log: {err}"))?,
                )
                .stderr(
                    log.try_clone()
                        .map_err(|err| format!("cannot share the log: {err}"))?,
                );
            if let Some((uid, gid)) = owner {
                command.uid(uid).gid(gid);
            }
            Ok(command)
        };
        let log_text = || {
            let mut text = String::new();
            if let Ok(mut file) = std::fs::File::open(&log_path) {
                let _ = file.read_to_string(&mut text);
            }
            text
        };

        let status = command("initdb")?
            .arg("-D")
            .arg(&data)
            .args(["-U", &admin_user])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args([
                "--auth=scram-sha-256",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .status()
            .map_err(|err| format!("cannot run {}: {err}", bin.join("initdb").display()))?;
        if !status.success() {
            return Err(format!("initdb exited with {status}:\n{}", log_text()));
        }

        let port = free_port().map_err(|err| format!("no free port: {err}"))?;
        let child = command("postgres")?
            .arg("-D")
            .arg(&data)
            .args(["-h", "127.0.0.1", "-p", &port.to_string()])
            .arg("-k")
            .arg(&sockets)
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off", "-c", "shared_buffers=16MB"])
            .args(["-c", "max_connections=100"])
            .spawn()
            .map_err(|err| format!("cannot run {}: {err}", bin.join("postgres").display()))?;
        let mut server = Postgres {
            host: "127.0.0.1".into(),
            port,
            admin_user,
            admin_password,
            child,
            log_path: log_path.clone(),
            dir: Some(dir),
        };
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!(
                    "postgres exited with {status} on port {port}:\n{}",
                    log_text()
                ));
            }
            if server
                .connect_as_to(&server.admin_user, &server.admin_password, DEFAULT_DB)
                .await
                .is_ok()
            {
                return Ok(server);
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "postgres did not accept a connection on port {port} within {}s:\n{}",
                    START_TIMEOUT.as_secs(),
                    log_text()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Where the server's output goes.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// A client of `database` logged in as `role`; the error when the server refuses.
    pub async fn connect_as_to(
        &self,
        role: &str,
        password: &str,
        database: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        self.connect_raw(role, password, database)
            .await
            .map(|(client, _connection)| client)
    }

    /// A client of the `postgres` database logged in as `role` (to prove a login works or
    /// is refused).
    pub async fn connect_as(
        &self,
        role: &str,
        password: &str,
    ) -> Result<Client, tokio_postgres::Error> {
        self.connect_as_to(role, password, DEFAULT_DB).await
    }

    /// A client and its connection task (which ends when the client is dropped or the
    /// server closes the connection).
    async fn connect_raw(
        &self,
        role: &str,
        password: &str,
        database: &str,
    ) -> Result<(Client, JoinHandle<Result<(), tokio_postgres::Error>>), tokio_postgres::Error>
    {
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.host)
            .port(self.port)
            .user(role)
            .password(password)
            .dbname(database)
            .ssl_mode(SslMode::Disable)
            .connect_timeout(Duration::from_secs(5));
        let (client, connection) = config.connect(NoTls).await?;
        Ok((client, tokio::spawn(connection)))
    }

    /// A session as `role` that keeps a backend open until dropped. Panics when refused.
    pub async fn open_session(&self, role: &str, password: &str) -> Session {
        let (client, connection) = self
            .connect_raw(role, password, DEFAULT_DB)
            .await
            .unwrap_or_else(|err| panic!("{role} cannot log in: {err}"));
        Session { client, connection }
    }

    /// The admin's client of `database`.
    pub async fn admin(&self, database: &str) -> Client {
        self.connect_as_to(&self.admin_user, &self.admin_password, database)
            .await
            .unwrap_or_else(|err| panic!("the admin cannot log in to {database}: {err}"))
    }

    /// Runs statements as the admin in the `postgres` database.
    pub async fn execute(&self, sql: &str) {
        self.execute_in(DEFAULT_DB, sql).await;
    }

    /// Runs statements as the admin in `database`.
    pub async fn execute_in(&self, database: &str, sql: &str) {
        self.admin(database)
            .await
            .batch_execute(sql)
            .await
            .unwrap_or_else(|err| panic!("{sql} in {database}: {err}"));
    }

    pub async fn create_login_role(&self, name: &str, password: &str) {
        self.execute(&format!(
            "CREATE ROLE {} LOGIN PASSWORD {}",
            quote_ident(name),
            quote_literal(password)
        ))
        .await;
    }

    pub async fn create_group_role(&self, name: &str) {
        self.execute(&format!("CREATE ROLE {} NOLOGIN", quote_ident(name)))
            .await;
    }

    /// Makes `role` a member of `group`.
    pub async fn grant(&self, group: &str, role: &str) {
        self.execute(&format!(
            "GRANT {} TO {}",
            quote_ident(group),
            quote_ident(role)
        ))
        .await;
    }

    pub async fn create_database(&self, name: &str) {
        self.execute(&format!("CREATE DATABASE {}", quote_ident(name)))
            .await;
    }

    /// Creates a table in `database` owned by `owner`.
    pub async fn create_table_owned_by(&self, database: &str, table: &str, owner: &str) {
        self.execute_in(
            database,
            &format!(
                "CREATE TABLE public.{table} (id int); ALTER TABLE public.{table} OWNER TO {owner}; GRANT SELECT ON public.{table} TO PUBLIC",
                table = quote_ident(table),
                owner = quote_ident(owner)
            ),
        )
        .await;
    }

    /// The owner of `public.<table>` in `database`, `None` when there is no such table.
    pub async fn table_owner(&self, database: &str, table: &str) -> Option<String> {
        let rows = self
            .admin(database)
            .await
            .query(
                "SELECT tableowner::text FROM pg_tables WHERE schemaname = 'public' AND tablename = $1",
                &[&table],
            )
            .await
            .unwrap_or_else(|err| panic!("reading the owner of {table}: {err}"));
        rows.first().map(|row| row.get(0))
    }

    /// The role as the server holds it, `None` when it does not exist.
    pub async fn role(&self, name: &str) -> Option<RoleInfo> {
        let rows = self
            .admin(DEFAULT_DB)
            .await
            .query(
                "SELECT r.rolcanlogin, ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m \
                 JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1) \
                 FROM pg_roles r WHERE r.rolname = $1",
                &[&name],
            )
            .await
            .unwrap_or_else(|err| panic!("reading role {name}: {err}"));
        rows.first().map(|row| RoleInfo {
            can_login: row.get(0),
            member_of: row.get(1),
        })
    }

    /// How many backends `role` has open.
    pub async fn backends(&self, role: &str) -> i64 {
        self.admin(DEFAULT_DB)
            .await
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&role],
            )
            .await
            .map(|row| row.get(0))
            .unwrap_or_else(|err| panic!("counting backends of {role}: {err}"))
    }

    /// Whether `public.<table>` exists in `database`.
    pub async fn table_exists(&self, database: &str, table: &str) -> bool {
        self.table_owner(database, table).await.is_some()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // SIGINT is PostgreSQL's fast shutdown: it ends open sessions, then stops.
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let started = Instant::now();
        while started.elapsed() < STOP_TIMEOUT {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let kept = std::env::temp_dir().join(format!("deprov-postgres-{}.log", self.port));
            match std::fs::copy(&self.log_path, &kept) {
                Ok(_) => eprintln!("PostgreSQL log kept at {}", kept.display()),
                Err(err) => eprintln!("PostgreSQL log could not be kept: {err}"),
            }
        }
        drop(self.dir.take());
    }
}
