//! Plumbing of the PostgreSQL connector: the admin login (fetched lazily through the
//! `SecretSource`, cached for five minutes, never logged), one bounded connection per call,
//! identifier quoting, and the mapping of server errors onto `ConnectorError`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use deprov_core::ports::{SecretError, SecretSource};
use deprov_core::ConnectorError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_postgres::config::SslMode;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row};

/// How long a fetched login is reused before the secret is read again.
const LOGIN_TTL: Duration = Duration::from_secs(300);
/// How long an idle connection is reused; older ones are closed, so a rotated password or a
/// failed-over server is picked up.
const CONNECTION_TTL: Duration = Duration::from_secs(300);
/// The secret's fields.
pub(crate) const USER_FIELD: &str = "user";
pub(crate) const PASSWORD_FIELD: &str = "password";
/// The longest identifier PostgreSQL keeps (NAMEDATALEN - 1); longer ones are silently
/// truncated by the server, so they are refused here.
pub(crate) const MAX_IDENTIFIER_BYTES: usize = 63;
/// The longest server message quoted in an error.
const MAX_MESSAGE_CHARS: usize = 400;

/// An identifier as SQL text: always double-quoted, with `"` doubled, so no name can end
/// the identifier early. Names PostgreSQL cannot hold (empty, NUL, too long) are refused.
pub(crate) fn quote_ident(name: &str) -> Result<String, ConnectorError> {
    if let Some(why) = identifier_problem(name) {
        return Err(ConnectorError::Permanent(format!(
            "role name {name:?} {why}"
        )));
    }
    Ok(format!("\"{}\"", name.replace('"', "\"\"")))
}

/// Why `name` cannot be a PostgreSQL identifier, if it cannot.
pub(crate) fn identifier_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        Some("is empty".into())
    } else if name.contains('\0') {
        Some("contains a NUL character".into())
    } else if name.len() > MAX_IDENTIFIER_BYTES {
        Some(format!(
            "is {} bytes long; PostgreSQL names have at most {MAX_IDENTIFIER_BYTES}",
            name.len()
        ))
    } else {
        None
    }
}

/// Where the server is and how long anything may take.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Endpoint {
    pub host: String,
    pub port: u16,
    pub timeout: Duration,
}

impl Endpoint {
    pub(crate) fn describe(&self) -> String {
        if self.host.starts_with('/') {
            format!("{}/.s.PGSQL.{}", self.host, self.port)
        } else if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

struct Login {
    user: String,
    password: String,
    fetched: Instant,
}

/// What an error message names: the system, the server, the secret and its fields, never
/// a value.
#[derive(Clone, Debug)]
pub(crate) struct ErrorContext<'a> {
    pub system: &'a str,
    pub server: &'a str,
    pub database: &'a str,
    pub secret: &'a str,
    /// What was being done, e.g. `ALTER ROLE "ada" NOLOGIN`.
    pub doing: &'a str,
}

pub(crate) struct Pool {
    system: String,
    endpoint: Endpoint,
    secrets: Arc<dyn SecretSource>,
    secret_name: String,
    login: tokio::sync::Mutex<Option<Login>>,
    permits: Arc<Semaphore>,
    /// Healthy connections handed back, reused before a new one is opened (a new login costs
    /// a server process and a SCRAM exchange).
    idle: Arc<std::sync::Mutex<Vec<Idle>>>,
    max_connections: usize,
}

struct Idle {
    database: String,
    client: Client,
    opened: Instant,
}

impl Pool {
    pub(crate) fn new(
        system: &str,
        endpoint: Endpoint,
        max_connections: usize,
        secrets: Arc<dyn SecretSource>,
        secret_name: &str,
    ) -> Pool {
        Pool {
            system: system.to_string(),
            endpoint,
            secrets,
            secret_name: secret_name.to_string(),
            login: tokio::sync::Mutex::new(None),
            permits: Arc::new(Semaphore::new(max_connections.max(1))),
            idle: Arc::new(std::sync::Mutex::new(Vec::new())),
            max_connections: max_connections.max(1),
        }
    }

    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// The admin user name (not a secret value in itself, but only read from the secret).
    pub(crate) async fn admin_user(&self) -> Result<String, ConnectorError> {
        self.credentials().await.map(|(user, _)| user)
    }

