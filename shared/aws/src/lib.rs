//! deprov-aws: the AWS adapters of the core ports — DynamoDB (runs single table, audit
//! table with conditional appends), SQS (task queues), Secrets Manager (typed, cached
//! secrets), Step Functions (executions named by run id, task tokens) — and the SDK
//! configuration with an endpoint override for tests against an emulator.

pub mod config;
pub mod dynamo;
pub mod lambda;
pub mod launch;
pub mod policies;
pub mod scheduler;
pub mod secrets;
pub mod sfn;
pub mod sqs;
pub mod tables;

pub use config::{load_sdk_config, AwsSettings};
pub use dynamo::{DynamoAuditLog, DynamoRunStore};
pub use lambda::{ConfigError, FunctionError};
pub use policies::DynamoPolicyStore;
pub use scheduler::{RunSchedules, Scheduled, SchedulerError};
pub use secrets::SecretsManagerSource;
pub use sfn::{ExecutionStart, Executions, SfnError, TaskTokens};
pub use sqs::SqsTaskQueue;
