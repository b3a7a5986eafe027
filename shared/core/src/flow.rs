//! The JSON that flows between the states of a run on AWS: the execution input, the plan
//! builder's output, a task's queue message and result, and the audit function's requests.
//! `infra/statemachine/deprovision.asl.json` moves exactly these shapes around (the emulated
//! AWS end-to-end tests execute it with the real functions), and the local orchestrator
//! produces the same records (the parity test compares them).

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::ErrorKind;
use crate::event::{validate, LifecycleEvent, MAX_EVENT_BYTES};
use crate::plan::{Plan, StageKind, Task};
use crate::task::{TaskError, TaskOutcome};
use crate::validation::{Invalid, Problem};
use crate::worker;

/// What starts a run: an execution's input, from intake, a schedule, a sweep, or pasted
/// into the Step Functions console. A bare lifecycle event is accepted too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "deprov run input (Step Functions execution input)")]
pub struct RunInput {
    pub event: LifecycleEvent,
    /// Plan and record the plan, change nothing.
    #[serde(default)]
    pub dry_run: bool,
}

impl RunInput {
    /// Reads an execution input, reporting every problem with its JSON path.
    pub fn parse(value: &Value) -> Result<RunInput, Invalid> {
        let invalid = |problems| Invalid {
            what: "run input".into(),
            problems,
        };
        let size = value.to_string().len();
        if size > MAX_EVENT_BYTES {
            return Err(invalid(vec![Problem {
                path: "$".into(),
                line: None,
                message: format!("input is {size} bytes; the limit is {MAX_EVENT_BYTES}"),
            }]));
        }
        let wrapped = value.get("event").is_some();
        let (event, prefix) = match value {
            Value::Object(object) if wrapped => {
                let mut problems = Vec::new();
                for key in object.keys() {
                    if key != "event" && key != "dry_run" {
                        problems.push(Problem {
                            path: format!("$.{key}"),
                            line: None,
                            message: "unknown field; expected \"event\" and \"dry_run\"".into(),
                        });
                    }
                }
                if let Some(dry_run) = object.get("dry_run") {
                    if !dry_run.is_boolean() {
                        problems.push(Problem {
                            path: "$.dry_run".into(),
                            line: None,
                            message: "must be true or false".into(),
                        });
                    }
                }
                if !problems.is_empty() {
                    return Err(invalid(problems));
                }
                (&object["event"], "$.event")
            }
            _ => (value, "$"),
        };
        let problems: Vec<Problem> = validate(event)
            .into_iter()
            .map(|problem| Problem {
                path: problem.path.replacen('$', prefix, 1),
                ..problem
            })
            .collect();
        if !problems.is_empty() {
            return Err(invalid(problems));
        }
        let event: LifecycleEvent = serde_json::from_value(event.clone()).map_err(|err| {
            invalid(vec![Problem {
                path: prefix.into(),
                line: None,
                message: err.to_string(),
            }])
        })?;
        let dry_run = wrapped
            && value
                .get("dry_run")
                .and_then(Value::as_bool)
                .unwrap_or(false);
        Ok(RunInput { event, dry_run })
    }

    pub fn json_schema() -> Value {
        serde_json::to_value(schemars::schema_for!(RunInput)).unwrap_or(Value::Null)
    }
}

/// What the plan builder decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Run the stages.
    Planned,
    /// Record the plan and stop: nothing changes.
    DryRun,
    /// The planner refused (no scenario, blast radius, an event that has no plan).
    Refused,
}

/// Why a plan was refused, as the audit function records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Refusal {
    pub event: LifecycleEvent,
    pub reason: String,
    pub policy_version: String,
}

/// The plan builder's output: the state the rest of the execution works from. The whole
/// plan (accounts, pre-state, skips) is in the runs table; the state carries only what
/// the stages need, to stay far below Step Functions' 256 KiB payload limit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PlannedRun {
    pub run_id: String,
    pub person_id: String,
    pub verdict: Verdict,
    pub task_count: usize,
    pub stages: Vec<StageItem>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<Refusal>,
}

/// One stage as the stage Map iterates it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StageItem {
    pub run_id: String,
    pub stage: StageKind,
    /// UTC, so the Wait state can read it.
    pub not_before: DateTime<Utc>,
    /// `not_before` was in the future when the plan was built: record the deferral, then
    /// wait.
    pub deferred: bool,
    pub tasks: Vec<TaskItem>,
}

/// One task as the task Map iterates it: where to send it, and what.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct TaskItem {
    /// The queue of the task's system kind.
    pub queue_url: String,
    pub policy_version: String,
    pub task: Task,
}

/// The Error/Cause pair Step Functions puts in a Catch's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StatesError {
    #[serde(rename = "Error")]
    pub error: String,
    /// Absent or null when the failure gave none.
    #[serde(rename = "Cause", default)]
    pub cause: Option<String>,
}

/// What one iteration of the task Map produced: the worker's outcome (SendTaskSuccess), or
/// the task and the error the Catch caught (a permanent failure, retries exhausted, a
/// timeout).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TaskResult {
    Finished(Box<TaskOutcome>),
    Failed {
        task: Box<Task>,
        failure: StatesError,
    },
}

