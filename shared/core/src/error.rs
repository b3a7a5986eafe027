//! The error kinds every layer agrees on. The state machine retries and catches on these
//! names (`Deprov.Throttled`, …), the local orchestrator acts on the same kinds.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The target asked us to slow down; retry after its delay.
    Throttled,
    /// A failure that may pass: network, 5xx, timeouts.
    Transient,
    /// Retrying will not help: the target refused, or the account cannot be changed.
    Permanent,
    /// The input itself is wrong (event, policy, task); fix it and send again.
    InvalidInput,
    /// The change was applied but reading the target back did not prove it.
    Unverified,
}

impl ErrorKind {
    /// The `Diagnostic.error_type` name the ASL `Retry`/`Catch` blocks match.
    pub fn error_type(self) -> &'static str {
        match self {
            ErrorKind::Throttled => "Deprov.Throttled",
            ErrorKind::Transient => "Deprov.Transient",
            ErrorKind::Permanent => "Deprov.Permanent",
            ErrorKind::InvalidInput => "Deprov.InvalidInput",
            ErrorKind::Unverified => "Deprov.Unverified",
        }
    }

    /// The kind a `Deprov.*` name stands for.
    pub fn from_error_type(name: &str) -> Option<ErrorKind> {
        [
            ErrorKind::Throttled,
            ErrorKind::Transient,
            ErrorKind::Permanent,
            ErrorKind::InvalidInput,
            ErrorKind::Unverified,
        ]
        .into_iter()
        .find(|kind| kind.error_type() == name)
    }

    /// Whether another attempt of the same task may succeed.
    pub fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Throttled | ErrorKind::Transient)
    }
}

impl std::fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.error_type())
    }
}
