//! One attempt at one task: the logic every worker runs, in Lambda or in process.
//! apply → verify, with recovery: a task that was started before and never finished is read
//! back first, so a crash between apply and record never applies it twice.

use std::time::Duration;

use chrono::Utc;
use serde_json::json;

use crate::audit::{AuditEntry, AuditKind};
use crate::connector::{batch_answers, Connector, ConnectorError};
use crate::error::ErrorKind;
use crate::plan::Task;
use crate::ports::{AuditLog, RunStore, StoreError, TaskStart};
use crate::task::{TaskError, TaskOutcome, TaskStatus};

/// What one attempt came to.
#[derive(Debug)]
pub enum Attempt {
    /// The task is finished (verified, escalated or already recorded earlier).
    Finished(Box<TaskOutcome>),
    /// A throttled or transient failure: try again later.
    Retry {
        attempts: u32,
        error: TaskError,
        retry_after: Option<Duration>,
    },
}

fn finished(task: &Task, status: TaskStatus, attempts: u32) -> TaskOutcome {
    TaskOutcome {
        task: task.clone(),
        status,
        change: None,
        evidence: None,
        error: None,
        attempts,
        finished_at: Utc::now(),
    }
}

fn failure(task: &Task, attempts: u32, error: ConnectorError, during: &str) -> Attempt {
    let task_error = TaskError {
        kind: error.kind(),
        message: format!("{during}: {error}"),
    };
    if error.kind().is_retryable() {
        return Attempt::Retry {
            attempts,
            retry_after: error.retry_after(),
            error: task_error,
        };
    }
    let mut outcome = finished(task, TaskStatus::Escalated, attempts);
    outcome.error = Some(task_error);
    Attempt::Finished(Box::new(outcome))
}

/// Runs one attempt of `task` against its connector.
pub async fn attempt(
    connector: &dyn Connector,
    store: &dyn RunStore,
    task: &Task,
) -> Result<Attempt, StoreError> {
    attempt_batch(connector, store, std::slice::from_ref(task))
        .await
        .pop()
        .unwrap_or_else(|| Err(StoreError::Backend("no attempt was made".into())))
}

/// Runs one attempt of each of `tasks` (all of one system), one answer per task in order.
/// The connector gets them together (`apply_batch`, then `verify_batch` of those applied),
/// so a connector that changes many targets in one round trip does.
pub async fn attempt_batch(
    connector: &dyn Connector,
    store: &dyn RunStore,
    tasks: &[Task],
) -> Vec<Result<Attempt, StoreError>> {
    let mut answers: Vec<Option<Result<Attempt, StoreError>>> =
        tasks.iter().map(|_| None).collect();
    let starts = store.start_tasks(tasks).await;
    // (index in `tasks`, attempt number) of the tasks still to apply.
    let mut to_apply = Vec::new();
    let mut interrupted = Vec::new();
    for (index, start) in starts.into_iter().enumerate() {
        match start {
            Err(err) => answers[index] = Some(Err(err)),
            Ok(TaskStart::Finished(outcome)) => {
                answers[index] = Some(Ok(Attempt::Finished(outcome)))
            }
            Ok(TaskStart::Fresh) => to_apply.push((index, 1)),
            Ok(TaskStart::Interrupted { attempts }) => interrupted.push((index, attempts + 1)),
        }
    }
    // An earlier attempt may have applied the change and died before recording it: if the
    // target already shows the wanted state, that is the proof.
    if !interrupted.is_empty() {
        let read = connector.verify_batch(&pick(tasks, &interrupted)).await;
        for ((index, attempts), evidence) in
            interrupted.into_iter().zip(batch_answers(read, "verify"))
        {
            match evidence {
                Ok(evidence) if evidence.verified => {
                    let mut outcome = finished(&tasks[index], TaskStatus::Verified, attempts);
                    outcome.evidence = Some(evidence);
                    answers[index] = Some(Ok(Attempt::Finished(Box::new(outcome))));
                }
                _ => to_apply.push((index, attempts)),
            }
        }
    }
    let applied = if to_apply.is_empty() {
        Vec::new()
    } else {
        connector.apply_batch(&pick(tasks, &to_apply)).await
    };
    let mut to_verify = Vec::new();
    let mut changes = Vec::new();
    for ((index, attempts), change) in to_apply.into_iter().zip(batch_answers(applied, "apply")) {
        match change {
            Ok(change) => {
                to_verify.push((index, attempts));
                changes.push(change);
            }
            Err(error) => {
                answers[index] = Some(Ok(failure(&tasks[index], attempts, error, "apply")));
            }
        }
    }
    let read = if to_verify.is_empty() {
        Vec::new()
    } else {
        connector.verify_batch(&pick(tasks, &to_verify)).await
    };
    for (((index, attempts), change), evidence) in to_verify
        .into_iter()
        .zip(changes)
        .zip(batch_answers(read, "verify"))
    {
        let task = &tasks[index];
        let evidence = match evidence {
            Ok(evidence) => evidence,
            Err(error) => {
                answers[index] = Some(Ok(failure(task, attempts, error, "verify")));
                continue;
            }
        };
        let mut outcome = if evidence.verified {
            finished(task, TaskStatus::Verified, attempts)
        } else {
            let mut outcome = finished(task, TaskStatus::Escalated, attempts);
            outcome.error = Some(TaskError {
                kind: ErrorKind::Unverified,
                message: "the target, read back after the change, does not show it".into(),
            });
            outcome
        };
        outcome.change = Some(change);
        outcome.evidence = Some(evidence);
        answers[index] = Some(Ok(Attempt::Finished(Box::new(outcome))));
    }
    answers
        .into_iter()
        .map(|answer| {
            answer.unwrap_or_else(|| {
                Err(StoreError::Backend(
                    "a task of the batch got no answer".into(),
                ))
            })
        })
        .collect()
}