impl TaskResult {
    /// The outcome to record. A caught failure becomes an escalation carrying the error.
    pub fn into_outcome(self) -> TaskOutcome {
        match self {
            TaskResult::Finished(outcome) => *outcome,
            TaskResult::Failed { task, failure } => {
                let kind =
                    ErrorKind::from_error_type(&failure.error).unwrap_or(ErrorKind::Transient);
                let message = match failure.cause.as_deref() {
                    Some(cause) if !cause.is_empty() => format!("{}: {cause}", failure.error),
                    _ => failure.error.clone(),
                };
                worker::escalated(&task, TaskError { kind, message })
            }
        }
    }
}

/// A request to the audit function (the only writer of the audit table).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum AuditRequest {
    /// Record the plan the plan builder stored (or its refusal).
    RecordPlan {
        run_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        refusal: Option<Box<Refusal>>,
    },
    /// A stage waits for its `not_before`.
    RecordDeferral { run_id: String, stage: StageKind },
    /// A stage's task results, recorded together with the stage's tally.
    RecordStage {
        run_id: String,
        stage: StageKind,
        results: Vec<TaskResult>,
    },
    /// The run's summary; anything not verified is an escalation. `stages_error` is what
    /// stopped the stages early, if something did.
    Finalize {
        run_id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stages_error: Option<StatesError>,
    },
}

/// The run summary Finalize returns; the state machine fails the execution with
/// `Deprov.Escalated` unless `status` is `completed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct RunSummary {
    pub run_id: String,
    pub status: crate::ports::RunStatus,
    pub tasks: usize,
    pub verified: usize,
    pub escalations: Vec<Value>,
}

/// A run's plan as stored, reduced to the state the stages need.
pub fn planned_run(
    plan: &Plan,
    dry_run: bool,
    now: DateTime<Utc>,
    queue_url: impl Fn(&str) -> Option<String>,
) -> Result<PlannedRun, String> {
    let mut stages = Vec::with_capacity(plan.stages.len());
    for stage in &plan.stages {
        let not_before = stage.not_before.with_timezone(&Utc);
        let mut tasks = Vec::with_capacity(stage.tasks.len());
        for task in &stage.tasks {
            let queue_url = queue_url(&task.system)
                .ok_or_else(|| format!("system \"{}\" has no task queue", task.system))?;
            tasks.push(TaskItem {
                queue_url,
                policy_version: plan.policy_version.clone(),
                task: task.clone(),
            });
        }
        stages.push(StageItem {
            run_id: plan.run_id.clone(),
            stage: stage.stage,
            not_before,
            deferred: not_before > now,
            tasks,
        });
    }
    Ok(PlannedRun {
        run_id: plan.run_id.clone(),
        person_id: plan.event.person.id.clone(),
        verdict: if dry_run {
            Verdict::DryRun
        } else {
            Verdict::Planned
        },
        task_count: plan.task_count(),
        stages,
        refusal: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::sample_event;
    use serde_json::json;

    /// Regenerate with `deprov schema run-input > infra/schemas/run-input.schema.json`.
    #[test]
    fn the_published_run_input_schema_matches_the_serde_types() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../infra/schemas/run-input.schema.json"
        );
        let published: Value = std::fs::read_to_string(path)
            .ok()
            .and_then(|text| serde_json::from_str(&text).ok())
            .unwrap_or_else(|| panic!("cannot read {path}"));
        assert_eq!(
            published,
            RunInput::json_schema(),
            "infra/schemas/run-input.schema.json is stale: run `deprov schema run-input > infra/schemas/run-input.schema.json`"
        );
    }

    #[test]
    fn a_run_input_is_an_event_with_an_optional_dry_run_or_a_bare_event() {
        let event = serde_json::to_value(sample_event()).unwrap();
        let wrapped = RunInput::parse(&json!({"event": event, "dry_run": true})).unwrap();
        assert!(wrapped.dry_run);
        let bare = RunInput::parse(&event).unwrap();
        assert!(!bare.dry_run);
        assert_eq!(bare.event, wrapped.event);
        let err = RunInput::parse(&json!({"event": event, "dryrun": true})).unwrap_err();
        assert_eq!(err.problems[0].path, "$.dryrun");
    }

    #[test]
    fn a_caught_failure_without_a_cause_becomes_an_escalation_of_its_kind() {
        let plan_task = crate::plan::Task {
            task_id: "t".into(),
            run_id: "r".into(),
            system: "crm".into(),
            action: crate::plan::Action::Disable,
            account: crate::plan::AccountRef {
                id: "1".into(),
                username: "ada".into(),
            },
            target: None,
            person_id: "E1".into(),
        };
        let caught: TaskResult = serde_json::from_value(json!({
            "task": plan_task,
            "failure": {"Error": "Deprov.Throttled", "Cause": null}
        }))
        .unwrap();
        let outcome = caught.into_outcome();
        assert_eq!(outcome.status, crate::task::TaskStatus::Escalated);
        let error = outcome.error.unwrap();
        assert_eq!(error.kind, ErrorKind::Throttled);
        assert_eq!(error.message, "Deprov.Throttled");
    }
}
