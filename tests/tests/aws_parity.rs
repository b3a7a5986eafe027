//! Parity: one scenario through the local orchestrator and through the ASL on emulated
//! AWS gives the same tasks, outcomes and audit content (timestamps aside). Each side has
//! its own SCIM target seeded alike; the targets' generated ids are replaced by names
//! before comparing.

// Set-up helpers of this test file panic on failure like the tests themselves.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration as Days, SecondsFormat, Utc};
use deprov_core::audit::AuditRecord;
use deprov_core::ports::{AuditLog, SystemClock};
use deprov_core::{ids, LifecycleEvent, Policy};
use deprov_demo::ScimProvider;
use deprov_local::{Engine, EngineOptions, LocalSecrets, SqliteStore};
use deprov_tests::aws::{Deployment, Emulator};
use serde_json::{json, Value};

const TOKEN: &str = "parity-token";

fn policy(base_url: &str) -> String {
    format!(
        r#"
version = "parity-1"
[systems.app]
kind = "scim"
secret = "deprov/connector/app"
match_by = "username"
connection = {{ base_url = "{base_url}", timeout_secs = 10 }}
[scenarios.termination]
stages = ["sessions", "disable", "entitlements", "credentials"]
"#
    )
}

fn event(event_id: &str) -> Value {
    json!({
        "event_id": event_id,
        "source": "workday",
        "kind": "termination",
        "termination_type": "voluntary",
        "person": {"id": "E7001", "email": "cy@example.com", "usernames": {"app": "cy.p"}},
        "effective_at": (Utc::now() - Days::minutes(1)).to_rfc3339_opts(SecondsFormat::Secs, true),
        "requested_by": "hr-integration"
    })
}

/// A target with the person in two groups, and another person in one of them; `refuse`
/// makes it refuse every change to the person.
async fn target(refuse: bool) -> (ScimProvider, BTreeMap<String, String>) {
    let target = ScimProvider::start("app", TOKEN).await.unwrap();
    let cy = target.add_user("cy.p", "cy@example.com", "Cy P", true);
    let dee = target.add_user("dee.q", "dee@example.com", "Dee Q", true);
    let eng = target.add_group("eng", &[&cy, &dee]);
    let ops = target.add_group("ops", &[&cy]);
    if refuse {
        target.protect_user(&cy);
    }
    let names = BTreeMap::from([
        (cy, "<user cy.p>".to_string()),
        (dee, "<user dee.q>".to_string()),
        (eng, "<group eng>".to_string()),
        (ops, "<group ops>".to_string()),
    ]);
    (target, names)
}

/// The records with the target's ids and the task ids derived from them replaced by
/// names, and the times and the target's resource versions (ETags, which count every
/// change the target made in its own order) left out.
fn normalized(records: &[AuditRecord], names: &BTreeMap<String, String>) -> Vec<Value> {
    let mut names = names.clone();
    for record in records {
        if let (Some(task_id), Some(action)) = (
            record.body.task_id.as_ref(),
            record.body.detail.get("action").and_then(Value::as_str),
        ) {
            let target = record.body.detail["target"]["name"].as_str().unwrap_or("-");
            names.insert(task_id.clone(), format!("<task {action} {target}>"));
        }
    }
    let mut bodies: Vec<Value> = records
        .iter()
        .map(|record| {
            let mut text = serde_json::to_string(&record.body).unwrap();
            for (id, name) in &names {
                text = text.replace(id.as_str(), name);
            }
            let mut body: Value = serde_json::from_str(&text).unwrap();
            strip_times(&mut body);
            body
        })
        .collect();
    // The targets list a person's groups in the order of their generated ids, so the
    // order of entitlements (and of a stage's tasks) is the target's, not the runtime's.
    for run in
        bodies.chunk_by_mut(|a, b| a["kind"] == "task_completed" && b["kind"] == "task_completed")
    {
        run.sort_by_key(Value::to_string);
    }
    bodies
}

fn strip_times(value: &mut Value) {
    match value {
        Value::Object(object) => {
            for key in ["entitlements", "tasks"] {
                if let Some(Value::Array(items)) = object.get_mut(key) {
                    items.sort_by_key(Value::to_string);
                }
            }
            for key in [
                "at",
                "finished_at",
                "created_at",
                "updated_at",
                "checked_at",
                "read_at",
                "lastModified",
                "created",
                "version",
            ] {
                object.remove(key);
            }
            for child in object.values_mut() {
                strip_times(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(strip_times),
        _ => {}
    }
}

async fn local_run(event: &Value, refuse: bool) -> Vec<Value> {
    let (target, names) = target(refuse).await;
    let policy = Policy::parse(&policy(&target.base_url())).unwrap();
    let secrets = Arc::new(LocalSecrets::default().with("deprov/connector/app", "token", TOKEN));
    let connectors = BTreeMap::from([(
        "app".to_string(),
        deprov_connectors::build("app", &policy.systems["app"], secrets).unwrap(),
    )]);
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(SqliteStore::open(&dir.path().join("parity.db")).unwrap());
    let engine = Engine::start(
        policy,
        connectors,
        store.clone(),
        store.clone(),
        Arc::new(SystemClock),
        EngineOptions::default(),
        None,
    );
    let event = LifecycleEvent::parse(event.to_string().as_bytes()).unwrap();
    let report = engine.submit(&event).await.unwrap();
    engine.shutdown();
    normalized(&store.records(&report.run_id).await.unwrap(), &names)
}

async fn aws_run(event: &Value, refuse: bool) -> Vec<Value> {
    let (target, names) = target(refuse).await;
    let mut aws = Emulator::deploy(Deployment {
        policy: &policy(&target.base_url()),
        kinds: &["scim"],
        secrets: &[(
            "deprov/connector/app",
            json!({ "token": TOKEN }).to_string(),
        )],
        webhook_key: "parity-webhook-key",
    })
    .await;
    let run_id = ids::run_id("workday", event["event_id"].as_str().unwrap());
    let arn = aws
        .start_execution(&run_id, &json!({ "event": event }))
        .await;
    aws.finished(&arn).await;
    normalized(&aws.audit_log().records(&run_id).await.unwrap(), &names)
}

async fn assert_parity(event_id: &str, refuse: bool) {
    let event = event(event_id);
    let (local, aws) = tokio::join!(local_run(&event, refuse), aws_run(&event, refuse));
    assert!(!local.is_empty());
    for (index, (local, aws)) in local.iter().zip(&aws).enumerate() {
        assert_eq!(
            local,
            aws,
            "record {index} differs\nlocal: {}\naws:   {}",
            serde_json::to_string_pretty(local).unwrap(),
            serde_json::to_string_pretty(aws).unwrap()
        );
    }
    assert_eq!(local.len(), aws.len(), "the trails have different lengths");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_verified_termination_leaves_the_same_trail_locally_and_on_aws() {
    assert_parity("hr-parity-1", false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refused_termination_escalates_the_same_way_locally_and_on_aws() {
    assert_parity("hr-parity-2", true).await;
}
