//! deprov-local: the embedded runtime. The same planner, connectors and audit chain as on
//! AWS, with a SQLite file for runs and audit, in-process queues with SQS semantics, worker
//! pools and an orchestrator that follows the state machine.

pub mod engine;
mod people_store;
pub mod queue;
pub mod schedules;
pub mod secrets;
pub mod store;
pub mod sweep;

pub use deprov_connectors::discover;
pub use engine::{Engine, EngineError, EngineOptions, Progress, RunReport};
pub use queue::LocalQueue;
pub use schedules::SqliteSchedules;
pub use secrets::LocalSecrets;
pub use store::SqliteStore;
