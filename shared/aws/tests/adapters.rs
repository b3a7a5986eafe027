//! The AWS adapters against moto's server on a loopback port, through the real SDK with an
//! endpoint override: conditional writes, first-completion-wins, the audit chain under
//! concurrent appends, queues, secrets and executions.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{SubsecRound, Utc};
use deprov_aws::{
    load_sdk_config, tables, AwsSettings, DynamoAuditLog, DynamoRunStore, ExecutionStart,
    Executions, SecretsManagerSource, SqsTaskQueue,
};
use deprov_core::audit::{verify_chain, AuditEntry, AuditKind};
use deprov_core::plan::{build_plan, AccountRef, Action, Discovery, StageKind, Task};
use deprov_core::ports::{
    AuditLog, EventClaim, RunRecord, RunStatus, RunStore, SecretSource, TaskMessage, TaskQueue,
    TaskStart,
};
use deprov_core::task::{TaskOutcome, TaskStatus};
use deprov_core::testing::{sample_event, sample_policy};
use serde_json::json;

/// moto's server: `$DEPROV_MOTO_SERVER`, else the venv tests/run.sh makes.
fn moto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("DEPROV_MOTO_SERVER") {
        return PathBuf::from(path);
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let venv = PathBuf::from(home).join(".cache/deprov-venv/bin/moto_server");
    assert!(
        venv.exists(),
        "moto_server not found: run tests/run.sh (it installs moto[server])"
    );
    venv
}

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn moto() -> Moto {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("no free port: {err}"));
    let child = Command::new(moto_binary())
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start moto_server: {err}"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(20);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto { child, endpoint }
}

async fn sdk(moto: &Moto) -> aws_config::SdkConfig {
    // moto accepts any credentials; the SDK needs some.
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    load_sdk_config(&AwsSettings {
        endpoint_url: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
    })
    .await
}

async fn stores(config: &aws_config::SdkConfig, tag: &str) -> (DynamoRunStore, DynamoAuditLog) {
    let client = aws_sdk_dynamodb::Client::new(config);
    let (runs, audit) = (format!("runs-{tag}"), format!("audit-{tag}"));
    tables::create_runs_table(&client, &runs)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    tables::create_audit_table(&client, &audit)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    (
        DynamoRunStore::new(client.clone(), &runs),
        DynamoAuditLog::new(client, &audit, &runs),
    )
}

