//! PostgreSQL connector: a person's account is a login role of one cluster.
//!
//! Accounts are the roles of `pg_roles`, entitlements the roles they are direct members of
//! (`pg_auth_members`, kind `role`).
//! - sessions: `pg_terminate_backend` of every backend of the role (`pg_stat_activity`),
//!   waiting until they are gone;
//! - disable: `ALTER ROLE … NOLOGIN`, then the role's backends are terminated, so a session
//!   opened before cannot outlive the disable;
//! - remove entitlement: `REVOKE <group> FROM <role>` (on PostgreSQL 16+, grants made by
//!   other grantors are revoked `GRANTED BY` each of them);
//! - delete: in each configured database `REASSIGN OWNED BY <role> TO <reassign_owned_to>;
//!   DROP OWNED BY <role>`, then `DROP ROLE <role>`.
//!
//! Batches (`max_batch`, 250): a batch's roles are read with one query, its disables are
//! one `ALTER ROLE … NOLOGIN` script (one transaction; when a role vanished meanwhile, one
//! statement at a time) and one termination query, and its read-back is one query; every
//! task is still judged on its own.
//!
//! Every change first reads the role: a missing role, or a state already reached, is
//! `AlreadyDone`. Names are only ever sent as bound parameters or as double-quoted
//! identifiers with `"` doubled; a name PostgreSQL cannot hold (empty, NUL, over 63 bytes,
//! which the server would silently truncate) is refused. The connector never acts on the role
//! it logs in as, on the `reassign_owned_to` role, or on PostgreSQL's reserved `pg_*` roles.
//!
//! Connections: one per call, at most `concurrency` at once per system, with a connect
//! timeout and server-side `statement_timeout` / `lock_timeout` of `timeout_secs`. The
//! connection is plain TCP (or a Unix socket when `host` starts with `/`): TLS (`sslmode`)
//! is not implemented yet, so reach remote servers through a private network or a tunnel.
//!
//! Policy settings (`[systems.<name>]`, `kind = "postgres"`): `secret` (fields `user` and
//! `password`: the admin role deprov connects as, a superuser or a `CREATEROLE` role with
//! `ADMIN OPTION` on the roles it manages and `pg_signal_backend`), and `connection` keys
//! `host` (required), `port` (5432), `databases` (["postgres"]: where the delete stage
//! reassigns and drops what the role owns), `maintenance_db` ("postgres": where everything
//! else runs), `reassign_owned_to` (the role that receives owned objects; required to
//! delete), `role_pattern` ("{username}": how a person's role is named),
//! `last_activity_query` (SQL returning `(rolname, timestamptz)` rows, run read-only for
//! `list_accounts`), `timeout_secs` (30).

mod db;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::{MatchBy, SystemConfig};
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Entitlement, Evidence, PersonQuery,
};
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use tracing::Instrument;

use self::db::{identifier_problem, quote_ident, Db, Endpoint, Pool};

const DEFAULT_PORT: u64 = 5432;
const DEFAULT_DATABASE: &str = "postgres";
const DEFAULT_ROLE_PATTERN: &str = "{username}";
const USERNAME_PLACEHOLDER: &str = "{username}";
const DEFAULT_TIMEOUT_SECS: u64 = 30;
const MAX_TIMEOUT_SECS: u64 = 600;
const CONNECTION_KEYS: &[&str] = &[
    "host",
    "port",
    "databases",
    "maintenance_db",
    "reassign_owned_to",
    "role_pattern",
    "last_activity_query",
    "timeout_secs",
];
/// Tasks (or people) read or changed in one round trip.
const MAX_BATCH: usize = 250;
/// How long `apply` waits for terminated backends to leave `pg_stat_activity`.
const TERMINATION_WAIT: Duration = Duration::from_secs(10);
const ENTITLEMENT_KIND: &str = "role";

/// Roles as read from `pg_roles`, with their direct memberships and open backends.
/// `pg_stat_activity` is read once per query (a function over every backend), not per role.
const ROLES_QUERY: &str = "SELECT r.rolname::text, r.rolcanlogin, \
     ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m \
           JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1), \
     COALESCE(a.backends, 0) \
   FROM pg_roles r LEFT JOIN (SELECT usename, count(*) AS backends FROM pg_stat_activity \
     WHERE pid <> pg_backend_pid() GROUP BY usename) a ON a.usename = r.rolname \
   WHERE r.rolname = ANY($1)";
const LOGIN_ROLES_QUERY: &str = "SELECT r.rolname::text, r.rolcanlogin, \
     ARRAY(SELECT DISTINCT g.rolname::text FROM pg_auth_members m \
           JOIN pg_roles g ON g.oid = m.roleid WHERE m.member = r.oid ORDER BY 1), \
     0::bigint \
   FROM pg_roles r WHERE r.rolcanlogin AND r.rolname !~ '^pg_' ORDER BY 1";
const BACKENDS_QUERY: &str = "SELECT usename::text, count(*) FROM pg_stat_activity \
   WHERE usename = ANY($1) AND pid <> pg_backend_pid() GROUP BY 1";
const TERMINATE_QUERY: &str = "SELECT usename::text, \
     count(*) FILTER (WHERE pg_terminate_backend(pid)) \
   FROM pg_stat_activity WHERE usename = ANY($1) AND pid <> pg_backend_pid() GROUP BY 1";