/// The tasks at `picked`'s indexes.
fn pick(tasks: &[Task], picked: &[(usize, u32)]) -> Vec<Task> {
    picked
        .iter()
        .map(|(index, _)| tasks[*index].clone())
        .collect()
}

/// The outcome of a task that ran out of attempts.
pub fn gave_up(task: &Task, attempts: u32, last: TaskError) -> TaskOutcome {
    let mut outcome = finished(task, TaskStatus::Escalated, attempts);
    outcome.error = Some(TaskError {
        kind: last.kind,
        message: format!(
            "gave up after {attempts} attempts; last error: {}",
            last.message
        ),
    });
    outcome
}

/// The outcome of a task that failed in a way retrying will not mend.
pub fn escalated(task: &Task, error: TaskError) -> TaskOutcome {
    let mut outcome = finished(task, TaskStatus::Escalated, 0);
    outcome.error = Some(error);
    outcome
}

/// The outcome of a task stopped before it ran.
pub fn cancelled(task: &Task, why: &str) -> TaskOutcome {
    let mut outcome = finished(task, TaskStatus::Cancelled, 0);
    outcome.error = Some(TaskError {
        kind: ErrorKind::Permanent,
        message: why.to_string(),
    });
    outcome
}

/// Records a completion (first one wins) and its audit record; returns the winner.
/// Safe to call again after a crash: both writes are idempotent.
pub async fn record(
    store: &dyn RunStore,
    audit: &dyn AuditLog,
    outcome: &TaskOutcome,
) -> Result<TaskOutcome, StoreError> {
    let winner = store.complete_task(outcome).await?;
    audit.append(audit_entry(&winner)).await?;
    Ok(winner)
}

