//! Every sample payload in `events/` (for `cargo lambda invoke`, the console and the
//! README) reads as the type its function takes, so the samples cannot drift from the
//! code.

use std::path::PathBuf;

use deprov_core::flow::{AuditRequest, RunInput};
use deprov_core::ports::TaskMessage;
use serde_json::Value;

fn sample(name: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../events")
        .join(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{name} is not JSON: {err}"))
}

#[test]
fn every_sample_event_reads_as_its_functions_input() {
    let directory = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../events");
    let mut checked = 0;
    for entry in std::fs::read_dir(&directory).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".json") {
            continue;
        }
        let value = sample(&name);
        match name.as_str() {
            "plan.json" | "console-termination.json" | "console-dry-run.json" => {
                RunInput::parse(&value).unwrap_or_else(|err| panic!("{name}: {err}"));
            }
            "worker.json" => {
                for record in value["Records"].as_array().unwrap() {
                    let body = record["body"].as_str().unwrap();
                    let message: TaskMessage =
                        serde_json::from_str(body).unwrap_or_else(|err| panic!("{name}: {err}"));
                    assert!(message.task_token.is_some(), "{name}: a task token");
                }
            }
            "intake.json" => {
                let body = value["body"].as_str().unwrap();
                deprov_core::LifecycleEvent::parse(body.as_bytes())
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
                assert!(value["headers"]["deprov-signature"].is_string());
            }
            "sweep.json" => assert_eq!(value["detail-type"], "Scheduled Event"),
            audit if audit.starts_with("audit-") => {
                serde_json::from_value::<AuditRequest>(value)
                    .unwrap_or_else(|err| panic!("{name}: {err}"));
            }
            other => panic!("events/{other} has no check here; add one"),
        }
        checked += 1;
    }
    assert!(checked >= 10, "only {checked} samples found");
}

/// Every connector kind has a task queue in the template, and the plan function is told
/// its URL: a kind without one could be planned but never run on AWS.
#[test]
fn the_template_has_a_task_queue_for_every_connector_kind() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../template.yaml");
    let template = std::fs::read_to_string(&path)
        .unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    let queue_urls = template
        .lines()
        .find(|line| line.trim_start().starts_with("DEPROV_QUEUE_URLS:"))
        .expect("the plan function's DEPROV_QUEUE_URLS");
    for kind in deprov_connectors::KINDS {
        assert!(
            queue_urls.contains(&format!("\"{kind}\":\"${{")),
            "template.yaml: DEPROV_QUEUE_URLS has no queue for connector kind \"{kind}\""
        );
    }
}