const GRANTORS_QUERY: &str = "SELECT DISTINCT gr.rolname::text FROM pg_auth_members m \
   JOIN pg_roles g ON g.oid = m.roleid JOIN pg_roles r ON r.oid = m.member \
   JOIN pg_roles gr ON gr.oid = m.grantor WHERE g.rolname = $1 AND r.rolname = $2";

/// The connection settings, validated.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    host: String,
    port: u16,
    databases: Vec<String>,
    maintenance_db: String,
    reassign_owned_to: Option<String>,
    role_pattern: String,
    last_activity_query: Option<String>,
    timeout: Duration,
    secret: String,
}

impl Settings {
    /// Every problem of the system's settings, each saying what to fix.
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let key = |name: &str| format!("systems.{system}.connection.{name}");
        let connection = &config.connection;

        for name in connection.keys() {
            if !CONNECTION_KEYS.contains(&name.as_str()) {
                problems.push(format!(
                    "{} is not a PostgreSQL setting; the PostgreSQL settings are {}",
                    key(name),
                    CONNECTION_KEYS.join(", ")
                ));
            }
        }

        let host = match connection.get("host") {
            None => {
                problems.push(format!(
                    "{} is required: the PostgreSQL server's host name or address, e.g. \"db.internal\" (or a Unix socket directory such as \"/var/run/postgresql\")",
                    key("host")
                ));
                None
            }
            Some(Value::String(host))
                if !host.trim().is_empty()
                    && host.trim() == host
                    && !host.chars().any(|c| c.is_control() || c == ',') =>
            {
                Some(host.clone())
            }
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be one host name or address without spaces or commas, e.g. \"db.internal\"",
                    key("host")
                ));
                None
            }
        };

        let port = match connection.get("port") {
            None => DEFAULT_PORT,
            Some(value) => match value.as_u64() {
                Some(port) if (1..=65535).contains(&port) => port,
                _ => {
                    problems.push(format!(
                        "{} = {value} must be a TCP port, a whole number from 1 to 65535 (default {DEFAULT_PORT})",
                        key("port")
                    ));
                    DEFAULT_PORT
                }
            },
        };

        let database = |name: &str, value: &Value, problems: &mut Vec<String>| match value {
            Value::String(db) if identifier_problem(db).is_none() => Some(db.clone()),
            Value::String(db) => {
                let why = identifier_problem(db).unwrap_or_default();
                problems.push(format!(
                    "{} has a database name \"{db}\" that {why}; name an existing database",
                    key(name)
                ));
                None
            }
            other => {
                problems.push(format!(
                    "{} must name databases as strings, e.g. \"{DEFAULT_DATABASE}\", not {other}",
                    key(name)
                ));
                None
            }
        };

        let databases = match connection.get("databases") {
            None => vec![DEFAULT_DATABASE.to_string()],
            Some(Value::Array(items)) if !items.is_empty() => {
                let mut databases = Vec::new();
                for item in items {
                    if let Some(db) = database("databases", item, &mut problems) {
                        if !databases.contains(&db) {
                            databases.push(db);
                        }
                    }
                }
                databases
            }
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be a non-empty list of the databases where the delete stage reassigns and drops what a role owns, e.g. [\"postgres\", \"app\"] (default [\"{DEFAULT_DATABASE}\"])",
                    key("databases")
                ));
                Vec::new()
            }
        };

        let maintenance_db = match connection.get("maintenance_db") {
            None => DEFAULT_DATABASE.to_string(),
            Some(value) => database("maintenance_db", value, &mut problems)
                .unwrap_or_else(|| DEFAULT_DATABASE.to_string()),
        };

        let reassign_owned_to = match connection.get("reassign_owned_to") {
            None => None,
            Some(Value::String(role)) => match identifier_problem(role) {
                None if role.eq_ignore_ascii_case("public") => {
                    problems.push(format!(
                        "{} = \"{role}\" must be a real role (PUBLIC cannot own objects), e.g. \"data_owner\"",
                        key("reassign_owned_to")
                    ));
                    None
                }
                None => Some(role.clone()),
                Some(why) => {
                    problems.push(format!(
                        "{} = \"{role}\" {why}; name the role that receives what deleted roles own, e.g. \"data_owner\"",
                        key("reassign_owned_to")
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be a role name (a string), e.g. \"data_owner\"",
                    key("reassign_owned_to")
                ));
                None
            }
        };

        let role_pattern = match connection.get("role_pattern") {
            None => DEFAULT_ROLE_PATTERN.to_string(),
            Some(Value::String(pattern)) if pattern.contains(USERNAME_PLACEHOLDER) => {
                pattern.clone()
            }
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be a string containing {USERNAME_PLACEHOLDER}, e.g. \"u_{USERNAME_PLACEHOLDER}\" (default \"{DEFAULT_ROLE_PATTERN}\")",
                    key("role_pattern")
                ));
                DEFAULT_ROLE_PATTERN.to_string()
            }
        };

        let last_activity_query = match connection.get("last_activity_query") {
            None => None,
            Some(Value::String(sql)) if !sql.trim().is_empty() => Some(sql.trim().to_string()),
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be a SQL query returning (rolname, last activity timestamptz) rows, e.g. \"SELECT rolname, last_seen FROM audit.logins\"",
                    key("last_activity_query")
                ));
                None
            }
        };

        let timeout_secs = match connection.get("timeout_secs") {
            None => DEFAULT_TIMEOUT_SECS,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=MAX_TIMEOUT_SECS).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{} = {value} must be a whole number from 1 to {MAX_TIMEOUT_SECS} (default {DEFAULT_TIMEOUT_SECS})",
                        key("timeout_secs")
                    ));
                    DEFAULT_TIMEOUT_SECS
                }
            },
        };

        let secret = match config.secret.as_deref() {
            Some(name) if !name.trim().is_empty() => Some(name.to_string()),
            _ => {
                problems.push(format!(
                    "systems.{system}.secret is required for a postgres system: the name of the secret whose fields \"user\" and \"password\" hold the admin login, e.g. secret = \"deprov/connector/{system}\""
                ));
                None
            }
        };

        match (host, secret) {
            (Some(host), Some(secret)) if problems.is_empty() => Ok(Settings {
                host,
                port: u16::try_from(port).unwrap_or(5432),
                databases,
                maintenance_db,
                reassign_owned_to,
                role_pattern,
                last_activity_query,
                timeout: Duration::from_secs(timeout_secs),
                secret,
            }),
            _ => Err(problems),
        }
    }

    /// The role name of a person's username.
    fn role_name(&self, username: &str) -> String {
        self.role_pattern.replace(USERNAME_PLACEHOLDER, username)
    }
}