fn task(run_id: &str, id: &str) -> Task {
    Task {
        task_id: id.into(),
        run_id: run_id.into(),
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

fn outcome(task: &Task, status: TaskStatus) -> TaskOutcome {
    TaskOutcome {
        task: task.clone(),
        status,
        change: None,
        evidence: None,
        error: None,
        attempts: 1,
        finished_at: Utc::now(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_run_store_keeps_the_run_rules() {
    let moto = moto().await;
    let config = sdk(&moto).await;
    let (store, _) = stores(&config, "runs").await;

    assert_eq!(
        store
            .claim_event("workday", "e1", "r-1")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        EventClaim::New
    );
    assert_eq!(
        store
            .claim_event("workday", "e1", "r-2")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        EventClaim::Existing("r-1".into())
    );

    let event = sample_event();
    let plan = build_plan(
        &event,
        &sample_policy(),
        &[Discovery {
            system: "crm".into(),
            supports: vec![StageKind::Disable],
            result: Ok(vec![]),
        }],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Stored times keep microseconds.
    let now = Utc::now().trunc_subsecs(6);
    let mut run = RunRecord {
        run_id: plan.run_id.clone(),
        person_id: "E1001".into(),
        status: RunStatus::Running,
        plan,
        next_stage: 0,
        wake_at: None,
        created_at: now,
        updated_at: now,
    };
    store.put_run(&run).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store
            .get_run(&run.run_id)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Some(run.clone())
    );
    assert_eq!(
        store.due_runs(Utc::now()).await.unwrap_or_default(),
        vec![run.run_id.clone()]
    );
    assert_eq!(
        store.open_runs_for("E1001").await.unwrap_or_default().len(),
        1
    );

    // Waiting for a stage in 30 days: not due now, due then; finished: gone from the index.
    run.status = RunStatus::Waiting;
    run.next_stage = 1;
    run.wake_at = Some(now + chrono::Duration::days(30));
    store.put_run(&run).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(store
        .due_runs(Utc::now())
        .await
        .unwrap_or_default()
        .is_empty());
    assert_eq!(
        store
            .due_runs(now + chrono::Duration::days(31))
            .await
            .unwrap_or_default()
            .len(),
        1
    );
    assert_eq!(
        store.run_status(&run.run_id).await.unwrap_or(None),
        Some(RunStatus::Waiting)
    );
    run.status = RunStatus::Completed;
    run.wake_at = None;
    store.put_run(&run).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(store
        .due_runs(now + chrono::Duration::days(31))
        .await
        .unwrap_or_default()
        .is_empty());
    assert!(store
        .open_runs_for("E1001")
        .await
        .unwrap_or_default()
        .is_empty());
    let stored = store
        .get_run(&run.run_id)
        .await
        .unwrap_or(None)
        .unwrap_or_else(|| panic!("run vanished"));
    assert_eq!(
        (stored.status, stored.next_stage, stored.plan),
        (RunStatus::Completed, 1, run.plan.clone())
    );

    // Tasks: fresh, interrupted, then the first completion wins.
    let t = task(&run.run_id, "t-1");
    assert_eq!(
        store.start_task(&t).await.unwrap_or_else(|e| panic!("{e}")),
        TaskStart::Fresh
    );
    assert_eq!(
        store.start_task(&t).await.unwrap_or_else(|e| panic!("{e}")),
        TaskStart::Interrupted { attempts: 1 }
    );
    let first = outcome(&t, TaskStatus::Verified);
    let winner = store
        .complete_task(&first)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let late = store
        .complete_task(&outcome(&t, TaskStatus::Escalated))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (winner.status, late.status),
        (TaskStatus::Verified, TaskStatus::Verified)
    );
    assert!(matches!(
        store.start_task(&t).await,
        Ok(TaskStart::Finished(_))
    ));
    assert_eq!(
        store
            .task_outcomes(&run.run_id)
            .await
            .unwrap_or_default()
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_audit_chain_survives_concurrent_appends_and_dedupes_keys() {
    let moto = moto().await;
    let config = sdk(&moto).await;
    let (_, audit) = stores(&config, "audit").await;
    let audit = Arc::new(audit);
    let entry = |key: String| AuditEntry {
        run_id: "r-chain".into(),
        key,
        kind: AuditKind::TaskCompleted,
        subject: "E1001".into(),
        system: Some("crm".into()),
        task_id: None,
        detail: json!({"n": 1}),
    };
    let mut appends = tokio::task::JoinSet::new();
    for index in 0..12 {
        let audit = Arc::clone(&audit);
        let entry = entry(format!("task:{}", index % 8));
        appends.spawn(async move { audit.append(entry).await });
    }
    while let Some(joined) = appends.join_next().await {
        joined
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    let records = audit
        .records("r-chain")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Eight distinct keys: eight records, however the twelve appends were interleaved.
    // (Appenders in other processes are kept apart by the conditional transaction; moto's
    // TransactWriteItems is not isolated between concurrent requests, so that race is not
    // reproduced here.)
    assert_eq!(records.len(), 8);
    let head = audit.head("r-chain").await.unwrap_or(None);
    verify_chain("r-chain", &records, head.as_ref()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(audit.by_subject("E1001").await.unwrap_or_default().len(), 8);
    assert_eq!(
        audit.run_ids().await.unwrap_or_default(),
        vec!["r-chain".to_string()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_secrets_and_executions() {
    let moto = moto().await;
    let config = sdk(&moto).await;

    let sqs = aws_sdk_sqs::Client::new(&config);
    let url = sqs
        .create_queue()
        .queue_name("tasks-crm")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .queue_url
        .unwrap_or_default();
    let queue = SqsTaskQueue::new(sqs, url);
    let message = TaskMessage {
        task: task("r-q", "t-q"),
        policy_version: None,
        task_token: Some("token-1".into()),
    };
    queue
        .send(message.clone(), Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let got = queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message, message);
    assert_eq!(got[0].receive_count, 1);
    queue
        .release(&got[0].receipt, Duration::ZERO)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let again = queue
        .receive(10, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(again[0].receive_count, 2);
    queue
        .ack(&again[0].receipt)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(queue
        .receive(10, Duration::from_secs(1))
        .await
        .unwrap_or_default()
        .is_empty());

    let secrets_client = aws_sdk_secretsmanager::Client::new(&config);
    secrets_client
        .create_secret()
        .name("deprov/connector/crm")
        .secret_string(r#"{"token":"s3cret-value"}"#)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"));
    let source = SecretsManagerSource::new(secrets_client, Duration::from_secs(300));
    let secret = source
        .secret("deprov/connector/crm")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(secret.field("token").ok(), Some("s3cret-value"));
    assert!(!format!("{secret:?}").contains("s3cret-value"));
    let missing = source
        .secret("deprov/connector/none")
        .await
        .expect_err("missing secret");
    assert!(missing.to_string().contains("deprov/connector/none"));

    let sfn = aws_sdk_sfn::Client::new(&config);
    let machine = sfn
        .create_state_machine()
        .name("deprovision")
        .definition(r#"{"StartAt":"Done","States":{"Done":{"Type":"Succeed"}}}"#)
        .role_arn("arn:aws:iam::123456789012:role/deprov-states")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .state_machine_arn;
    let executions = Executions::new(sfn.clone(), &machine);
    // A duplicate delivery names the same execution: Step Functions answers with the same
    // ARN (same name and input) or ExecutionAlreadyExists; either way one execution.
    let first = executions
        .start("r-exec", &json!({"run_id": "r-exec"}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let second = executions
        .start("r-exec", &json!({"run_id": "r-exec"}))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(first, ExecutionStart::Started { .. }));
    assert!(
        second == first || second == ExecutionStart::AlreadyExists,
        "{second:?}"
    );
    let listed = sfn
        .list_executions()
        .state_machine_arn(&machine)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e:?}"))
        .executions;
    assert_eq!(listed.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_table_keeps_policy_versions_immutable_and_one_active() {
    let moto = moto().await;
    let config = sdk(&moto).await;
    let client = aws_sdk_dynamodb::Client::new(&config);
    tables::create_config_table(&client, "config-policies")
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let policies = deprov_aws::DynamoPolicyStore::new(client, "config-policies");
    let err = policies.active().await.unwrap_err();
    assert!(err.to_string().contains("no active policy"), "{err}");

    let text = r#"
version = "v1"
[systems.crm]
kind = "memory"
[scenarios.termination]
stages = ["disable"]
"#;
    assert_eq!(policies.put(text).await.unwrap(), "v1");
    // The same document again is fine; another one under the same version is not.
    assert_eq!(policies.put(text).await.unwrap(), "v1");
    let changed = text.replace("[\"disable\"]", "[\"disable\", \"entitlements\"]");
    let err = policies.put(&changed).await.unwrap_err();
    assert!(err.to_string().contains("new version"), "{err}");
    // An invalid policy is refused before it is stored.
    assert!(policies.put("version = 3").await.is_err());

    let err = policies.activate("v2").await.unwrap_err();
    assert!(err.to_string().contains("not stored"), "{err}");
    policies.activate("v1").await.unwrap();
    assert_eq!(policies.active().await.unwrap().version, "v1");
    let v2 = changed.replace("\"v1\"", "\"v2\"");
    policies.put(&v2).await.unwrap();
    policies.activate("v2").await.unwrap();
    assert_eq!(policies.active().await.unwrap().version, "v2");
    // Plans recorded under v1 still read v1.
    assert_eq!(
        policies.policy("v1").await.unwrap().scenarios["termination"]
            .stages
            .len(),
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dynamodb_keeps_people_and_quarantines_with_the_first_decision() {
    use deprov_core::brake::Trigger;
    use deprov_core::flow::RunInput;
    use deprov_core::people::PersonRecord;
    use deprov_core::ports::Decided;
    use deprov_core::quarantine::{Decision, Quarantine, QuarantineStatus};

    let moto = moto().await;
    let config = sdk(&moto).await;
    let (store, _) = stores(&config, "people").await;

    // A late, older event does not overwrite the newer record.
    let event = sample_event();
    let left = PersonRecord::from_event(&event).unwrap_or_else(|| panic!("an HR event"));
    store
        .record_person(&left)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut older = left.clone();
    older.as_of -= chrono::Duration::days(3);
    older.inactive_from = None;
    store
        .record_person(&older)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store.people().await.unwrap_or_else(|e| panic!("{e}")),
        [left]
    );

    // Held runs are stored beside the quarantine, in order.
    let runs: Vec<RunInput> = (0..30)
        .map(|n| {
            let mut event = sample_event();
            event.event_id = format!("hr-{n:03}");
            RunInput {
                event,
                dry_run: false,
            }
        })
        .collect();
    let now = Utc::now().trunc_subsecs(3);
    let held = Quarantine::new(Trigger::Sweep, "v1", Vec::new(), Vec::new(), runs, now);
    let id = held.quarantine_id.clone();
    let stored = store
        .put_quarantine(&held)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(stored, held);
    let read = store
        .get_quarantine(&id)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(read.as_ref(), Some(&held));
    let decision =
        Decision::new("grace", "checked the list", now).unwrap_or_else(|e| panic!("{e}"));
    let denied = store
        .decide_quarantine(&id, QuarantineStatus::Denied, &decision)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(denied, Decided::Now(q) if q.status == QuarantineStatus::Denied));
    let again = store
        .decide_quarantine(&id, QuarantineStatus::Approved, &decision)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        matches!(again, Decided::Before(q) if q.status == QuarantineStatus::Denied && q.runs.len() == 30)
    );
    // Holding it again (a retried sweep) does not reopen it.
    let put_again = store
        .put_quarantine(&held)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(put_again.status, QuarantineStatus::Denied);
    let all = store.quarantines().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 1);
    assert_eq!(
        store
            .decide_quarantine("q-none", QuarantineStatus::Approved, &decision)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Decided::Unknown
    );
}
