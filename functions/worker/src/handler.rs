//! A task queue's consumer: task + token → the system's connector → apply → verify →
//! SendTaskSuccess with the evidence, or SendTaskFailure with the `Deprov.*` kind the state
//! machine retries or catches. A message that cannot even be answered (unreadable, no
//! token, the store or Step Functions unreachable) is a batch item failure: SQS delivers it
//! again and, in the end, to the queue's alarmed DLQ.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_lambda_events::event::sqs::{SqsBatchResponse, SqsEvent, SqsMessage};
use deprov_core::connector::ConnectorFactory;
use deprov_core::ports::{PolicySource, ReportError, RunStore, TaskMessage, TaskReporter};
use deprov_core::task::{TaskError, TaskStatus};
use deprov_core::worker::{self, Attempt};
use deprov_core::{Connector, ErrorKind, Policy, TaskOutcome};
use lambda_runtime::LambdaEvent;
use tracing::Instrument;

/// A Retry-After up to this long is waited out in the worker (with heartbeats) rather than
/// handed back to the state machine, whose retry delays cannot follow the target's.
const MAX_INLINE_WAIT: Duration = Duration::from_secs(20);

pub struct Deps<S, P, R> {
    pub store: S,
    pub policies: P,
    pub reporter: R,
    pub connectors: Box<ConnectorFactory>,
    pub heartbeat_every: Duration,
    /// Connectors by (policy version, system): they hold token caches and connection
    /// pools worth keeping across invocations of a warm function.
    cache: Mutex<HashMap<(String, String), Arc<dyn Connector>>>,
    /// Policy versions never change once stored.
    policy_cache: Mutex<HashMap<String, Arc<Policy>>>,
}

impl<S, P, R> Deps<S, P, R> {
    pub fn new(
        store: S,
        policies: P,
        reporter: R,
        connectors: Box<ConnectorFactory>,
        heartbeat_every: Duration,
    ) -> Self {
        Deps {
            store,
            policies,
            reporter,
            connectors,
            heartbeat_every,
            cache: Mutex::new(HashMap::new()),
            policy_cache: Mutex::new(HashMap::new()),
        }
    }
}

/// Why a message goes back to the queue.
#[derive(Debug, thiserror::Error)]
enum Redeliver {
    #[error("{0}")]
    Unreadable(String),
    #[error("{0}")]
    Unanswered(String),
}

pub async fn handle<S: RunStore, P: PolicySource, R: TaskReporter>(
    deps: &Deps<S, P, R>,
    event: LambdaEvent<SqsEvent>,
) -> Result<SqsBatchResponse, lambda_runtime::Error> {
    let mut response = SqsBatchResponse::default();
    for message in &event.payload.records {
        let message_id = message.message_id.clone().unwrap_or_default();
        if let Err(err) = one(deps, message).await {
            tracing::error!(message_id = %message_id, error = %err, "message goes back to the queue");
            response.add_failure(message_id);
        }
    }
    Ok(response)
}

async fn one<S: RunStore, P: PolicySource, R: TaskReporter>(
    deps: &Deps<S, P, R>,
    message: &SqsMessage,
) -> Result<(), Redeliver> {
    let body = message
        .body
        .as_deref()
        .ok_or_else(|| Redeliver::Unreadable("the message has no body".into()))?;
    let task_message: TaskMessage = serde_json::from_str(body)
        .map_err(|err| Redeliver::Unreadable(format!("the body is not a task message: {err}")))?;
    let Some(token) = task_message.task_token.clone() else {
        return Err(Redeliver::Unreadable(
            "the task message has no task_token; nobody could be told the result".into(),
        ));
    };
    let task = &task_message.task;
    let span = tracing::info_span!("task", run_id = %task.run_id, task_id = %task.task_id, system = %task.system, action = task.action.as_str());
    async {
        // The policy is read once per message (the active one is not cached).
        let prepared = match policy_for(deps, &task_message).await {
            Ok(policy) => connector_for(deps, &policy, &task_message.task.system)
                .map(|connector| (policy, connector)),
            Err(error) => Err(error),
        };
        let answer = match prepared {
            Ok((policy, connector)) => {
                run(deps, &policy, connector.as_ref(), &task_message, &token).await?
            }
            Err(error) => Answer::Failed(error),
        };
        report(deps, &token, answer).await
    }
    .instrument(span)
    .await
}