    async fn credentials(&self) -> Result<(String, String), ConnectorError> {
        let mut cached = self.login.lock().await;
        if let Some(login) = cached.as_ref() {
            if login.fetched.elapsed() < LOGIN_TTL {
                return Ok((login.user.clone(), login.password.clone()));
            }
        }
        let secret = self
            .secrets
            .secret(&self.secret_name)
            .await
            .map_err(|err| secret_error(&self.system, &err))?;
        let user = secret
            .field(USER_FIELD)
            .map_err(|err| secret_error(&self.system, &err))?
            .to_string();
        let password = secret
            .field(PASSWORD_FIELD)
            .map_err(|err| secret_error(&self.system, &err))?
            .to_string();
        for (field, value) in [(USER_FIELD, &user), (PASSWORD_FIELD, &password)] {
            if value.is_empty() {
                return Err(ConnectorError::InvalidConfig(format!(
                    "system \"{}\": field \"{field}\" of secret \"{}\" is empty; store the PostgreSQL admin login there",
                    self.system, self.secret_name
                )));
            }
        }
        *cached = Some(Login {
            user: user.clone(),
            password: password.clone(),
            fetched: Instant::now(),
        });
        Ok((user, password))
    }

    async fn forget_login(&self) {
        *self.login.lock().await = None;
        // Connections opened with the old login go too.
        self.idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
    }

    /// An idle, open, young enough connection to `database`, if one is waiting.
    fn reuse(&self, database: &str) -> Option<Idle> {
        let mut idle = self
            .idle
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        idle.retain(|conn| !conn.client.is_closed() && conn.opened.elapsed() < CONNECTION_TTL);
        let index = idle.iter().position(|conn| conn.database == database)?;
        Some(idle.swap_remove(index))
    }

    /// One connection to `database` as the admin, holding one of the system's connection
    /// permits while it lives. Statements on it time out server-side after the configured
    /// timeout; locks are waited for at most that long.
    pub(crate) async fn connect(&self, database: &str) -> Result<Db, ConnectorError> {
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ConnectorError::Transient("the connection pool is closed".into()))?;
        let server = self.endpoint.describe();
        if let Some(conn) = self.reuse(database) {
            return Ok(Db {
                client: Some(conn.client),
                system: self.system.clone(),
                server,
                database: database.to_string(),
                secret: self.secret_name.clone(),
                timeout: self.endpoint.timeout + Duration::from_secs(5),
                opened: conn.opened,
                healthy: std::sync::atomic::AtomicBool::new(true),
                idle: Arc::clone(&self.idle),
                max_idle: self.max_connections,
                _permit: permit,
            });
        }
        let (user, password) = self.credentials().await?;
        let timeout = self.endpoint.timeout;
        let millis = timeout.as_millis().max(1);
        let mut config = tokio_postgres::Config::new();
        config
            .host(&self.endpoint.host)
            .port(self.endpoint.port)
            .user(&user)
            .password(password.as_bytes())
            .dbname(database)
            .application_name("deprov")
            .ssl_mode(SslMode::Disable)
            .connect_timeout(timeout.min(Duration::from_secs(10)));
        let doing = format!("connecting to database \"{database}\"");
        let context = ErrorContext {
            system: &self.system,
            server: &server,
            database,
            secret: &self.secret_name,
            doing: &doing,
        };
        let connected = tokio::time::timeout(timeout, config.connect(NoTls)).await;
        let (client, connection) = match connected {
            Ok(Ok(pair)) => pair,
            Ok(Err(err)) => {
                let mapped = map_error(&context, &err);
                if matches!(mapped, ConnectorError::Unauthorized(_)) {
                    self.forget_login().await;
                }
                return Err(mapped);
            }
            Err(_) => return Err(timed_out(&context, timeout)),
        };
        let system = self.system.clone();
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!(system = %system, error = %err, "postgres connection ended");
            }
        });
        let db = Db {
            client: Some(client),
            system: self.system.clone(),
            server,
            database: database.to_string(),
            secret: self.secret_name.clone(),
            timeout: timeout + Duration::from_secs(5),
            opened: Instant::now(),
            healthy: std::sync::atomic::AtomicBool::new(true),
            idle: Arc::clone(&self.idle),
            max_idle: self.max_connections,
            _permit: permit,
        };
        // Set after connecting rather than as startup `options`, which connection poolers
        // such as PgBouncer refuse.
        db.batch(
            "setting the session's timeouts",
            &format!(
                "SET statement_timeout = {millis}; SET lock_timeout = {millis}; SET idle_in_transaction_session_timeout = {}",
                millis.saturating_mul(2)
            ),
        )
        .await?;
        Ok(db)
    }
}

