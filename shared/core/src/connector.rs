//! The contract every target system implements. A connector knows one system's API and
//! nothing about Lambda, SQS or the orchestrator.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::error::ErrorKind;
use crate::plan::{StageKind, Task};

/// A group, role or license an account holds.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Entitlement {
    pub id: String,
    pub name: String,
    /// `group`, `role`, `license`, …
    pub kind: String,
}

/// A key, token or certificate that authenticates as the account without SSO.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, JsonSchema)]
pub struct Credential {
    pub id: String,
    /// `access_key`, `ssh_key`, `api_token`, …
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// An account as discovered on a system: its state before deprov touched it, which is also
/// what a rehire restores.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Account {
    pub system: String,
    /// The system's own id of the account.
    pub id: String,
    pub username: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email: Option<String>,
    pub active: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entitlements: Vec<Entitlement>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub credentials: Vec<Credential>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_activity: Option<DateTime<Utc>>,
}

/// Who to look for on a system.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PersonQuery {
    pub person_id: String,
    pub email: String,
    /// The username the event gives for this system, if any.
    pub username: Option<String>,
}

/// What `apply` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Applied {
    /// The target changed.
    Changed,
    /// The target was already in the wanted state: nothing to do, and that is success.
    AlreadyDone,
}

/// What `verify` read back from the target: the proof stored in the audit trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Evidence {
    /// Whether the read-back shows the wanted state.
    pub verified: bool,
    /// What was read, e.g. `{"GET /Users/42": {"active": false}}`. Never secrets.
    pub observed: serde_json::Value,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ConnectorError {
    #[error("throttled by the target{}: {message}", retry_after.map(|d| format!(" (retry after {}s)", d.as_secs_f64())).unwrap_or_default())]
    Throttled {
        retry_after: Option<Duration>,
        message: String,
    },
    #[error("transient failure: {0}")]
    Transient(String),
    #[error("permanent failure: {0}")]
    Permanent(String),
    /// Credentials refused. The message names the secret to fix, never its value.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    #[error("not found: {0}")]
    NotFound(String),
    #[error("this connector cannot {0}")]
    Unsupported(String),
    /// The policy's connection settings or the secret's shape are wrong.
    #[error("invalid configuration: {0}")]
    InvalidConfig(String),
}

impl ConnectorError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            ConnectorError::Throttled { .. } => ErrorKind::Throttled,
            ConnectorError::Transient(_) => ErrorKind::Transient,
            ConnectorError::Permanent(_)
            | ConnectorError::Unauthorized(_)
            | ConnectorError::NotFound(_)
            | ConnectorError::Unsupported(_) => ErrorKind::Permanent,
            ConnectorError::InvalidConfig(_) => ErrorKind::InvalidInput,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ConnectorError::Throttled { retry_after, .. } => *retry_after,
            _ => None,
        }
    }
}

/// A batch call's results (`call`: "apply", "verify", "discover"), endlessly padded with an
/// error should the connector have answered fewer than it was asked: a connector bug, never
/// silently a success.
pub fn batch_answers<T>(
    results: Vec<Result<T, ConnectorError>>,
    call: &'static str,
) -> impl Iterator<Item = Result<T, ConnectorError>> {
    results
        .into_iter()
        .map(Some)
        .chain(std::iter::repeat_with(|| None))
        .map(move |result| {
            result.unwrap_or_else(|| {
                Err(ConnectorError::Permanent(format!(
                    "the connector's {call}_batch answered fewer results than it was asked for"
                )))
            })
        })
}

/// One target system. Every method is safe to call again: `apply` treats "already revoked"
/// as success, `discover` and `verify` only read.
/// Builds the connector of one policy system (name, settings); secrets are resolved at
/// first use. The functions take one, so their tests can hand in fakes.
pub type ConnectorFactory = dyn Fn(&str, &crate::policy::SystemConfig) -> Result<std::sync::Arc<dyn Connector>, ConnectorError>
    + Send
    + Sync;

#[async_trait]
pub trait Connector: Send + Sync {
    /// The stages this connector can carry out; the planner skips (and records) the rest.
    fn supports(&self) -> &[StageKind];

    /// Read-only: the person's accounts with their entitlements and credentials.
    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError>;

    /// Carries out one task.
    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError>;

    /// Reads the target back and says whether the task's effect holds.
    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError>;

    /// How many tasks `apply_batch` and `verify_batch` take at once, and how many people
    /// `discover_batch` looks for at once. The default, 1, sends everything one by one;
    /// connectors that change or read many targets in one round trip (one SQL script, one
    /// query) say more, so a mass offboarding or a sweep is not one round trip per account.
    fn max_batch(&self) -> usize {
        1
    }

    /// Looks for several people, one result per person in order. The default looks for
    /// them one after another.
    async fn discover_batch(
        &self,
        people: &[PersonQuery],
    ) -> Vec<Result<Vec<Account>, ConnectorError>> {
        let mut found = Vec::with_capacity(people.len());
        for person in people {
            found.push(self.discover(person).await);
        }
        found
    }

    /// Carries out several tasks, one result per task in order. The default applies them
    /// one after another.
    async fn apply_batch(&self, tasks: &[Task]) -> Vec<Result<Applied, ConnectorError>> {
        let mut applied = Vec::with_capacity(tasks.len());
        for task in tasks {
            applied.push(self.apply(task).await);
        }
        applied
    }

    /// Reads several tasks' targets back, one result per task in order. The default reads
    /// them one after another.
    async fn verify_batch(&self, tasks: &[Task]) -> Vec<Result<Evidence, ConnectorError>> {
        let mut evidence = Vec::with_capacity(tasks.len());
        for task in tasks {
            evidence.push(self.verify(task).await);
        }
        evidence
    }

    /// Every account with its last activity, for inactivity and orphan sweeps.
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        Err(ConnectorError::Unsupported("list accounts".into()))
    }
}