/// The name the person goes by on this system: the event's username, else the local part
/// of the email.
fn person_username(person: &PersonQuery, match_by: MatchBy) -> Option<&str> {
    let by_username = match match_by {
        MatchBy::Username => person.username.as_deref().filter(|u| !u.is_empty()),
        MatchBy::Email => None,
    };
    by_username.or_else(|| {
        person
            .email
            .split('@')
            .next()
            .filter(|local| !local.is_empty())
    })
}

/// A role as read back.
#[derive(Clone, Debug, PartialEq)]
struct RoleState {
    name: String,
    can_login: bool,
    member_of: Vec<String>,
    backends: i64,
}

impl RoleState {
    fn from_row(row: &Row) -> Result<RoleState, ConnectorError> {
        let read = |err: tokio_postgres::Error| {
            ConnectorError::Permanent(format!("unexpected pg_roles row: {err}"))
        };
        Ok(RoleState {
            name: row.try_get(0).map_err(read)?,
            can_login: row.try_get(1).map_err(read)?,
            member_of: row.try_get(2).map_err(read)?,
            backends: row.try_get(3).map_err(read)?,
        })
    }
}

/// The one result of a batch of one.
fn single<T>(mut results: Vec<Result<T, ConnectorError>>) -> Result<T, ConnectorError> {
    results
        .pop()
        .unwrap_or_else(|| Err(ConnectorError::Permanent("no result".into())))
}

/// Whether `terminate` signalled any backend of `role`.
fn signalled(terminated: &BTreeMap<String, i64>, role: &str) -> bool {
    terminated.get(role).is_some_and(|count| *count > 0)
}

/// `(rolname, count)` rows by role name.
fn counts(rows: &[Row]) -> Result<BTreeMap<String, i64>, ConnectorError> {
    rows.iter()
        .map(|row| {
            Ok((
                row.try_get::<_, String>(0).map_err(|err| {
                    ConnectorError::Permanent(format!("unexpected pg_stat_activity row: {err}"))
                })?,
                row.try_get::<_, i64>(1).map_err(|err| {
                    ConnectorError::Permanent(format!("unexpected pg_stat_activity row: {err}"))
                })?,
            ))
        })
        .collect()
}

pub struct PostgresConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    pool: Pool,
}

