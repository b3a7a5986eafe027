//! The ports: what the orchestration logic needs from storage, queues, secrets and time.
//! DynamoDB/SQS/Secrets Manager implement them on AWS, SQLite and in-process structures
//! locally, in-memory fakes (feature `testing`) in unit tests.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::audit::{AuditEntry, AuditRecord, ChainHead};
use crate::error::ErrorKind;
use crate::people::PersonRecord;
use crate::plan::{Plan, Task};
use crate::quarantine::{Decision, Quarantine, QuarantineStatus};
use crate::task::TaskOutcome;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("storage failed: {0}")]
    Backend(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error("run {0} does not exist")]
    UnknownRun(String),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Stages are being executed.
    Running,
    /// The next stage waits for its `not_before`.
    Waiting,
    /// Every task verified.
    Completed,
    /// Finished, with tasks or systems someone must look at.
    Escalated,
    /// Stopped by a rehire or cancel before its pending stages ran.
    Cancelled,
    /// Refused by the planner (blast radius, no scenario); nothing ran.
    Refused,
    /// Planned and recorded as a dry run; nothing ran.
    DryRun,
    /// Planned; waits for a person's approval (until `wake_at`, then it escalates).
    AwaitingApproval,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Running => "running",
            RunStatus::Waiting => "waiting",
            RunStatus::Completed => "completed",
            RunStatus::Escalated => "escalated",
            RunStatus::Cancelled => "cancelled",
            RunStatus::Refused => "refused",
            RunStatus::DryRun => "dry_run",
            RunStatus::AwaitingApproval => "awaiting_approval",
        }
    }

    pub fn from_name(name: &str) -> Option<RunStatus> {
        [
            RunStatus::Running,
            RunStatus::Waiting,
            RunStatus::Completed,
            RunStatus::Escalated,
            RunStatus::Cancelled,
            RunStatus::Refused,
            RunStatus::DryRun,
            RunStatus::AwaitingApproval,
        ]
        .into_iter()
        .find(|status| status.as_str() == name)
    }

    /// Whether a run in this state has work at `now`: an interrupted running one, a
    /// waiting one whose next stage came due, or one whose approval did not come in time.
    pub fn is_due(self, wake_at: Option<DateTime<Utc>>, now: DateTime<Utc>) -> bool {
        match self {
            RunStatus::Running => true,
            RunStatus::Waiting | RunStatus::AwaitingApproval => wake_at.is_none_or(|at| at <= now),
            _ => false,
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(
            self,
            RunStatus::Running | RunStatus::Waiting | RunStatus::AwaitingApproval
        )
    }

    /// The states a run can still move on from.
    pub const OPEN: [RunStatus; 3] = [
        RunStatus::Running,
        RunStatus::Waiting,
        RunStatus::AwaitingApproval,
    ];
}

/// A run as stored (`RUN#<run_id>`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub person_id: String,
    pub status: RunStatus,
    pub plan: Plan,
    /// Index into `plan.stages` of the first stage not yet finished.
    pub next_stage: usize,
    /// When a waiting run's next stage becomes due.
    pub wake_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// What claiming an event found (`EVENT#<source>#<event_id>`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EventClaim {
    /// First delivery: the caller owns the run.
    New,
    /// Seen before: this is the run it started.
    Existing(String),
}

/// The state of a task before a worker touches it.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskStart {
    /// Never started: apply it.
    Fresh,
    /// Started before and not finished (a crash, a lost message): read the target back
    /// before applying again.
    Interrupted { attempts: u32 },
    /// Already finished: nothing to do.
    Finished(Box<TaskOutcome>),
}

#[async_trait]
pub trait RunStore: Send + Sync {
    /// Records that `(source, event_id)` starts `run_id`, unless it already started one.
    async fn claim_event(
        &self,
        source: &str,
        event_id: &str,
        run_id: &str,
    ) -> Result<EventClaim, StoreError>;
    /// Stores a run. The plan is written by the first put and never changes; later puts
    /// update the run's state (status, next stage, wake time).
    async fn put_run(&self, run: &RunRecord) -> Result<(), StoreError>;
    async fn get_run(&self, run_id: &str) -> Result<Option<RunRecord>, StoreError>;
    /// A run's status alone (cheap: for checks between stages).
    async fn run_status(&self, run_id: &str) -> Result<Option<RunStatus>, StoreError>;
    /// Runs that have work now: running ones (interrupted) and waiting ones whose time came.
    async fn due_runs(&self, now: DateTime<Utc>) -> Result<Vec<String>, StoreError>;
    /// Unfinished runs about a person (for rehire and cancel).
    async fn open_runs_for(&self, person_id: &str) -> Result<Vec<RunRecord>, StoreError>;
    /// Marks a task started (counting the attempt) and says what state it was in.
    async fn start_task(&self, task: &Task) -> Result<TaskStart, StoreError>;
    /// Records a task's completion if it is the first; returns the completion that won.
    async fn complete_task(&self, outcome: &TaskOutcome) -> Result<TaskOutcome, StoreError>;
    async fn task_outcomes(&self, run_id: &str) -> Result<Vec<TaskOutcome>, StoreError>;

