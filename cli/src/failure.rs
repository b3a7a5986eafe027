//! Exit codes and the error a command ends with.

pub const OK: u8 = 0;
pub const FAILURE: u8 = 1;
pub const INVALID_INPUT: u8 = 2;
pub const ESCALATED: u8 = 3;
pub const REFUSED: u8 = 4;
pub const AUDIT_BROKEN: u8 = 5;
/// The brake held the work back; `deprov approve` releases it.
pub const QUARANTINED: u8 = 6;

/// A command's failure: the message says what to fix, the code what kind of failure it is.
#[derive(Debug)]
pub struct Failure {
    pub code: u8,
    pub message: String,
}

impl Failure {
    pub fn invalid(message: impl Into<String>) -> Failure {
        Failure {
            code: INVALID_INPUT,
            message: message.into(),
        }
    }

    pub fn failed(message: impl std::fmt::Display) -> Failure {
        Failure {
            code: FAILURE,
            message: message.to_string(),
        }
    }
}

impl From<deprov_core::ports::StoreError> for Failure {
    fn from(err: deprov_core::ports::StoreError) -> Failure {
        Failure::failed(err)
    }
}

impl From<deprov_local::EngineError> for Failure {
    fn from(err: deprov_local::EngineError) -> Failure {
        match err {
            deprov_local::EngineError::Plan(plan) => Failure::invalid(plan.to_string()),
            other => Failure::failed(other),
        }
    }
}