/// What the run is told.
enum Answer {
    Verified(Box<TaskOutcome>),
    Failed(TaskError),
}

async fn run<S: RunStore, P: PolicySource, R: TaskReporter>(
    deps: &Deps<S, P, R>,
    policy: &Policy,
    connector: &dyn Connector,
    message: &TaskMessage,
    token: &str,
) -> Result<Answer, Redeliver> {
    let task = &message.task;
    loop {
        let attempt = with_heartbeats(deps, token, worker::attempt(connector, &deps.store, task))
            .await
            .map_err(|err| Redeliver::Unanswered(format!("the runs table: {err}")))?;
        match attempt {
            Attempt::Finished(outcome) => {
                let winner = deps.store.complete_task(&outcome).await.map_err(|err| {
                    Redeliver::Unanswered(format!("recording the outcome: {err}"))
                })?;
                tracing::info!(status = ?winner.status, attempts = winner.attempts, "task finished");
                return Ok(match winner.status {
                    TaskStatus::Verified => Answer::Verified(Box::new(winner)),
                    _ => Answer::Failed(winner.error.clone().unwrap_or(TaskError {
                        kind: ErrorKind::Permanent,
                        message: format!("the task ended {:?}", winner.status),
                    })),
                });
            }
            Attempt::Retry {
                attempts,
                error,
                retry_after,
            } => {
                let wait = policy.retry.backoff(attempts, retry_after, fastrand::f64());
                if attempts < policy.retry.max_attempts && wait <= MAX_INLINE_WAIT {
                    tracing::info!(attempts, wait_ms = wait.as_millis() as u64, error = %error.message, "retrying in the worker");
                    with_heartbeats(deps, token, async {
                        tokio::time::sleep(wait).await;
                        Ok(())
                    })
                    .await
                    .map_err(|err| Redeliver::Unanswered(err.to_string()))?;
                    continue;
                }
                // Longer waits are the state machine's: its Retry backs off with jitter.
                tracing::warn!(attempts, error = %error.message, "handing the retry to the state machine");
                return Ok(Answer::Failed(error));
            }
        }
    }
}

/// Runs `work` while telling the run, every `heartbeat_every`, that the task is alive.
async fn with_heartbeats<S, P, R: TaskReporter, T>(
    deps: &Deps<S, P, R>,
    token: &str,
    work: impl std::future::Future<Output = Result<T, deprov_core::ports::StoreError>>,
) -> Result<T, deprov_core::ports::StoreError> {
    tokio::pin!(work);
    let mut beat = tokio::time::interval(deps.heartbeat_every);
    beat.tick().await;
    loop {
        tokio::select! {
            result = &mut work => return result,
            _ = beat.tick() => {
                if let Err(err) = deps.reporter.heartbeat(token).await {
                    tracing::warn!(error = %err, "heartbeat not delivered");
                }
            }
        }
    }
}

async fn report<S, P, R: TaskReporter>(
    deps: &Deps<S, P, R>,
    token: &str,
    answer: Answer,
) -> Result<(), Redeliver> {
    let reported = match &answer {
        Answer::Verified(outcome) => deps.reporter.succeed(token, outcome).await,
        Answer::Failed(error) => deps.reporter.fail(token, error.kind, &error.message).await,
    };
    match reported {
        Ok(()) => Ok(()),
        // The run moved on (a timeout, a retry with a new token): the outcome is recorded,
        // and the retry finds it.
        Err(ReportError::Gone(why)) => {
            tracing::warn!(%why, "the run no longer waits for this answer");
            Ok(())
        }
        Err(ReportError::Failed(why)) => Err(Redeliver::Unanswered(why)),
    }
}