    // Batches of the calls above, for many runs or tasks at once (a sweep, a mass
    // offboarding, a worker's batch). The defaults make one call per item in order; a store
    // that can do better answers a batch in one round trip.

    /// `claim_event` of each `(source, event_id, run_id)`.
    async fn claim_events(
        &self,
        claims: &[(String, String, String)],
    ) -> Result<Vec<EventClaim>, StoreError> {
        let mut found = Vec::with_capacity(claims.len());
        for (source, event_id, run_id) in claims {
            found.push(self.claim_event(source, event_id, run_id).await?);
        }
        Ok(found)
    }
    async fn put_runs(&self, runs: &[RunRecord]) -> Result<(), StoreError> {
        for run in runs {
            self.put_run(run).await?;
        }
        Ok(())
    }
    async fn run_statuses(&self, run_ids: &[String]) -> Result<Vec<Option<RunStatus>>, StoreError> {
        let mut statuses = Vec::with_capacity(run_ids.len());
        for run_id in run_ids {
            statuses.push(self.run_status(run_id).await?);
        }
        Ok(statuses)
    }
    /// `task_outcomes` of each run.
    async fn task_outcomes_of(
        &self,
        run_ids: &[String],
    ) -> Result<Vec<Vec<TaskOutcome>>, StoreError> {
        let mut outcomes = Vec::with_capacity(run_ids.len());
        for run_id in run_ids {
            outcomes.push(self.task_outcomes(run_id).await?);
        }
        Ok(outcomes)
    }
    async fn start_tasks(&self, tasks: &[Task]) -> Vec<Result<TaskStart, StoreError>> {
        let mut starts = Vec::with_capacity(tasks.len());
        for task in tasks {
            starts.push(self.start_task(task).await);
        }
        starts
    }
    async fn complete_tasks(
        &self,
        outcomes: &[TaskOutcome],
    ) -> Vec<Result<TaskOutcome, StoreError>> {
        let mut winners = Vec::with_capacity(outcomes.len());
        for outcome in outcomes {
            winners.push(self.complete_task(outcome).await);
        }
        winners
    }
    async fn record_people(&self, people: &[PersonRecord]) -> Result<(), StoreError> {
        for person in people {
            self.record_person(person).await?;
        }
        Ok(())
    }

    /// Records a person as an HR event described them (`PERSON#<id>`), unless the stored
    /// record reflects a later effective time.
    async fn record_person(&self, _person: &PersonRecord) -> Result<(), StoreError> {
        Err(not_kept("people"))
    }
    /// Every person known from HR events.
    async fn people(&self) -> Result<Vec<PersonRecord>, StoreError> {
        Err(not_kept("people"))
    }
    /// Stores a new quarantine (`QUARANTINE#<id>`); when one with its id exists already,
    /// returns the stored one unchanged.
    async fn put_quarantine(&self, _quarantine: &Quarantine) -> Result<Quarantine, StoreError> {
        Err(not_kept("quarantines"))
    }
    async fn get_quarantine(&self, _id: &str) -> Result<Option<Quarantine>, StoreError> {
        Err(not_kept("quarantines"))
    }
    /// Every quarantine, oldest first.
    async fn quarantines(&self) -> Result<Vec<Quarantine>, StoreError> {
        Err(not_kept("quarantines"))
    }
    /// Approves or denies a pending quarantine; the first decision wins.
    async fn decide_quarantine(
        &self,
        _id: &str,
        _status: QuarantineStatus,
        _decision: &Decision,
    ) -> Result<Decided, StoreError> {
        Err(not_kept("quarantines"))
    }
}

/// What deciding a quarantine came to.
#[derive(Clone, Debug, PartialEq)]
pub enum Decided {
    /// This decision was recorded.
    Now(Box<Quarantine>),
    /// It had been decided before; this is the decision that stands.
    Before(Box<Quarantine>),
    /// No quarantine has this id.
    Unknown,
}

fn not_kept(what: &str) -> StoreError {
    StoreError::Backend(format!("this run store does not keep {what}"))
}

