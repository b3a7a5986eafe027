//! The audit function, the only writer of the audit table: RecordPlan, RecordDeferral,
//! RecordStage and Finalize of the state machine. Every append is idempotent by key, so a
//! retried state writes nothing twice; the entries are the ones the local orchestrator
//! writes (`deprov_core::journal`).

use chrono::Utc;
use deprov_aws::FunctionError;
use deprov_core::flow::{AuditRequest, RunSummary};
use deprov_core::ports::{AuditLog, RunRecord, RunStatus, RunStore};
use deprov_core::restore;
use deprov_core::task::{StageRecord, TaskStatus};
use deprov_core::{journal, worker, ErrorKind};
use lambda_runtime::LambdaEvent;
use serde::Serialize;
use serde_json::Value;
use tracing::Instrument;

pub struct Deps<S, A> {
    pub store: S,
    pub audit: A,
}

/// What the audit function answers.
#[derive(Debug, Serialize, PartialEq)]
#[serde(untagged)]
pub enum Recorded {
    /// RecordPlan, RecordDeferral: the seq of the record.
    Entry { run_id: String, seq: u64 },
    /// RecordStage: the stage's tally.
    Stage(StageRecord),
    /// Finalize: the run's summary.
    Run(RunSummary),
}

pub async fn handle<S: RunStore, A: AuditLog>(
    deps: &Deps<S, A>,
    event: LambdaEvent<Value>,
) -> Result<Recorded, FunctionError> {
    let request: AuditRequest = serde_json::from_value(event.payload).map_err(|err| {
        FunctionError::invalid_input(format!(
            "not an audit request ({{\"op\": \"record_plan\" | \"record_deferral\" | \"record_stage\" | \"finalize\", …}}): {err}"
        ))
    })?;
    let run_id = match &request {
        AuditRequest::RecordPlan { run_id, .. }
        | AuditRequest::RecordDeferral { run_id, .. }
        | AuditRequest::RecordStage { run_id, .. }
        | AuditRequest::Finalize { run_id, .. } => run_id.clone(),
    };
    let span = tracing::info_span!("audit", run_id = %run_id);
    record(deps, request).instrument(span).await
}

async fn run_of<S: RunStore>(store: &S, run_id: &str) -> Result<RunRecord, FunctionError> {
    store.get_run(run_id).await?.ok_or_else(|| {
        FunctionError::invalid_input(format!(
            "run {run_id} has no stored plan; BuildPlan stores it first"
        ))
    })
}