/// One open connection. Every call maps its errors, naming what was being done. Dropped
/// healthy, it goes back to the pool's idle list; after any error it is closed.
pub(crate) struct Db {
    client: Option<Client>,
    opened: Instant,
    /// Cleared by any failed call: the session may be mid-transaction or broken.
    healthy: std::sync::atomic::AtomicBool,
    idle: Arc<std::sync::Mutex<Vec<Idle>>>,
    system: String,
    server: String,
    database: String,
    secret: String,
    /// Client-side bound on one call (the server's statement timeout plus slack).
    timeout: Duration,
    /// Idle connections kept at most (the oldest is closed first).
    max_idle: usize,
    _permit: OwnedSemaphorePermit,
}

impl Db {
    pub(crate) fn server(&self) -> &str {
        &self.server
    }

    pub(crate) fn database(&self) -> &str {
        &self.database
    }

    pub(crate) fn context<'a>(&'a self, doing: &'a str) -> ErrorContext<'a> {
        ErrorContext {
            system: &self.system,
            server: &self.server,
            database: &self.database,
            secret: &self.secret,
            doing,
        }
    }

    fn client(&self, doing: &str) -> Result<&Client, DbError> {
        self.client.as_ref().ok_or_else(|| DbError {
            code: None,
            error: ConnectorError::Transient(format!(
                "system \"{}\": the connection was already returned while {doing}",
                self.system
            )),
        })
    }

    async fn bounded<T>(
        &self,
        doing: &str,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        let result = self.bounded_inner(doing, call).await;
        if result.is_err() {
            self.healthy
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        result
    }

    async fn bounded_inner<T>(
        &self,
        doing: &str,
        call: impl std::future::Future<Output = Result<T, tokio_postgres::Error>>,
    ) -> Result<T, DbError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(err)) => Err(DbError {
                code: err.code().cloned(),
                error: map_error(&self.context(doing), &err),
            }),
            Err(_) => Err(DbError {
                code: None,
                error: timed_out(&self.context(doing), self.timeout),
            }),
        }
    }

    pub(crate) async fn query(
        &self,
        doing: &str,
        sql: &str,
        params: &[&(dyn ToSql + Sync)],
    ) -> Result<Vec<Row>, DbError> {
        self.bounded(doing, self.client(doing)?.query(sql, params))
            .await
    }

    /// Runs statements without parameters (identifiers already quoted), in one implicit
    /// transaction when there are several.
    pub(crate) async fn batch(&self, doing: &str, sql: &str) -> Result<(), DbError> {
        self.bounded(doing, self.client(doing)?.batch_execute(sql))
            .await
    }

    /// Runs a read-only query the operator wrote, in a read-only transaction.
    pub(crate) async fn read_only(&self, doing: &str, sql: &str) -> Result<Vec<Row>, DbError> {
        self.batch(doing, "BEGIN READ ONLY").await?;
        let rows = self
            .bounded(doing, self.client(doing)?.query(sql, &[]))
            .await;
        let _ = self.batch(doing, "ROLLBACK").await;
        rows
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        let healthy = self.healthy.load(std::sync::atomic::Ordering::Relaxed);
        if healthy && !client.is_closed() && self.opened.elapsed() < CONNECTION_TTL {
            let mut idle = self
                .idle
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if idle.len() >= self.max_idle {
                idle.remove(0);
            }
            idle.push(Idle {
                database: std::mem::take(&mut self.database),
                client,
                opened: self.opened,
            });
        }
    }
}

/// A failed call: the mapped error, and the SQLSTATE so callers can treat e.g. "role does
/// not exist" as already done.
#[derive(Debug)]
pub(crate) struct DbError {
    pub code: Option<SqlState>,
    pub error: ConnectorError,
}

impl DbError {
    pub(crate) fn is(&self, state: &SqlState) -> bool {
        self.code.as_ref() == Some(state)
    }
}

impl From<DbError> for ConnectorError {
    fn from(err: DbError) -> ConnectorError {
        err.error
    }
}

fn timed_out(context: &ErrorContext<'_>, timeout: Duration) -> ConnectorError {
    ConnectorError::Transient(format!(
        "the PostgreSQL server of system \"{}\" at {} did not answer within {}s while {}",
        context.system,
        context.server,
        timeout.as_secs(),
        context.doing
    ))
}

pub(crate) fn secret_error(system: &str, err: &SecretError) -> ConnectorError {
    match err {
        SecretError::NotFound(_) | SecretError::MissingField { .. } => {
            ConnectorError::InvalidConfig(format!(
                "system \"{system}\" cannot get its PostgreSQL admin login (fields \"{USER_FIELD}\" and \"{PASSWORD_FIELD}\"): {err}"
            ))
        }
        SecretError::Unreadable { .. } => ConnectorError::Transient(format!(
            "system \"{system}\" cannot get its PostgreSQL admin login: {err}"
        )),
    }
}