#[async_trait]
pub trait AuditLog: Send + Sync {
    /// Appends an entry to its run's chain. Idempotent by `(run_id, key)`: a second append
    /// of the same key returns the first record unchanged.
    async fn append(&self, entry: AuditEntry) -> Result<AuditRecord, StoreError>;
    /// Appends several entries in order, each idempotent as in `append`. Stores that can
    /// write them at once (one transaction, one batch write) override this.
    async fn append_batch(&self, entries: Vec<AuditEntry>) -> Result<Vec<AuditRecord>, StoreError> {
        let mut records = Vec::with_capacity(entries.len());
        for entry in entries {
            records.push(self.append(entry).await?);
        }
        Ok(records)
    }
    /// A run's records in seq order.
    async fn records(&self, run_id: &str) -> Result<Vec<AuditRecord>, StoreError>;
    /// The run's head as stored beside the chain.
    async fn head(&self, run_id: &str) -> Result<Option<ChainHead>, StoreError>;
    /// Every run with audit records.
    async fn run_ids(&self) -> Result<Vec<String>, StoreError>;
    /// Everything recorded about one person, across runs.
    async fn by_subject(&self, subject: &str) -> Result<Vec<AuditRecord>, StoreError>;
}

/// Where the functions read policies from: versions are immutable, one is active.
#[async_trait]
pub trait PolicySource: Send + Sync {
    /// The policy new plans use.
    async fn active(&self) -> Result<crate::policy::Policy, StoreError>;
    /// The policy a plan recorded, by version.
    async fn version(&self, version: &str) -> Result<crate::policy::Policy, StoreError>;
}

/// How a worker answers the run waiting on a task (Step Functions task tokens on AWS).
#[async_trait]
pub trait TaskReporter: Send + Sync {
    /// The task is verified: hand its outcome (with the evidence) to the run.
    async fn succeed(&self, token: &str, outcome: &TaskOutcome) -> Result<(), ReportError>;
    /// The task failed: `kind` is what the run's Retry/Catch act on.
    async fn fail(&self, token: &str, kind: ErrorKind, cause: &str) -> Result<(), ReportError>;
    /// Still working: keeps a long task from timing out.
    async fn heartbeat(&self, token: &str) -> Result<(), ReportError>;
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// Nobody waits on this token any more (it timed out, or a retry replaced it): the
    /// answer is moot, the recorded outcome stands.
    #[error("the run no longer waits on this task: {0}")]
    Gone(String),
    /// The answer did not get through; deliver the message again.
    #[error("cannot report the task: {0}")]
    Failed(String),
}

/// The message a worker receives for one task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskMessage {
    pub task: Task,
    /// The policy version of the plan (its system settings reach the connector); the
    /// local runtime holds its one policy and leaves it out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_version: Option<String>,
    /// Opaque handle the worker reports the result with (a Step Functions task token on
    /// AWS); absent locally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_token: Option<String>,
}

/// A message handed to a consumer, invisible to others until acked or its visibility ends.
#[derive(Clone, Debug, PartialEq)]
pub struct Delivery {
    pub receipt: String,
    pub message: TaskMessage,
    /// 1 on first delivery.
    pub receive_count: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue failed: {0}")]
    Backend(String),
    #[error("receipt {0} is unknown or expired")]
    UnknownReceipt(String),
}

#[async_trait]
pub trait TaskQueue: Send + Sync {
    async fn send(&self, message: TaskMessage, delay: Duration) -> Result<(), QueueError>;
    /// Up to `max` messages, waiting at most `wait` for the first.
    async fn receive(&self, max: usize, wait: Duration) -> Result<Vec<Delivery>, QueueError>;
    /// Done with a message: delete it.
    async fn ack(&self, receipt: &str) -> Result<(), QueueError>;
    /// Give a message back, visible again after `delay`.
    async fn release(&self, receipt: &str, delay: Duration) -> Result<(), QueueError>;
}

/// A secret's fields. Debug never shows values.
#[derive(Clone, PartialEq, Eq, Default, Deserialize)]
pub struct Secret {
    name: String,
    fields: BTreeMap<String, String>,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("fields", &self.fields.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Secret {
    pub fn new(name: impl Into<String>, fields: BTreeMap<String, String>) -> Secret {
        Secret {
            name: name.into(),
            fields,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// A field's value; the error names the secret and the field, never a value.
    pub fn field(&self, field: &str) -> Result<&str, SecretError> {
        self.fields
            .get(field)
            .map(String::as_str)
            .ok_or_else(|| SecretError::MissingField {
                name: self.name.clone(),
                field: field.to_string(),
            })
    }

    /// Every value, so callers can make sure none leaks into output.
    pub fn values(&self) -> impl Iterator<Item = &str> {
        self.fields.values().map(String::as_str)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("secret \"{0}\" was not found")]
    NotFound(String),
    #[error("secret \"{name}\" has no field \"{field}\"")]
    MissingField { name: String, field: String },
    #[error("secret \"{name}\" could not be read: {reason}")]
    Unreadable { name: String, reason: String },
}

#[async_trait]
pub trait SecretSource: Send + Sync {
    async fn secret(&self, name: &str) -> Result<Secret, SecretError>;
}

pub trait Clock: Send + Sync {
    fn now(&self) -> DateTime<Utc>;
}

/// The wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }
}