/// The audit entry of a task completion.
pub fn audit_entry(outcome: &TaskOutcome) -> AuditEntry {
    let task = &outcome.task;
    AuditEntry {
        run_id: task.run_id.clone(),
        key: format!("task:{}", task.task_id),
        kind: AuditKind::TaskCompleted,
        subject: task.person_id.clone(),
        system: Some(task.system.clone()),
        task_id: Some(task.task_id.clone()),
        detail: json!({
            "action": task.action,
            "account": task.account,
            "target": task.target,
            "status": outcome.status,
            "change": outcome.change,
            "evidence": outcome.evidence,
            "error": outcome.error,
            "attempts": outcome.attempts,
            "finished_at": outcome.finished_at,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connector::{Account, Applied, Evidence, PersonQuery};
    use crate::plan::{AccountRef, Action, StageKind};
    use crate::testing::{sample_event, MemoryStore};
    use async_trait::async_trait;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Counts applies; the account's state is a flag.
    #[derive(Default)]
    struct Flag {
        disabled: std::sync::atomic::AtomicBool,
        applies: AtomicU32,
        fail_apply: Option<ConnectorError>,
        lie: bool,
    }

    #[async_trait]
    impl Connector for Flag {
        fn supports(&self) -> &[StageKind] {
            &[StageKind::Disable]
        }
        async fn discover(&self, _: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
            Ok(vec![])
        }
        async fn apply(&self, _: &Task) -> Result<Applied, ConnectorError> {
            if let Some(error) = &self.fail_apply {
                return Err(error.clone());
            }
            self.applies.fetch_add(1, Ordering::SeqCst);
            Ok(if self.disabled.swap(true, Ordering::SeqCst) {
                Applied::AlreadyDone
            } else {
                Applied::Changed
            })
        }
        async fn verify(&self, _: &Task) -> Result<Evidence, ConnectorError> {
            let disabled = self.disabled.load(Ordering::SeqCst) && !self.lie;
            Ok(Evidence {
                verified: disabled,
                observed: json!({"active": !disabled}),
            })
        }
    }

    fn task() -> Task {
        let event = sample_event();
        Task {
            task_id: "t-1".into(),
            run_id: crate::ids::run_id(&event.source, &event.event_id),
            system: "crm".into(),
            action: Action::Disable,
            account: AccountRef {
                id: "42".into(),
                username: "ada".into(),
            },
            target: None,
            person_id: "E1001".into(),
        }
    }

    #[tokio::test]
    async fn applies_then_verifies_and_records_once() {
        let store = MemoryStore::default();
        let connector = Flag::default();
        let Ok(Attempt::Finished(outcome)) = attempt(&connector, &store, &task()).await else {
            panic!("not finished")
        };
        assert_eq!(outcome.status, TaskStatus::Verified);
        assert_eq!(outcome.change, Some(Applied::Changed));
        let first = record(&store, &store, &outcome)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let again = record(&store, &store, &outcome)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(first, again);
        assert_eq!(
            store
                .records(&task().run_id)
                .await
                .map(|r| r.len())
                .unwrap_or(0),
            1
        );
        // Finished tasks are not applied again.
        let Ok(Attempt::Finished(_)) = attempt(&connector, &store, &task()).await else {
            panic!()
        };
        assert_eq!(connector.applies.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn an_interrupted_task_is_read_back_before_applying() {
        let store = MemoryStore::default();
        let connector = Flag::default();
        // First attempt started and died after the change reached the target.
        let _ = store.start_task(&task()).await;
        connector.disabled.store(true, Ordering::SeqCst);
        let Ok(Attempt::Finished(outcome)) = attempt(&connector, &store, &task()).await else {
            panic!()
        };
        assert_eq!(outcome.status, TaskStatus::Verified);
        assert_eq!(connector.applies.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn failures_retry_or_escalate_by_kind_and_lies_are_caught() {
        let store = MemoryStore::default();
        let throttled = Flag {
            fail_apply: Some(ConnectorError::Throttled {
                retry_after: Some(Duration::from_secs(3)),
                message: "429".into(),
            }),
            ..Flag::default()
        };
        let Ok(Attempt::Retry {
            retry_after, error, ..
        }) = attempt(&throttled, &store, &task()).await
        else {
            panic!()
        };
        assert_eq!(retry_after, Some(Duration::from_secs(3)));
        assert_eq!(error.kind, ErrorKind::Throttled);

        let store = MemoryStore::default();
        let refused = Flag {
            fail_apply: Some(ConnectorError::Permanent("HTTP 400".into())),
            ..Flag::default()
        };
        let Ok(Attempt::Finished(outcome)) = attempt(&refused, &store, &task()).await else {
            panic!()
        };
        assert_eq!(outcome.status, TaskStatus::Escalated);

        let store = MemoryStore::default();
        let liar = Flag {
            lie: true,
            ..Flag::default()
        };
        let Ok(Attempt::Finished(outcome)) = attempt(&liar, &store, &task()).await else {
            panic!()
        };
        assert_eq!(outcome.status, TaskStatus::Escalated);
        assert_eq!(outcome.error.map(|e| e.kind), Some(ErrorKind::Unverified));
    }

    /// Applies all but the last task of a batch and answers one result short.
    struct Short;

    #[async_trait]
    impl Connector for Short {
        fn supports(&self) -> &[StageKind] {
            &[StageKind::Disable]
        }
        fn max_batch(&self) -> usize {
            10
        }
        async fn discover(&self, _: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
            Ok(vec![])
        }
        async fn apply(&self, _: &Task) -> Result<Applied, ConnectorError> {
            Ok(Applied::Changed)
        }
        async fn apply_batch(&self, tasks: &[Task]) -> Vec<Result<Applied, ConnectorError>> {
            tasks.iter().skip(1).map(|_| Ok(Applied::Changed)).collect()
        }
        async fn verify(&self, _: &Task) -> Result<Evidence, ConnectorError> {
            Ok(Evidence {
                verified: true,
                observed: json!({}),
            })
        }
    }

    #[tokio::test]
    async fn a_batch_answers_each_task_and_a_missing_answer_is_never_a_success() {
        let store = MemoryStore::default();
        let tasks: Vec<Task> = (0..3)
            .map(|n| Task {
                task_id: format!("t-{n}"),
                ..task()
            })
            .collect();
        // The first was finished before: it is answered from the record, not applied.
        let done = finished(&tasks[0], TaskStatus::Verified, 1);
        let _ = store.start_task(&tasks[0]).await;
        let _ = store.complete_task(&done).await;
        let answers = attempt_batch(&Short, &store, &tasks).await;
        let statuses: Vec<TaskStatus> = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(Attempt::Finished(outcome)) => outcome.status,
                other => panic!("{other:?}"),
            })
            .collect();
        // Two were applied and one answer is missing: the last is escalated, not verified.
        assert_eq!(
            statuses,
            [
                TaskStatus::Verified,
                TaskStatus::Verified,
                TaskStatus::Escalated
            ]
        );
    }
}
