//! deprov-core: the domain of deprovisioning and the ports its adapters implement.
//!
//! No network, no AWS, no database: everything here is pure and fast to test. The JSON
//! that flows between the plan builder, the workers, the audit writer and the local
//! orchestrator is defined here once, as serde types.

pub mod audit;
pub mod brake;
pub mod canonical;
pub mod connector;
pub mod duration;
pub mod error;
pub mod event;
pub mod flow;
pub mod ids;
pub mod intake;
pub mod journal;
pub mod launch;
pub mod people;
pub mod plan;
pub mod policy;
pub mod ports;
pub mod quarantine;
pub mod restore;
pub mod signature;
pub mod sweep;
pub mod task;
pub mod validation;
pub mod worker;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use audit::{AuditEntry, AuditKind, AuditRecord, ChainBreak, ChainHead};
pub use connector::{
    Account, Applied, Connector, ConnectorError, Credential, Entitlement, Evidence, PersonQuery,
};
pub use error::ErrorKind;
pub use event::{EventKind, LifecycleEvent, Person, TerminationType};
pub use plan::{Action, Plan, Stage, StageKind, Task};
pub use policy::Policy;
pub use task::{Change, StageRecord, TaskOutcome, TaskStatus};