async fn record<S: RunStore, A: AuditLog>(
    deps: &Deps<S, A>,
    request: AuditRequest,
) -> Result<Recorded, FunctionError> {
    match request {
        AuditRequest::RecordPlan {
            run_id,
            refusal: Some(refusal),
        } => {
            let entry = journal::plan_refused(
                &run_id,
                &refusal.event,
                &refusal.reason,
                &refusal.policy_version,
            );
            let record = deps.audit.append(entry).await?;
            Ok(Recorded::Entry {
                run_id,
                seq: record.seq,
            })
        }
        AuditRequest::RecordPlan {
            run_id,
            refusal: None,
        } => {
            let run = run_of(&deps.store, &run_id).await?;
            if !run.plan.stops.is_empty() {
                record_stopped_runs(deps, &run).await?;
            }
            let record = deps.audit.append(journal::plan_recorded(&run.plan)).await?;
            Ok(Recorded::Entry {
                run_id,
                seq: record.seq,
            })
        }
        AuditRequest::RecordDeferral { run_id, stage } => {
            let mut run = run_of(&deps.store, &run_id).await?;
            let Some((index, planned)) = run
                .plan
                .stages
                .iter()
                .enumerate()
                .find(|(_, planned)| planned.stage == stage)
            else {
                return Err(FunctionError::invalid_input(format!(
                    "run {run_id} has no {} stage",
                    stage.as_str()
                )));
            };
            let entry = journal::stage_deferred(
                &run_id,
                &run.person_id,
                stage,
                planned.not_before,
                planned.tasks.len(),
            );
            let wake_at = planned.not_before.with_timezone(&Utc);
            let record = deps.audit.append(entry).await?;
            if run.status != RunStatus::Cancelled {
                run.status = RunStatus::Waiting;
            }
            run.next_stage = index;
            run.wake_at = Some(wake_at);
            run.updated_at = Utc::now();
            deps.store.put_run(&run).await?;
            Ok(Recorded::Entry {
                run_id,
                seq: record.seq,
            })
        }
        AuditRequest::RecordStage {
            run_id,
            stage,
            results,
        } => {
            let mut run = run_of(&deps.store, &run_id).await?;
            let Some(index) = run.plan.stages.iter().position(|s| s.stage == stage) else {
                return Err(FunctionError::invalid_input(format!(
                    "run {run_id} has no {} stage",
                    stage.as_str()
                )));
            };
            let mut outcomes = Vec::with_capacity(results.len());
            for result in results {
                let outcome = result.into_outcome();
                if outcome.task.run_id != run_id {
                    return Err(FunctionError::invalid_input(format!(
                        "task {} belongs to run {}, not {run_id}",
                        outcome.task.task_id, outcome.task.run_id
                    )));
                }
                // First completion wins: the worker's own record beats a caught failure.
                outcomes.push(deps.store.complete_task(&outcome).await?);
            }
            // In plan order, as the local orchestrator writes them.
            let order = &run.plan.stages[index].tasks;
            outcomes.sort_by_key(|o| order.iter().position(|t| t.task_id == o.task.task_id));
            let tally = StageRecord::tally(&run_id, stage, &outcomes.iter().collect::<Vec<_>>());
            let mut entries: Vec<_> = outcomes.iter().map(worker::audit_entry).collect();
            entries.push(journal::stage_completed(&tally, &run.person_id));
            deps.audit.append_batch(entries).await?;
            if run.status != RunStatus::Cancelled {
                run.status = RunStatus::Running;
            }
            run.next_stage = index + 1;
            run.wake_at = None;
            run.updated_at = Utc::now();
            deps.store.put_run(&run).await?;
            Ok(Recorded::Stage(tally))
        }
        AuditRequest::Finalize {
            run_id,
            stages_error,
        } => {
            let mut run = run_of(&deps.store, &run_id).await?;
            if run.status == RunStatus::DryRun {
                return Err(FunctionError::new(
                    ErrorKind::InvalidInput,
                    format!("run {run_id} is a dry run; it has nothing to finalize"),
                ));
            }
            let outcomes = deps.store.task_outcomes(&run_id).await?;
            if run.status == RunStatus::Cancelled {
                // A rehire or cancel stopped this run and its trail ends with that; an
                // execution that was not stopped (one a schedule started, under another
                // name) arrives here with its pending tasks answered as cancelled.
                return Ok(Recorded::Run(RunSummary {
                    run_id,
                    status: RunStatus::Cancelled,
                    tasks: run.plan.task_count(),
                    verified: outcomes
                        .iter()
                        .filter(|o| o.status == TaskStatus::Verified)
                        .count(),
                    escalations: Vec::new(),
                }));
            }
            let (summary, entry) = journal::run_finished(&run.plan, &outcomes);
            if let Some(error) = &stages_error {
                tracing::error!(error = %error.error, "the stages stopped early");
            }
            deps.audit.append(entry).await?;
            run.status = summary.status;
            run.wake_at = None;
            run.updated_at = Utc::now();
            deps.store.put_run(&run).await?;
            Ok(Recorded::Run(summary))
        }
    }
}

