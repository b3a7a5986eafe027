//! End to end on emulated AWS: the real ASL executed by moto, the real function binaries
//! (through cargo lambda's Runtime API), real DynamoDB/SQS/Secrets Manager/Step Functions
//! APIs (moto), and a real SCIM 2.0 target.

use chrono::{Duration as Days, SecondsFormat, Utc};
use deprov_core::audit::{verify_chain, AuditKind, AuditRecord};
use deprov_core::ports::{AuditLog, RunStatus, RunStore};
use deprov_core::{ids, signature};
use deprov_demo::ScimProvider;
use deprov_tests::aws::{workspace_root, Deployment, Emulator};
use deprov_tests::Scim2Server;
use serde_json::{json, Value};

const WEBHOOK_KEY: &str = "e2e-webhook-key-0123456789";

/// One SCIM system, disable + remove groups right away (no delayed stage, so the
/// execution finishes within the test).
fn policy(base_url: &str) -> String {
    format!(
        r#"
version = "e2e-1"
[systems.app]
kind = "scim"
secret = "deprov/connector/app"
match_by = "username"
connection = {{ base_url = "{base_url}", timeout_secs = 10 }}
[scenarios.termination]
stages = ["disable", "entitlements"]
"#
    )
}

fn termination(event_id: &str, username: &str, email: &str) -> Value {
    json!({
        "event_id": event_id,
        "source": "workday",
        "kind": "termination",
        "termination_type": "involuntary",
        "person": {"id": format!("P-{username}"), "email": email, "usernames": {"app": username}},
        "effective_at": (Utc::now() - Days::minutes(5)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "requested_by": "hr-integration"
    })
}

/// An API Gateway HTTP API request carrying `body`, signed with `key`.
fn webhook(body: &str, key: &[u8]) -> Value {
    let header = signature::sign(key, Utc::now().timestamp(), body.as_bytes());
    json!({
        "version": "2.0",
        "routeKey": "POST /events",
        "rawPath": "/events",
        "rawQueryString": "",
        "headers": {"content-type": "application/json", "deprov-signature": header},
        "requestContext": {
            "accountId": "123456789012", "apiId": "e2e", "domainName": "e2e.local",
            "http": {"method": "POST", "path": "/events", "protocol": "HTTP/1.1", "sourceIp": "127.0.0.1", "userAgent": "e2e"},
            "requestId": "e2e", "routeKey": "POST /events", "stage": "$default",
            "time": "26/Nov/2026:00:00:00 +0000", "timeEpoch": 0
        },
        "body": body,
        "isBase64Encoded": false
    })
}

fn execution_arn(aws: &Emulator, run_id: &str) -> String {
    format!(
        "{}:{run_id}",
        aws.state_machine_arn
            .replacen(":stateMachine:", ":execution:", 1)
    )
}

async fn verified_chain(aws: &Emulator, run_id: &str) -> Vec<AuditRecord> {
    let audit = aws.audit_log();
    let records = audit.records(run_id).await.expect("audit records");
    let head = audit.head(run_id).await.expect("audit head");
    verify_chain(run_id, &records, head.as_ref())
        .unwrap_or_else(|err| panic!("the audit chain of {run_id} does not verify: {err:?}"));
    records
}

fn kinds(records: &[AuditRecord]) -> Vec<AuditKind> {
    records.iter().map(|r| r.body.kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signed_hr_termination_disables_the_person_once_and_leaves_a_verified_trail() {
    let server = Scim2Server::start().await;
    let ada = server.create_user("ada.l", "ada@example.com").await;
    let eng = server.create_group("eng", &[&ada]).await;
    let mut aws = Emulator::deploy(Deployment {
        policy: &policy(&server.base_url),
        kinds: &["scim"],
        secrets: &[(
            "deprov/connector/app",
            json!({"token": server.token}).to_string(),
        )],
        webhook_key: WEBHOOK_KEY,
    })
    .await;

    // A bad signature: 401, nothing started.
    let body = termination("hr-e2e-1", "ada.l", "ada@example.com").to_string();
    let (_, forged) = aws.invoke("intake", &webhook(&body, b"not-the-key")).await;
    assert_eq!(forged["statusCode"], 401, "{forged}");
    assert!(aws.executions().await.is_empty());

    // The same delivery three times: one run.
    let request = webhook(&body, WEBHOOK_KEY.as_bytes());
    let mut answers = Vec::new();
    for _ in 0..3 {
        let (_, answer) = aws.invoke("intake", &request).await;
        answers.push(answer);
    }
    assert_eq!(answers[0]["statusCode"], 202, "{}", answers[0]);
    let accepted: Value = serde_json::from_str(answers[0]["body"].as_str().unwrap()).unwrap();
    let run_id = accepted["run_id"].as_str().unwrap().to_string();
    assert_eq!(run_id, ids::run_id("workday", "hr-e2e-1"));
    assert_eq!(accepted["status"], "started");
    for answer in &answers[1..] {
        let status = answer["statusCode"].as_u64().unwrap();
        assert!(status == 200 || status == 202, "{answer}");
        let again: Value = serde_json::from_str(answer["body"].as_str().unwrap()).unwrap();
        assert_eq!(again["run_id"], run_id.as_str());
    }

    let done = aws.finished(&execution_arn(&aws, &run_id)).await;
    assert_eq!(
        done.status,
        aws_sdk_sfn::types::ExecutionStatus::Succeeded,
        "error {:?} cause {:?}\nworker log:\n{}",
        done.error,
        done.cause,
        aws.function_log("worker")
    );
    assert_eq!(
        aws.executions().await.len(),
        1,
        "one run for three deliveries"
    );

    // The target, read over its own API: disabled, out of the group.
    let user = server.get_user(&ada).await.unwrap();
    assert_eq!(user["active"], false, "{user}");
    assert!(!server.group_member_ids(&eng).await.contains(&ada));

    // The trail in DynamoDB verifies and says what happened.
    let records = verified_chain(&aws, &run_id).await;
    assert_eq!(
        kinds(&records),
        [
            AuditKind::PlanRecorded,
            AuditKind::TaskCompleted,
            AuditKind::StageCompleted,
            AuditKind::TaskCompleted,
            AuditKind::StageCompleted,
            AuditKind::RunFinished
        ]
    );
    let finished = &records[records.len() - 1].body.detail;
    assert_eq!(finished["status"], "completed", "{finished}");
    let run = aws.run_store().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::Completed);
    println!(
        "state transitions for one termination with {} tasks: {}",
        run.plan.task_count(),
        aws.state_transitions(&execution_arn(&aws, &run_id)).await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_refuses_permanently_ends_the_run_escalated_not_succeeded() {
    let target = ScimProvider::start("hr-portal", "portal-token")
        .await
        .unwrap();
    let bo = target.add_user("bo.k", "bo@example.com", "Bo K", true);
    target.protect_user(&bo);
    let mut aws = Emulator::deploy(Deployment {
        policy: &policy(&target.base_url()),
        kinds: &["scim"],
        secrets: &[(
            "deprov/connector/app",
            json!({"token": "portal-token"}).to_string(),
        )],
        webhook_key: WEBHOOK_KEY,
    })
    .await;
    let body = termination("hr-e2e-2", "bo.k", "bo@example.com").to_string();
    let (_, answer) = aws
        .invoke("intake", &webhook(&body, WEBHOOK_KEY.as_bytes()))
        .await;
    assert_eq!(answer["statusCode"], 202, "{answer}");
    let run_id = ids::run_id("workday", "hr-e2e-2");

    let done = aws.finished(&execution_arn(&aws, &run_id)).await;
    assert_eq!(done.status, aws_sdk_sfn::types::ExecutionStatus::Failed);
    assert_eq!(done.error.as_deref(), Some("Deprov.Escalated"));
    assert_eq!(target.user(&bo).unwrap()["active"], true);

    let records = verified_chain(&aws, &run_id).await;
    let refused = records
        .iter()
        .find(|r| r.body.kind == AuditKind::TaskCompleted)
        .expect("a task record");
    assert_eq!(
        refused.body.detail["status"], "escalated",
        "{}",
        refused.body.detail
    );
    assert_eq!(refused.body.detail["error"]["kind"], "permanent");
    let finished = &records[records.len() - 1].body;
    assert_eq!(finished.kind, AuditKind::RunFinished);
    assert_eq!(finished.detail["status"], "escalated");
    assert!(!finished.detail["escalations"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_console_dry_run_records_the_plan_and_changes_nothing() {
    let server = Scim2Server::start().await;
    let input: Value = serde_json::from_str(
        &std::fs::read_to_string(workspace_root().join("events/console-dry-run.json")).unwrap(),
    )
    .unwrap();
    let event = &input["event"];
    let username = event["person"]["usernames"]["app"].as_str().unwrap();
    let user = server
        .create_user(username, event["person"]["email"].as_str().unwrap())
        .await;
    let mut aws = Emulator::deploy(Deployment {
        policy: &policy(&server.base_url),
        kinds: &["scim"],
        secrets: &[(
            "deprov/connector/app",
            json!({"token": server.token}).to_string(),
        )],
        webhook_key: WEBHOOK_KEY,
    })
    .await;
    let run_id = ids::run_id(
        event["source"].as_str().unwrap(),
        event["event_id"].as_str().unwrap(),
    );
    let arn = aws.start_execution(&run_id, &input).await;
    let done = aws.finished(&arn).await;
    assert_eq!(
        done.status,
        aws_sdk_sfn::types::ExecutionStatus::Succeeded,
        "{:?} {:?}",
        done.error,
        done.cause
    );
    assert_eq!(server.get_user(&user).await.unwrap()["active"], true);
    let records = verified_chain(&aws, &run_id).await;
    assert_eq!(kinds(&records), [AuditKind::PlanRecorded]);
    assert!(!records[0].body.detail["stages"]
        .as_array()
        .unwrap()
        .is_empty());
    let run = aws.run_store().get_run(&run_id).await.unwrap().unwrap();
    assert_eq!(run.status, RunStatus::DryRun);
}