impl std::fmt::Debug for PostgresConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConnector")
            .field("system", &self.system)
            .field("server", &self.pool.endpoint().describe())
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl PostgresConnector {
    /// Builds the connector of one policy system. Nothing is fetched or connected yet: the
    /// admin login is read from `secrets` on first use.
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        let pool = Pool::new(
            system,
            Endpoint {
                host: settings.host.clone(),
                port: settings.port,
                timeout: settings.timeout,
            },
            usize::try_from(config.concurrency.max(1)).unwrap_or(1),
            secrets,
            &settings.secret,
        );
        Ok(PostgresConnector {
            system: system.to_string(),
            settings,
            match_by: config.match_by,
            pool,
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    async fn maintenance(&self) -> Result<Db, ConnectorError> {
        self.pool.connect(&self.settings.maintenance_db).await
    }

    async fn read_role(&self, db: &Db, name: &str) -> Result<Option<RoleState>, ConnectorError> {
        Ok(self.read_roles(db, &[name]).await?.remove(name))
    }

    /// The roles of `names` that exist, by name: one query however many.
    async fn read_roles(
        &self,
        db: &Db,
        names: &[&str],
    ) -> Result<BTreeMap<String, RoleState>, ConnectorError> {
        let doing = match names {
            [name] => format!("reading role {name:?} from pg_roles"),
            _ => format!("reading {} roles from pg_roles", names.len()),
        };
        let rows = db.query(&doing, ROLES_QUERY, &[&names]).await?;
        rows.iter()
            .map(|row| RoleState::from_row(row).map(|state| (state.name.clone(), state)))
            .collect()
    }

    /// Open backends of each of `names` that has any: one query however many.
    async fn backends(
        &self,
        db: &Db,
        names: &[&str],
    ) -> Result<BTreeMap<String, i64>, ConnectorError> {
        let rows = db
            .query(
                &format!("counting the backends of {} role(s)", names.len()),
                BACKENDS_QUERY,
                &[&names],
            )
            .await?;
        counts(&rows)
    }

    /// Terminates every backend of the roles and waits until they are gone; returns how
    /// many were signalled per role.
    async fn terminate(
        &self,
        db: &Db,
        names: &[&str],
    ) -> Result<BTreeMap<String, i64>, ConnectorError> {
        let doing = match names {
            [name] => format!("terminating the backends of role {name:?}"),
            _ => format!("terminating the backends of {} roles", names.len()),
        };
        let terminated = counts(&db.query(&doing, TERMINATE_QUERY, &[&names]).await?)?;
        if terminated.values().any(|count| *count > 0) {
            let started = Instant::now();
            while !self.backends(db, names).await?.is_empty()
                && started.elapsed() < TERMINATION_WAIT
            {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        Ok(terminated)
    }

    /// Refuses to act on the role deprov logs in as, or on the role that receives what
    /// deleted roles own.
    async fn guard(&self, role: &str, action: Action) -> Result<(), ConnectorError> {
        let admin = self.pool.admin_user().await?;
        let why = if role.starts_with("pg_") {
            Some("names starting with pg_ are PostgreSQL's reserved roles".to_string())
        } else if role == admin {
            Some(format!(
                "it is the role deprov logs in as (secret \"{}\")",
                self.settings.secret
            ))
        } else if self.settings.reassign_owned_to.as_deref() == Some(role) {
            Some(format!(
                "it is systems.{}.connection.reassign_owned_to",
                self.system
            ))
        } else {
            None
        };
        match why {
            Some(why) => Err(ConnectorError::Permanent(format!(
                "refusing to {} role {role:?} on system \"{}\": {why}",
                action.as_str().replace('_', " "),
                self.system
            ))),
            None => Ok(()),
        }
    }

    fn account(&self, role: RoleState, last_activity: Option<DateTime<Utc>>) -> Account {
        let mut entitlements: Vec<Entitlement> = role
            .member_of
            .iter()
            .map(|group| Entitlement {
                id: group.clone(),
                name: group.clone(),
                kind: ENTITLEMENT_KIND.into(),
            })
            .collect();
        entitlements.sort();
        entitlements.dedup();
        Account {
            system: self.system.clone(),
            id: role.name.clone(),
            username: role.name,
            email: None,
            active: role.can_login,
            entitlements,
            credentials: Vec::new(),
            last_activity,
        }
    }

    fn target_role<'t>(&self, task: &'t Task) -> Result<&'t str, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} acts on an entitlement but names no target role",
                task.task_id
            ))
        })?;
        if target.kind != ENTITLEMENT_KIND {
            return Err(ConnectorError::Unsupported(format!(
                "act on a \"{}\" entitlement (PostgreSQL grants roles only)",
                target.kind
            )));
        }
        Ok(&target.id)
    }

    async fn revoke_sessions(&self, role: &str) -> Result<Applied, ConnectorError> {
        let db = self.maintenance().await?;
        if self.read_role(&db, role).await?.is_none() {
            return Ok(Applied::AlreadyDone);
        }
        Ok(if signalled(&self.terminate(&db, &[role]).await?, role) {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    /// `ALTER ROLE … NOLOGIN` of every role that can log in, as one script, then the
    /// termination of their backends; what each role came to. Roles that do not exist are
    /// `AlreadyDone`.
    async fn disable(&self, roles: &[&str]) -> Result<BTreeMap<String, Applied>, ConnectorError> {
        let db = self.maintenance().await?;
        let states = self.read_roles(&db, roles).await?;
        let to_lock: Vec<&str> = roles
            .iter()
            .copied()
            .filter(|role| states.get(*role).is_some_and(|state| state.can_login))
            .collect();
        let mut locked = BTreeSet::new();
        if !to_lock.is_empty() {
            let statements = to_lock
                .iter()
                .map(|role| Ok(format!("ALTER ROLE {} NOLOGIN", quote_ident(role)?)))
                .collect::<Result<Vec<String>, ConnectorError>>()?;
            let doing = match statements.as_slice() {
                [one] => one.clone(),
                many => format!("ALTER ROLE … NOLOGIN of {} roles", many.len()),
            };
            // One script is one transaction: all locked, or none.
            match db.batch(&doing, &statements.join(";\n")).await {
                Ok(()) => locked.extend(to_lock.iter().copied()),
                // A role went away meanwhile and took the script with it: one at a time.
                Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => {
                    for (role, statement) in to_lock.iter().zip(&statements) {
                        match db.batch(statement, statement).await {
                            Ok(()) => {
                                locked.insert(*role);
                            }
                            Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => {}
                            Err(err) => return Err(err.into()),
                        }
                    }
                }
                Err(err) => return Err(err.into()),
            }
        }
        // NOLOGIN only refuses new logins: sessions opened before are ended too.
        let existing: Vec<&str> = roles
            .iter()
            .copied()
            .filter(|role| states.contains_key(*role))
            .collect();
        let terminated = if existing.is_empty() {
            BTreeMap::new()
        } else {
            self.terminate(&db, &existing).await?
        };
        Ok(roles
            .iter()
            .map(|role| {
                let changed = locked.contains(role) || signalled(&terminated, role);
                let applied = if changed {
                    Applied::Changed
                } else {
                    Applied::AlreadyDone
                };
                (role.to_string(), applied)
            })
            .collect())
    }

    async fn remove_membership(&self, group: &str, role: &str) -> Result<Applied, ConnectorError> {
        let quoted_group = quote_ident(group)?;
        let quoted_role = quote_ident(role)?;
        let db = self.maintenance().await?;
        let member = |state: &Option<RoleState>| {
            state
                .as_ref()
                .is_some_and(|state| state.member_of.iter().any(|g| g == group))
        };
        if !member(&self.read_role(&db, role).await?) {
            return Ok(Applied::AlreadyDone);
        }
        let statement = format!("REVOKE {quoted_group} FROM {quoted_role}");
        match db.batch(&statement, &statement).await {
            Ok(()) => {}
            Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => return Ok(Applied::AlreadyDone),
            Err(err) => return Err(err.into()),
        }
        if member(&self.read_role(&db, role).await?) {
            // PostgreSQL 16+ keeps one grant per grantor; a plain REVOKE only removes ours.
            let rows = db
                .query(
                    &format!("reading who granted {group:?} to {role:?}"),
                    GRANTORS_QUERY,
                    &[&group, &role],
                )
                .await?;
            for row in rows {
                let grantor: String = row.try_get(0).map_err(|err| {
                    ConnectorError::Permanent(format!("unexpected pg_auth_members row: {err}"))
                })?;
                let statement = format!(
                    "REVOKE {quoted_group} FROM {quoted_role} GRANTED BY {}",
                    quote_ident(&grantor)?
                );
                match db.batch(&statement, &statement).await {
                    Ok(()) => {}
                    Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => {}
                    Err(err) => return Err(err.into()),
                }
            }
        }
        Ok(Applied::Changed)
    }

    /// `ALTER ROLE … LOGIN`: the restore of a rehire. A dropped role cannot log in again.
    async fn enable(&self, role: &str) -> Result<Applied, ConnectorError> {
        let quoted = quote_ident(role)?;
        let gone = || {
            ConnectorError::NotFound(format!(
                "system \"{}\": role {role:?} no longer exists, so it cannot log in again",
                self.system
            ))
        };
        let db = self.maintenance().await?;
        let state = self.read_role(&db, role).await?.ok_or_else(gone)?;
        if state.can_login {
            return Ok(Applied::AlreadyDone);
        }
        let statement = format!("ALTER ROLE {quoted} LOGIN");
        match db.batch(&statement, &statement).await {
            Ok(()) => Ok(Applied::Changed),
            Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => Err(gone()),
            Err(err) => Err(err.into()),
        }
    }

    /// `GRANT group TO role`: the restore of a removed membership.
    async fn add_membership(&self, group: &str, role: &str) -> Result<Applied, ConnectorError> {
        let quoted_group = quote_ident(group)?;
        let quoted_role = quote_ident(role)?;
        let db = self.maintenance().await?;
        let state = self.read_role(&db, role).await?.ok_or_else(|| {
            ConnectorError::NotFound(format!(
                "system \"{}\": role {role:?} no longer exists, so it cannot be granted {group:?} again",
                self.system
            ))
        })?;
        if state.member_of.iter().any(|g| g == group) {
            return Ok(Applied::AlreadyDone);
        }
        let statement = format!("GRANT {quoted_group} TO {quoted_role}");
        match db.batch(&statement, &statement).await {
            Ok(()) => Ok(Applied::Changed),
            Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => {
                Err(ConnectorError::NotFound(format!(
                    "system \"{}\": {}; the role {group:?} or {role:?} no longer exists",
                    self.system, err.error
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    async fn delete(&self, role: &str) -> Result<Applied, ConnectorError> {
        let quoted = quote_ident(role)?;
        {
            let db = self.maintenance().await?;
            if self.read_role(&db, role).await?.is_none() {
                return Ok(Applied::AlreadyDone);
            }
        }
        let heir = self.settings.reassign_owned_to.as_deref().ok_or_else(|| {
            ConnectorError::InvalidConfig(format!(
                "systems.{}.connection.reassign_owned_to is required to delete roles: name the role that receives what they own, e.g. reassign_owned_to = \"data_owner\"",
                self.system
            ))
        })?;
        let quoted_heir = quote_ident(heir)?;
        for database in &self.settings.databases {
            let db = self.pool.connect(database).await?;
            let statement = format!(
                "BEGIN; REASSIGN OWNED BY {quoted} TO {quoted_heir}; DROP OWNED BY {quoted}; COMMIT"
            );
            let doing = format!(
                "REASSIGN OWNED BY {quoted} TO {quoted_heir}; DROP OWNED BY {quoted} in database \"{database}\""
            );
            match db.batch(&doing, &statement).await {
                Ok(()) => {}
                // The role went away meanwhile: nothing left to do anywhere.
                Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => {
                    let _ = db.batch("ROLLBACK", "ROLLBACK").await;
                    return Ok(Applied::AlreadyDone);
                }
                Err(err) => return Err(err.into()),
            }
        }
        let db = self.maintenance().await?;
        self.terminate(&db, &[role]).await?;
        let statement = format!("DROP ROLE {quoted}");
        match db.batch(&statement, &statement).await {
            Ok(()) => Ok(Applied::Changed),
            Err(err) if err.is(&SqlState::UNDEFINED_OBJECT) => Ok(Applied::AlreadyDone),
            Err(err) if err.is(&SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
                Err(ConnectorError::Permanent(format!(
                    "{}; add the databases named there to systems.{}.connection.databases so the delete stage reassigns and drops what the role owns in them",
                    err.error, self.system
                )))
            }
            Err(err) => Err(err.into()),
        }
    }

    /// Refuses a task on a name no role can have, or on a role deprov must not touch.
    async fn checked(&self, role: &str, action: Action) -> Result<(), ConnectorError> {
        quote_ident(role)?;
        if matches!(
            action,
            Action::RevokeSessions
                | Action::Disable
                | Action::RemoveEntitlement
                | Action::Delete
                | Action::Enable
                | Action::RestoreEntitlement
        ) {
            self.guard(role, action).await?;
        }
        Ok(())
    }

    /// Carries out one task other than a disable (those go in batches) on a checked role.
    async fn apply_one(&self, task: &Task, role: &str) -> Result<Applied, ConnectorError> {
        match task.action {
            Action::RevokeSessions => self.revoke_sessions(role).await,
            Action::RemoveEntitlement => {
                let group = self.target_role(task)?;
                self.remove_membership(group, role).await
            }
            Action::Delete => self.delete(role).await,
            Action::Enable => self.enable(role).await,
            Action::RestoreEntitlement => {
                let group = self.target_role(task)?;
                self.add_membership(group, role).await
            }
            other => Err(ConnectorError::Unsupported(format!(
                "{} (PostgreSQL has no such operation)",
                other.as_str().replace('_', " ")
            ))),
        }
    }

    /// Reads the tasks' roles back (one query for all, and one for the backends of roles
    /// that are gone) and judges each task by what was read.
    async fn evidence(
        &self,
        tasks: &[Task],
    ) -> Result<Vec<Result<Evidence, ConnectorError>>, ConnectorError> {
        let roles: Vec<&str> = tasks.iter().map(|task| task.account.id.as_str()).collect();
        let db = self.maintenance().await?;
        let states = self.read_roles(&db, &roles).await?;
        let gone: Vec<&str> = roles
            .iter()
            .copied()
            .filter(|role| !states.contains_key(*role))
            .collect();
        let gone_backends = if gone.is_empty() {
            BTreeMap::new()
        } else {
            self.backends(&db, &gone).await?
        };
        Ok(tasks
            .iter()
            .map(|task| {
                let role = task.account.id.as_str();
                let state = states.get(role);
                let backends = state.map_or_else(
                    || gone_backends.get(role).copied().unwrap_or(0),
                    |state| state.backends,
                );
                self.judge(task, &db, state, backends)
            })
            .collect())
    }

    /// Whether the task's effect holds on the role as read (`None`: it does not exist).
    fn judge(
        &self,
        task: &Task,
        db: &Db,
        state: Option<&RoleState>,
        backends: i64,
    ) -> Result<Evidence, ConnectorError> {
        let role = task.account.id.as_str();
        let mut observed = json!({
            "server": db.server(),
            "database": db.database(),
            "read": "pg_roles, pg_auth_members, pg_stat_activity",
            "role": role,
            "exists": state.is_some(),
        });
        let verified = match task.action {
            Action::RevokeSessions => {
                observed["backends"] = json!(backends);
                backends == 0
            }
            Action::Disable => {
                observed["backends"] = json!(backends);
                let can_login = state.is_some_and(|s| s.can_login);
                if state.is_some() {
                    observed["rolcanlogin"] = json!(can_login);
                }
                !can_login && backends == 0
            }
            Action::RemoveEntitlement | Action::RestoreEntitlement => {
                let group = self.target_role(task)?;
                let member = state
                    .as_ref()
                    .is_some_and(|s| s.member_of.iter().any(|g| g == group));
                observed["group"] = json!(group);
                observed["member"] = json!(member);
                if let Some(state) = state {
                    observed["member_of"] = json!(state.member_of);
                }
                member == (task.action == Action::RestoreEntitlement)
            }
            Action::Enable => {
                let can_login = state.is_some_and(|s| s.can_login);
                if state.is_some() {
                    observed["rolcanlogin"] = json!(can_login);
                }
                can_login
            }
            Action::Delete => state.is_none(),
            other => {
                return Err(ConnectorError::Unsupported(format!(
                    "verify {} (PostgreSQL has no such operation)",
                    other.as_str().replace('_', " ")
                )))
            }
        };
        Ok(Evidence { verified, observed })
    }

    async fn last_activity(
        &self,
        db: &Db,
    ) -> Result<BTreeMap<String, DateTime<Utc>>, ConnectorError> {
        let Some(sql) = self.settings.last_activity_query.as_deref() else {
            return Ok(BTreeMap::new());
        };
        let rows = db
            .read_only(
                &format!(
                    "running systems.{}.connection.last_activity_query",
                    self.system
                ),
                sql,
            )
            .await?;
        let mut seen = BTreeMap::new();
        for row in rows {
            let shape = |err: tokio_postgres::Error| {
                ConnectorError::InvalidConfig(format!(
                    "systems.{}.connection.last_activity_query must return (rolname text, last activity timestamptz) rows: {err}",
                    self.system
                ))
            };
            let name: String = row.try_get(0).map_err(shape)?;
            let at: Option<DateTime<Utc>> = row.try_get(1).map_err(shape)?;
            if let Some(at) = at {
                let latest = seen.entry(name).or_insert(at);
                if at > *latest {
                    *latest = at;
                }
            }
        }
        Ok(seen)
    }
}

const SUPPORTS: &[StageKind] = &[
    StageKind::Sessions,
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Delete,
    StageKind::Restore,
];

#[async_trait]
impl Connector for PostgresConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        single(self.discover_batch(std::slice::from_ref(person)).await)
    }

    async fn discover_batch(
        &self,
        people: &[PersonQuery],
    ) -> Vec<Result<Vec<Account>, ConnectorError>> {
        let span =
            tracing::debug_span!("postgres.discover", system = %self.system, people = people.len());
        async {
            // The role each person's username names, if a role can have that name.
            let roles: Vec<Option<String>> = people
                .iter()
                .map(|person| {
                    person_username(person, self.match_by)
                        .map(|username| self.settings.role_name(username))
                        .filter(|role| {
                            identifier_problem(role).is_none() && !role.starts_with("pg_")
                        })
                })
                .collect();
            let names: Vec<&str> = roles.iter().flatten().map(String::as_str).collect();
            // The login has to work even when no name can be a role.
            let found = match self.maintenance().await {
                Ok(_) if names.is_empty() => Ok(BTreeMap::new()),
                Ok(db) => self.read_roles(&db, &names).await,
                Err(err) => Err(err),
            };
            let found = match found {
                Ok(found) => found,
                Err(err) => return people.iter().map(|_| Err(err.clone())).collect(),
            };
            tracing::debug!(accounts = found.len(), "postgres discovery done");
            roles
                .iter()
                .map(|role| {
                    Ok(role
                        .as_ref()
                        .and_then(|role| found.get(role))
                        .map(|state| self.account(state.clone(), None))
                        .into_iter()
                        .collect())
                })
                .collect()
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        single(self.apply_batch(std::slice::from_ref(task)).await)
    }

    async fn apply_batch(&self, tasks: &[Task]) -> Vec<Result<Applied, ConnectorError>> {
        let span =
            tracing::debug_span!("postgres.apply", system = %self.system, tasks = tasks.len());
        async {
            let mut applied: Vec<Option<Result<Applied, ConnectorError>>> =
                tasks.iter().map(|_| None).collect();
            // Disables go together: one read, one script and one termination for all.
            let mut disables = Vec::new();
            for (index, task) in tasks.iter().enumerate() {
                let role = task.account.id.as_str();
                if let Err(err) = self.checked(role, task.action).await {
                    applied[index] = Some(Err(err));
                } else if task.action == Action::Disable {
                    disables.push((index, role));
                } else {
                    applied[index] = Some(self.apply_one(task, role).await);
                }
            }
            if !disables.is_empty() {
                let roles: Vec<&str> = disables.iter().map(|(_, role)| *role).collect();
                let done = self.disable(&roles).await;
                for (index, role) in disables {
                    applied[index] = Some(match &done {
                        Ok(done) => done.get(role).copied().ok_or_else(|| {
                            ConnectorError::Permanent(format!("role {role:?} was not disabled"))
                        }),
                        Err(err) => Err(err.clone()),
                    });
                }
            }
            let applied: Vec<_> = applied
                .into_iter()
                .map(|result| {
                    result.unwrap_or_else(|| {
                        Err(ConnectorError::Permanent("the task was not applied".into()))
                    })
                })
                .collect();
            tracing::debug!(outcomes = ?applied.iter().map(|a| a.as_ref().map_err(ConnectorError::kind)).collect::<Vec<_>>(), "postgres apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        single(self.verify_batch(std::slice::from_ref(task)).await)
    }

    async fn verify_batch(&self, tasks: &[Task]) -> Vec<Result<Evidence, ConnectorError>> {
        let span =
            tracing::debug_span!("postgres.verify", system = %self.system, tasks = tasks.len());
        async {
            match self.evidence(tasks).await {
                Ok(evidence) => {
                    tracing::debug!(
                        verified = evidence
                            .iter()
                            .filter(|e| e.as_ref().is_ok_and(|e| e.verified))
                            .count(),
                        "postgres verify done"
                    );
                    evidence
                }
                Err(err) => tasks.iter().map(|_| Err(err.clone())).collect(),
            }
        }
        .instrument(span)
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("postgres.list_accounts", system = %self.system);
        async {
            let db = self.maintenance().await?;
            let rows = db
                .query("listing the login roles", LOGIN_ROLES_QUERY, &[])
                .await?;
            let mut last_activity = self.last_activity(&db).await?;
            rows.iter()
                .map(|row| {
                    let state = RoleState::from_row(row)?;
                    let at = last_activity.remove(&state.name);
                    Ok(self.account(state, at))
                })
                .collect()
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::testing::MemorySecrets;

    fn config(connection: Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("postgres", connection, secret)
    }

    fn person(username: Option<&str>, email: &str) -> PersonQuery {
        PersonQuery {
            person_id: "E1".into(),
            email: email.into(),
            username: username.map(str::to_string),
        }
    }

    #[test]
    fn settings_defaults() {
        let ok = config(json!({"host": "db.internal"}), Some("deprov/connector/pg"));
        let settings = Settings::parse("pg", &ok).expect("valid settings");
        assert_eq!(settings.port, 5432);
        assert_eq!(settings.databases, vec!["postgres".to_string()]);
        assert_eq!(settings.maintenance_db, "postgres");
        assert_eq!(settings.reassign_owned_to, None);
        assert_eq!(settings.role_pattern, "{username}");
        assert_eq!(settings.timeout, Duration::from_secs(30));
        assert!(PostgresConnector::check_config("pg", &ok).is_empty());

        let full = config(
            json!({"host": "127.0.0.1", "port": 6543, "databases": ["app", "postgres", "app"],
                   "maintenance_db": "ops", "reassign_owned_to": "Data Owner",
                   "role_pattern": "u_{username}", "last_activity_query": " SELECT 1 ",
                   "timeout_secs": 5}),
            Some("s"),
        );
        let settings = Settings::parse("pg", &full).expect("valid settings");
        assert_eq!(settings.port, 6543);
        assert_eq!(
            settings.databases,
            vec!["app".to_string(), "postgres".into()]
        );
        assert_eq!(settings.reassign_owned_to.as_deref(), Some("Data Owner"));
        assert_eq!(settings.role_name("ada"), "u_ada");
        assert_eq!(settings.last_activity_query.as_deref(), Some("SELECT 1"));
    }

    #[test]
    fn settings_problems_say_what_to_fix() {
        let problems = PostgresConnector::check_config("pg", &config(json!({}), None));
        assert_eq!(
            problems,
            vec![
                "systems.pg.connection.host is required: the PostgreSQL server's host name or address, e.g. \"db.internal\" (or a Unix socket directory such as \"/var/run/postgresql\")".to_string(),
                "systems.pg.secret is required for a postgres system: the name of the secret whose fields \"user\" and \"password\" hold the admin login, e.g. secret = \"deprov/connector/pg\"".to_string(),
            ]
        );

        let bad = config(
            json!({"host": "a b, c", "port": 70000, "databases": [], "maintenance_db": "",
                   "reassign_owned_to": "x".repeat(64), "role_pattern": "fixed",
                   "last_activity_query": "", "timeout_secs": "30", "hostname": "x"}),
            Some("s"),
        );
        let problems = PostgresConnector::check_config("pg", &bad);
        assert_eq!(problems.len(), 9, "{problems:#?}");
        let all = problems.join("\n");
        for needle in [
            "systems.pg.connection.hostname is not a PostgreSQL setting",
            "systems.pg.connection.host = \"a b, c\" must be one host name",
            "systems.pg.connection.port = 70000 must be a TCP port",
            "systems.pg.connection.databases = [] must be a non-empty list",
            "systems.pg.connection.maintenance_db has a database name \"\" that is empty",
            "systems.pg.connection.reassign_owned_to = \"xxxx",
            "is 64 bytes long; PostgreSQL names have at most 63",
            "systems.pg.connection.role_pattern = \"fixed\" must be a string containing {username}",
            "systems.pg.connection.last_activity_query = \"\" must be a SQL query",
            "systems.pg.connection.timeout_secs = \"30\" must be a whole number from 1 to 600",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }

        let public = config(
            json!({"host": "h", "reassign_owned_to": "PUBLIC", "databases": ["ok", 3]}),
            Some("s"),
        );
        let problems = PostgresConnector::check_config("pg", &public);
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert!(problems[0].contains("databases must name databases as strings"));
        assert!(problems[1].contains("PUBLIC cannot own objects"));
    }

    #[test]
    fn from_config_reports_every_problem() {
        let secrets: Arc<dyn SecretSource> = Arc::new(MemorySecrets::default());
        let err = PostgresConnector::from_config("pg", &config(json!({}), None), secrets)
            .expect_err("invalid config");
        assert!(matches!(err, ConnectorError::InvalidConfig(_)));
        assert!(err.to_string().contains("host is required"));
        assert!(err.to_string().contains("secret is required"));
    }

    #[test]
    fn usernames_come_from_the_event_or_the_email() {
        let both = person(Some("ada.l"), "ada@example.com");
        assert_eq!(person_username(&both, MatchBy::Username), Some("ada.l"));
        assert_eq!(person_username(&both, MatchBy::Email), Some("ada"));
        let email_only = person(Some(""), "grace@example.com");
        assert_eq!(
            person_username(&email_only, MatchBy::Username),
            Some("grace")
        );
        assert_eq!(
            person_username(&person(None, "@x"), MatchBy::Username),
            None
        );
    }

    #[tokio::test]
    async fn a_missing_secret_field_is_a_config_error_naming_it() {
        let secrets: Arc<dyn SecretSource> =
            Arc::new(MemorySecrets::default().with("deprov/connector/pg", "user", "admin"));
        let connector = PostgresConnector::from_config(
            "pg",
            &config(
                json!({"host": "127.0.0.1", "port": 1}),
                Some("deprov/connector/pg"),
            ),
            secrets,
        )
        .expect("connector");
        let err = connector
            .discover(&person(Some("ada"), "ada@example.com"))
            .await
            .expect_err("no password field");
        assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err}");
        assert!(err.to_string().contains("\"password\""), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_server_is_transient() {
        let secrets: Arc<dyn SecretSource> =
            Arc::new(MemorySecrets::default().with("s", "user", "admin").with(
                "s",
                "password",
                "hunter2-secret",
            ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("port");
        let connector = PostgresConnector::from_config(
            "pg",
            &config(
                json!({"host": "127.0.0.1", "port": port, "timeout_secs": 2}),
                Some("s"),
            ),
            secrets,
        )
        .expect("connector");
        let err = connector
            .discover(&person(Some("ada"), "ada@example.com"))
            .await
            .expect_err("nothing listens");
        assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
        assert!(!err.to_string().contains("hunter2-secret"));
    }
}
