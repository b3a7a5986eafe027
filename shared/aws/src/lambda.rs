//! Lambda glue shared by the functions: JSON logs, typed configuration from the
//! environment, and errors whose Diagnostic `error_type` is the `Deprov.*` name the state
//! machine retries or catches on.

use deprov_core::ErrorKind;
use lambda_runtime::Diagnostic;

/// JSON log lines (one object per event, run_id / task_id / system as fields) at the level
/// `AWS_LAMBDA_LOG_LEVEL` or `RUST_LOG` gives, INFO otherwise.
pub fn init_tracing() {
    // The runtime's subscriber switches to JSON on Lambda's advanced logging controls;
    // deprov logs JSON everywhere it runs as a function.
    // Called first in `main`, before any other thread exists.
    if std::env::var_os("AWS_LAMBDA_LOG_FORMAT").is_none() {
        std::env::set_var("AWS_LAMBDA_LOG_FORMAT", "JSON");
    }
    lambda_runtime::tracing::init_default_subscriber();
}

/// A required environment variable; the error names it.
pub fn required_env(name: &str) -> Result<String, ConfigError> {
    match std::env::var(name) {
        Ok(value) if !value.trim().is_empty() => Ok(value),
        _ => Err(ConfigError(format!(
            "environment variable {name} is not set; the function's template sets it"
        ))),
    }
}

/// The function's configuration is incomplete or wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

/// What a function returns when it cannot do its job: the `Deprov.*` kind (the state
/// machine's Retry and Catch match it) and a message that says what to fix. Never carries
/// a secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error_type}: {message}")]
pub struct FunctionError {
    pub error_type: String,
    pub message: String,
}

impl FunctionError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> FunctionError {
        FunctionError {
            error_type: kind.error_type().to_string(),
            message: message.into(),
        }
    }

    pub fn invalid_input(message: impl Into<String>) -> FunctionError {
        FunctionError::new(ErrorKind::InvalidInput, message)
    }

    /// A store or AWS API failed; another attempt may pass.
    pub fn transient(message: impl std::fmt::Display) -> FunctionError {
        FunctionError::new(ErrorKind::Transient, message.to_string())
    }
}

impl From<FunctionError> for Diagnostic {
    fn from(err: FunctionError) -> Diagnostic {
        Diagnostic {
            error_type: err.error_type,
            error_message: err.message,
        }
    }
}

impl From<deprov_core::ports::StoreError> for FunctionError {
    fn from(err: deprov_core::ports::StoreError) -> FunctionError {
        FunctionError::transient(err)
    }
}