/// The trails of the runs a rehire or cancel stopped (BuildPlan stopped them and recorded
/// their pending tasks as cancelled): each cancelled task, then the run's cancellation;
/// then, in this run's trail, which runs it stopped — the entries the local orchestrator
/// writes, in its order.
async fn record_stopped_runs<S: RunStore, A: AuditLog>(
    deps: &Deps<S, A>,
    run: &RunRecord,
) -> Result<(), FunctionError> {
    let event = &run.plan.event;
    let why = restore::cancel_reason(event);
    for stopped_id in &run.plan.stops {
        let stopped = run_of(&deps.store, stopped_id).await?;
        let outcomes = deps.store.task_outcomes(stopped_id).await?;
        let order: Vec<&str> = stopped.plan.tasks().map(|t| t.task_id.as_str()).collect();
        let mut cancelled: Vec<_> = outcomes
            .iter()
            .filter(|o| o.status == TaskStatus::Cancelled)
            .collect();
        cancelled.sort_by_key(|o| order.iter().position(|id| *id == o.task.task_id));
        for outcome in cancelled {
            deps.audit.append(worker::audit_entry(outcome)).await?;
        }
        deps.audit
            .append(journal::run_cancelled(
                stopped_id,
                &stopped.person_id,
                &run.run_id,
                event,
                &why,
            ))
            .await?;
    }
    deps.audit
        .append(journal::runs_stopped(&run.run_id, event, &run.plan.stops))
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::audit::{verify_chain, AuditKind};
    use deprov_core::flow::{StatesError, TaskResult};
    use deprov_core::plan::{AccountRef, Action, Plan, Stage, StageKind, Task};
    use deprov_core::task::{TaskOutcome, TaskStatus};
    use deprov_core::testing::{sample_event, MemoryStore};
    use lambda_runtime::Context;
    use serde_json::json;

    fn task(action: Action, id: &str) -> Task {
        Task {
            task_id: id.into(),
            run_id: "run-1".into(),
            system: "crm".into(),
            action,
            account: AccountRef {
                id: "42".into(),
                username: "ada.l".into(),
            },
            target: None,
            person_id: "E1001".into(),
        }
    }

    async fn seeded() -> Deps<MemoryStore, MemoryStore> {
        let store = MemoryStore::default();
        let event = sample_event();
        let plan = Plan {
            run_id: "run-1".into(),
            event: event.clone(),
            scenario: "termination".into(),
            policy_version: "test-1".into(),
            accounts: Vec::new(),
            stages: vec![Stage {
                stage: StageKind::Disable,
                not_before: event.effective_at,
                tasks: vec![task(Action::Disable, "t1"), task(Action::Disable, "t2")],
            }],
            skipped: Vec::new(),
            unreachable: Vec::new(),
            stops: Vec::new(),
            approval: Vec::new(),
        };
        let now = Utc::now();
        store
            .put_run(&RunRecord {
                run_id: "run-1".into(),
                person_id: "E1001".into(),
                status: RunStatus::Running,
                plan,
                next_stage: 0,
                wake_at: None,
                created_at: now,
                updated_at: now,
            })
            .await
            .unwrap();
        Deps {
            store,
            audit: MemoryStore::default(),
        }
    }

    fn invoke(payload: Value) -> LambdaEvent<Value> {
        LambdaEvent::new(payload, Context::default())
    }

    fn verified(task: Task) -> TaskOutcome {
        TaskOutcome {
            task,
            status: TaskStatus::Verified,
            change: None,
            evidence: None,
            error: None,
            attempts: 1,
            finished_at: Utc::now(),
        }
    }

    #[tokio::test]
    async fn a_caught_failure_is_recorded_as_an_escalation_and_the_run_does_not_complete() {
        let deps = seeded().await;
        handle(
            &deps,
            invoke(json!({"op": "record_plan", "run_id": "run-1"})),
        )
        .await
        .unwrap();
        let results = vec![
            TaskResult::Finished(Box::new(verified(task(Action::Disable, "t1")))),
            TaskResult::Failed {
                task: Box::new(task(Action::Disable, "t2")),
                failure: StatesError {
                    error: "Deprov.Permanent".into(),
                    cause: None,
                },
            },
        ];
        let request = json!({"op": "record_stage", "run_id": "run-1", "stage": "disable", "results": results});
        let Recorded::Stage(tally) = handle(&deps, invoke(request.clone())).await.unwrap() else {
            panic!("expected a stage tally");
        };
        assert_eq!((tally.verified, tally.escalated), (1, 1));
        // A retried RecordStage writes nothing twice.
        handle(&deps, invoke(request)).await.unwrap();
        let Recorded::Run(summary) =
            handle(&deps, invoke(json!({"op": "finalize", "run_id": "run-1"})))
                .await
                .unwrap()
        else {
            panic!("expected a run summary");
        };
        assert_eq!(summary.status, RunStatus::Escalated);
        assert_eq!(summary.escalations.len(), 1);
        let records = deps.audit.records("run-1").await.unwrap();
        let kinds: Vec<_> = records.iter().map(|r| r.body.kind).collect();
        assert_eq!(
            kinds,
            [
                AuditKind::PlanRecorded,
                AuditKind::TaskCompleted,
                AuditKind::TaskCompleted,
                AuditKind::StageCompleted,
                AuditKind::RunFinished
            ]
        );
        let head = deps.audit.head("run-1").await.unwrap();
        verify_chain("run-1", &records, head.as_ref()).unwrap();
    }

    #[tokio::test]
    async fn a_run_with_a_task_never_answered_is_escalated() {
        let deps = seeded().await;
        let results = vec![TaskResult::Finished(Box::new(verified(task(
            Action::Disable,
            "t1",
        ))))];
        handle(
            &deps,
            invoke(json!({"op": "record_stage", "run_id": "run-1", "stage": "disable", "results": results})),
        )
        .await
        .unwrap();
        let Recorded::Run(summary) =
            handle(&deps, invoke(json!({"op": "finalize", "run_id": "run-1"})))
                .await
                .unwrap()
        else {
            panic!("expected a run summary");
        };
        assert_eq!(summary.status, RunStatus::Escalated);
        assert_eq!(summary.escalations[0]["status"], "missing");
    }

    #[tokio::test]
    async fn a_request_it_cannot_read_is_invalid_input() {
        let deps = seeded().await;
        let err = handle(&deps, invoke(json!({"op": "shred", "run_id": "run-1"})))
            .await
            .unwrap_err();
        assert_eq!(err.error_type, "Deprov.InvalidInput");
        let err = handle(&deps, invoke(json!({"op": "finalize", "run_id": "nope"})))
            .await
            .unwrap_err();
        assert!(err.message.contains("no stored plan"), "{}", err.message);
    }
}