async fn policy_for<S, P: PolicySource, R>(
    deps: &Deps<S, P, R>,
    message: &TaskMessage,
) -> Result<Arc<Policy>, TaskError> {
    let unavailable = |err: deprov_core::ports::StoreError| TaskError {
        kind: ErrorKind::Transient,
        message: format!("reading the policy: {err}"),
    };
    let Some(version) = &message.policy_version else {
        return deps
            .policies
            .active()
            .await
            .map(Arc::new)
            .map_err(unavailable);
    };
    if let Some(policy) = lock(&deps.policy_cache).get(version) {
        return Ok(policy.clone());
    }
    let policy = Arc::new(deps.policies.version(version).await.map_err(unavailable)?);
    lock(&deps.policy_cache).insert(version.clone(), policy.clone());
    Ok(policy)
}

fn connector_for<S, P, R>(
    deps: &Deps<S, P, R>,
    policy: &Policy,
    system: &str,
) -> Result<Arc<dyn Connector>, TaskError> {
    let key = (policy.version.clone(), system.to_string());
    if let Some(connector) = lock(&deps.cache).get(&key) {
        return Ok(connector.clone());
    }
    let config = policy.systems.get(system).ok_or_else(|| TaskError {
        kind: ErrorKind::InvalidInput,
        message: format!(
            "policy version \"{}\" has no system \"{system}\"",
            policy.version
        ),
    })?;
    let connector = (deps.connectors)(system, config).map_err(|err| TaskError {
        kind: err.kind(),
        message: err.to_string(),
    })?;
    lock(&deps.cache).insert(key, connector.clone());
    Ok(connector)
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use deprov_connectors::memory::{Fault, MemoryConnector, MemoryDirectory};
    use deprov_core::plan::{AccountRef, Action, Task};
    use deprov_core::policy::SystemConfig;
    use deprov_core::testing::{sample_policy, MemoryPolicies, MemoryStore};
    use deprov_core::ConnectorError;
    use lambda_runtime::Context;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq)]
    enum Report {
        Success(Box<TaskOutcome>),
        Failure(ErrorKind, String),
    }

    #[derive(Default)]
    struct Reports {
        sent: Mutex<Vec<(String, Report)>>,
        unreachable: Mutex<bool>,
    }

    #[async_trait]
    impl TaskReporter for Reports {
        async fn succeed(&self, token: &str, outcome: &TaskOutcome) -> Result<(), ReportError> {
            if *lock(&self.unreachable) {
                return Err(ReportError::Failed("connection refused".into()));
            }
            lock(&self.sent).push((token.into(), Report::Success(Box::new(outcome.clone()))));
            Ok(())
        }
        async fn fail(&self, token: &str, kind: ErrorKind, cause: &str) -> Result<(), ReportError> {
            lock(&self.sent).push((token.into(), Report::Failure(kind, cause.into())));
            Ok(())
        }
        async fn heartbeat(&self, _token: &str) -> Result<(), ReportError> {
            Ok(())
        }
    }

    fn deps(directory: Arc<MemoryDirectory>) -> Deps<MemoryStore, MemoryPolicies, Reports> {
        Deps::new(
            MemoryStore::default(),
            MemoryPolicies::new(sample_policy()),
            Reports::default(),
            Box::new(move |_system: &str, _config: &SystemConfig| {
                Ok(Arc::new(MemoryConnector::new(directory.clone())) as Arc<dyn Connector>)
            }),
            Duration::from_secs(60),
        )
    }

    fn task(action: Action) -> Task {
        Task {
            task_id: format!("t-{}", action.as_str()),
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

    fn sqs(bodies: &[String]) -> LambdaEvent<SqsEvent> {
        let records: Vec<_> = bodies
            .iter()
            .enumerate()
            .map(|(index, body)| json!({"messageId": format!("m{index}"), "body": body, "eventSource": "aws:sqs"}))
            .collect();
        let event: SqsEvent = serde_json::from_value(json!({ "Records": records })).unwrap();
        LambdaEvent::new(event, Context::default())
    }

    fn message(task: &Task, token: &str) -> String {
        json!({"task": task, "policy_version": "test-1", "task_token": token}).to_string()
    }

    fn directory() -> Arc<MemoryDirectory> {
        let directory = MemoryDirectory::new();
        directory.add_account("crm", "42", "ada.l", "ada@example.com", &["eng"]);
        directory
    }

    #[tokio::test]
    async fn a_verified_task_is_reported_with_its_evidence() {
        let directory = directory();
        let deps = deps(directory.clone());
        let response = handle(&deps, sqs(&[message(&task(Action::Disable), "tok-1")]))
            .await
            .unwrap();
        assert!(response.batch_item_failures.is_empty());
        let sent = lock(&deps.reporter.sent).clone();
        let [(token, Report::Success(outcome))] = sent.as_slice() else {
            panic!("expected one success, got {sent:?}");
        };
        assert_eq!(token, "tok-1");
        assert_eq!(outcome.status, TaskStatus::Verified);
        assert!(outcome.evidence.as_ref().is_some_and(|e| e.verified));
        assert!(!directory.account("42").unwrap().active);
    }

    #[tokio::test]
    async fn a_redelivered_task_is_answered_from_the_record_without_a_second_change() {
        let directory = directory();
        let deps = deps(directory.clone());
        let body = message(&task(Action::Disable), "tok-1");
        handle(&deps, sqs(std::slice::from_ref(&body)))
            .await
            .unwrap();
        let changes = directory.changes();
        handle(&deps, sqs(&[body])).await.unwrap();
        assert_eq!(directory.changes(), changes);
        assert_eq!(lock(&deps.reporter.sent).len(), 2);
    }

    #[tokio::test]
    async fn a_permanent_refusal_is_reported_as_a_typed_failure() {
        let directory = directory();
        directory.inject(
            "ada.l",
            Action::Disable,
            Fault::Apply(ConnectorError::Permanent("account is protected".into())),
        );
        let deps = deps(directory);
        handle(&deps, sqs(&[message(&task(Action::Disable), "tok-1")]))
            .await
            .unwrap();
        let sent = lock(&deps.reporter.sent).clone();
        let [(_, Report::Failure(kind, cause))] = sent.as_slice() else {
            panic!("expected one failure, got {sent:?}");
        };
        assert_eq!(*kind, ErrorKind::Permanent);
        assert!(cause.contains("account is protected"), "{cause}");
    }

    #[tokio::test]
    async fn unreadable_and_unanswerable_messages_are_batch_item_failures() {
        let deps = deps(directory());
        *lock(&deps.reporter.unreachable) = true;
        let no_token = json!({"task": task(Action::Disable)}).to_string();
        let response = handle(
            &deps,
            sqs(&[
                "{not json".into(),
                no_token,
                message(&task(Action::Disable), "tok-1"),
            ]),
        )
        .await
        .unwrap();
        let failed: Vec<_> = response
            .batch_item_failures
            .iter()
            .map(|f| f.item_identifier.clone())
            .collect();
        assert_eq!(failed, ["m0", "m1", "m2"]);
    }

    #[tokio::test]
    async fn a_system_missing_from_the_policy_is_invalid_input() {
        let deps = deps(directory());
        let mut unknown = task(Action::Disable);
        unknown.system = "payroll".into();
        handle(&deps, sqs(&[message(&unknown, "tok-1")]))
            .await
            .unwrap();
        let sent = lock(&deps.reporter.sent).clone();
        assert!(
            matches!(&sent[0].1, Report::Failure(ErrorKind::InvalidInput, cause) if cause.contains("payroll")),
            "{sent:?}"
        );
    }
}