fn shorten(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() <= MAX_MESSAGE_CHARS {
        text.to_string()
    } else {
        let cut: String = text.chars().take(MAX_MESSAGE_CHARS).collect();
        format!("{cut}…")
    }
}

/// Whether a SQLSTATE means "try again later".
pub(crate) fn is_transient(code: &str) -> bool {
    code.starts_with("08")
        || code.starts_with("53")
        || matches!(
            code,
            "57P01" | "57P02" | "57P03" | "40001" | "40P01" | "57014" | "55P03"
        )
}

/// Maps a driver error onto the connector's error kinds.
pub(crate) fn map_error(context: &ErrorContext<'_>, err: &tokio_postgres::Error) -> ConnectorError {
    let ErrorContext {
        system,
        server,
        database,
        secret,
        doing,
    } = context;
    let Some(db) = err.as_db_error() else {
        // No SQLSTATE: the connection failed or broke (refused, reset, closed, timed out).
        return ConnectorError::Transient(format!(
            "cannot talk to the PostgreSQL server of system \"{system}\" at {server} while {doing}: {err}"
        ));
    };
    let code = db.code().code();
    let message = shorten(db.message());
    let detail = db
        .detail()
        .map(|detail| format!(" ({})", shorten(detail)))
        .unwrap_or_default();
    if code == "28P01" || code == "28000" {
        // The server's message names the user; it stays out, like every secret field.
        return ConnectorError::Unauthorized(format!(
            "the PostgreSQL server of system \"{system}\" at {server} refused the admin login from secret \"{secret}\" (fields \"{USER_FIELD}\" and \"{PASSWORD_FIELD}\") for database \"{database}\" (SQLSTATE {code}); fix that secret's user or rotate its password, and check pg_hba.conf allows it"
        ));
    }
    if is_transient(code) {
        return ConnectorError::Transient(format!(
            "the PostgreSQL server of system \"{system}\" at {server} failed while {doing} (SQLSTATE {code}): {message}"
        ));
    }
    match code {
        "42501" => ConnectorError::Permanent(format!(
            "the admin role from secret \"{secret}\" lacks the rights to do this on system \"{system}\" ({doing}; SQLSTATE 42501: {message}{detail}); grant it CREATEROLE and ADMIN OPTION on the roles it manages, or use a superuser"
        )),
        "3D000" => ConnectorError::InvalidConfig(format!(
            "system \"{system}\": database \"{database}\" does not exist on {server} ({message}); fix systems.{system}.connection.databases or maintenance_db"
        )),
        _ => ConnectorError::Permanent(format!(
            "the PostgreSQL server of system \"{system}\" at {server} refused {doing} (SQLSTATE {code}): {message}{detail}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_always_quoted_and_escaped() {
        assert_eq!(quote_ident("ada").ok(), Some("\"ada\"".to_string()));
        assert_eq!(
            quote_ident("bob\"; DROP TABLE x; --").ok(),
            Some("\"bob\"\"; DROP TABLE x; --\"".to_string())
        );
        assert_eq!(
            quote_ident("Mixed Case").ok(),
            Some("\"Mixed Case\"".into())
        );
        assert!(quote_ident("").is_err());
        assert!(quote_ident("a\0b").is_err());
        assert!(quote_ident(&"x".repeat(64)).is_err());
        assert!(quote_ident(&"x".repeat(63)).is_ok());
    }

    #[test]
    fn transient_states() {
        for code in [
            "08006", "08001", "53300", "57P01", "57P02", "57P03", "40001", "40P01",
        ] {
            assert!(is_transient(code), "{code}");
        }
        for code in ["42501", "28P01", "42704", "2BP01", "XX000"] {
            assert!(!is_transient(code), "{code}");
        }
    }

    #[test]
    fn endpoints_describe_themselves() {
        let endpoint = |host: &str| Endpoint {
            host: host.into(),
            port: 5432,
            timeout: Duration::from_secs(1),
        };
        assert_eq!(endpoint("db.internal").describe(), "db.internal:5432");
        assert_eq!(endpoint("::1").describe(), "[::1]:5432");
        assert_eq!(
            endpoint("/var/run/postgresql").describe(),
            "/var/run/postgresql/.s.PGSQL.5432"
        );
    }

    #[test]
    fn secret_errors_name_the_fields() {
        let err = secret_error(
            "warehouse",
            &SecretError::MissingField {
                name: "deprov/connector/warehouse".into(),
                field: "password".into(),
            },
        );
        assert!(matches!(err, ConnectorError::InvalidConfig(_)));
        let text = err.to_string();
        assert!(text.contains("deprov/connector/warehouse"), "{text}");
        assert!(text.contains("\"password\""), "{text}");
    }
}
