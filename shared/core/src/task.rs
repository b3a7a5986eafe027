//! What flows back from a task and a stage: the results the audit trail records.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::connector::{Applied, Evidence};
use crate::error::ErrorKind;
use crate::plan::{StageKind, Task};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Applied (or found already done) and proven by reading the target back.
    Verified,
    /// Not proven: a permanent error, retries exhausted, or a read-back that disagrees.
    /// Someone must look; it is never reported as success.
    Escalated,
    /// Stopped before it ran, by a rehire or a cancel.
    Cancelled,
}

/// Whether a verified task changed anything.
pub type Change = Applied;

/// Why a task was escalated.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskError {
    pub kind: ErrorKind,
    pub message: String,
}

/// The first recorded completion of a task; later ones lose (conditional write).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct TaskOutcome {
    pub task: Task,
    pub status: TaskStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub change: Option<Change>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence: Option<Evidence>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<TaskError>,
    pub attempts: u32,
    pub finished_at: DateTime<Utc>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageStatus {
    Completed,
    Escalated,
    Cancelled,
}

/// The summary of one stage, as RecordStage writes it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageRecord {
    pub run_id: String,
    pub stage: StageKind,
    pub status: StageStatus,
    pub verified: u32,
    pub unchanged: u32,
    pub escalated: u32,
    pub cancelled: u32,
}

impl StageRecord {
    /// Tallies the outcomes of one stage's tasks.
    pub fn tally(run_id: &str, stage: StageKind, outcomes: &[&TaskOutcome]) -> StageRecord {
        let mut record = StageRecord {
            run_id: run_id.to_string(),
            stage,
            status: StageStatus::Completed,
            verified: 0,
            unchanged: 0,
            escalated: 0,
            cancelled: 0,
        };
        for outcome in outcomes {
            match outcome.status {
                TaskStatus::Verified => {
                    record.verified += 1;
                    if outcome.change == Some(Applied::AlreadyDone) {
                        record.unchanged += 1;
                    }
                }
                TaskStatus::Escalated => record.escalated += 1,
                TaskStatus::Cancelled => record.cancelled += 1,
            }
        }
        record.status = if record.escalated > 0 {
            StageStatus::Escalated
        } else if record.cancelled > 0 {
            StageStatus::Cancelled
        } else {
            StageStatus::Completed
        };
        record
    }
}
