//! The EventBridge Scheduler adapter against moto's server on a loopback port: a future run
//! becomes a one-time schedule whose target is the state machine, recorded in the runs
//! table; scheduling it again changes nothing.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_scheduler::types::{ActionAfterCompletion, FlexibleTimeWindowMode};
use chrono::{TimeZone, Utc};
use deprov_aws::scheduler::{schedule_name, Scheduled};
use deprov_aws::{load_sdk_config, tables, AwsSettings, DynamoRunStore, RunSchedules};
use deprov_core::flow::RunInput;
use deprov_core::launch::RunScheduler;
use deprov_core::testing::sample_event;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_future_run_becomes_one_schedule_targeting_the_state_machine() {
    let moto = moto().await;
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let config = load_sdk_config(&AwsSettings {
        endpoint_url: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
    })
    .await;

    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    tables::create_runs_table(&dynamo, "runs-scheduler")
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let runs = DynamoRunStore::new(dynamo.clone(), "runs-scheduler");
    let client = aws_sdk_scheduler::Client::new(&config);
    client
        .create_schedule_group()
        .name("deprov-runs-test")
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"));

    let machine = "arn:aws:states:us-east-1:123456789012:stateMachine:deprovision";
    let role = "arn:aws:iam::123456789012:role/deprov-scheduler";
    let schedules =
        RunSchedules::new(client.clone(), "deprov-runs-test", machine, role).recording_in(runs);
    let event = sample_event();
    let run_id = deprov_core::ids::run_id(&event.source, &event.event_id);
    let input = RunInput {
        event,
        dry_run: false,
    };
    let at = Utc
        .with_ymd_and_hms(2030, 11, 30, 16, 0, 0)
        .single()
        .unwrap_or_else(|| panic!("a valid time"));

    // Through the port, twice: the second delivery finds the schedule there.
    for _ in 0..2 {
        schedules
            .schedule_run(&run_id, "E1001", at.fixed_offset(), &input)
            .await
            .unwrap_or_else(|err| panic!("{err}"));
    }
    let name = schedule_name(&run_id);
    let again = schedules
        .schedule(
            &run_id,
            at,
            &serde_json::to_value(&input).unwrap_or_default(),
        )
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(again, Scheduled::AlreadyExists { name: name.clone() });

    let listed = client
        .list_schedules()
        .group_name("deprov-runs-test")
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"))
        .schedules;
    assert_eq!(listed.len(), 1);

    let schedule = client
        .get_schedule()
        .group_name("deprov-runs-test")
        .name(&name)
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"));
    assert_eq!(
        schedule.schedule_expression(),
        Some("at(2030-11-30T16:00:00)")
    );
    assert_eq!(schedule.schedule_expression_timezone(), Some("UTC"));
    assert_eq!(
        schedule.action_after_completion(),
        Some(&ActionAfterCompletion::Delete)
    );
    assert_eq!(
        schedule.flexible_time_window().map(|window| &window.mode),
        Some(&FlexibleTimeWindowMode::Off)
    );
    let target = schedule
        .target()
        .unwrap_or_else(|| panic!("the schedule has no target"));
    assert_eq!(target.arn(), machine);
    assert_eq!(target.role_arn(), role);
    let sent: serde_json::Value = serde_json::from_str(target.input().unwrap_or_default())
        .unwrap_or_else(|err| panic!("target input is not JSON: {err}"));
    assert_eq!(
        RunInput::parse(&sent).unwrap_or_else(|err| panic!("{err}")),
        input
    );

    let recorded = dynamo
        .get_item()
        .table_name("runs-scheduler")
        .key("pk", AttributeValue::S(format!("SCHEDULE#{run_id}")))
        .key("sk", AttributeValue::S("SCHEDULE".into()))
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"))
        .item
        .unwrap_or_else(|| panic!("the schedule was not recorded"));
    assert_eq!(
        recorded.get("start_at").and_then(|v| v.as_s().ok()),
        Some(&"2030-11-30T16:00:00.000000Z".to_string())
    );
    assert_eq!(
        recorded.get("person").and_then(|v| v.as_s().ok()),
        Some(&"E1001".to_string())
    );

    // A group that does not exist is an error (AWS answers ResourceNotFoundException, which
    // the adapter words as "schedule group … does not exist"; moto answers a bare 500).
    assert!(RunSchedules::new(client, "no-such-group", machine, role)
        .schedule(&run_id, at, &serde_json::json!({}))
        .await
        .is_err());
}

/// The intake's decisions through the real adapters: a termination dated tomorrow becomes
/// an EventBridge schedule, HR's corrected date moves it (the old schedule is deleted and
/// its record says why), and a cancel removes it; nothing is left pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_dated_tomorrow_schedules_moves_and_vanishes_on_cancel() {
    use deprov_core::intake::{accept, Delivery, Deps, Settings};
    use deprov_core::launch::MemoryLauncher;
    use deprov_core::signature;
    use deprov_core::testing::{ManualClock, MemorySecrets};

    let moto = moto().await;
    std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
    let config = load_sdk_config(&AwsSettings {
        endpoint_url: Some(moto.endpoint.clone()),
        region: Some("us-east-1".into()),
    })
    .await;
    let dynamo = aws_sdk_dynamodb::Client::new(&config);
    tables::create_runs_table(&dynamo, "runs-moves")
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let runs = DynamoRunStore::new(dynamo.clone(), "runs-moves");
    let client = aws_sdk_scheduler::Client::new(&config);
    client
        .create_schedule_group()
        .name("deprov-moves")
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"));
    let machine = "arn:aws:states:us-east-1:123456789012:stateMachine:deprovision";
    let role = "arn:aws:iam::123456789012:role/deprov-scheduler";
    let now = Utc::now();
    let deps = Deps {
        runs: runs.clone(),
        secrets: MemorySecrets::default().with("hook", "key", "k-123"),
        starter: MemoryLauncher::default(),
        scheduler: RunSchedules::new(client.clone(), "deprov-moves", machine, role)
            .recording_in(runs.clone()),
        clock: ManualClock::at(now),
        settings: Settings::generic("hook"),
    };
    let post = |event: serde_json::Value| {
        let deps = &deps;
        async move {
            let body = serde_json::to_vec(&event).unwrap_or_default();
            let mut headers = http::HeaderMap::new();
            headers.insert(
                signature::HEADER,
                signature::sign(b"k-123", now.timestamp(), &body)
                    .parse()
                    .unwrap_or_else(|err| panic!("{err}")),
            );
            accept(
                deps,
                Delivery {
                    method: &http::Method::POST,
                    path: "/events",
                    query: None,
                    headers: &headers,
                    body: &body,
                },
            )
            .await
        }
    };
    let offset = chrono::FixedOffset::west_opt(5 * 3600).unwrap_or_else(|| panic!("offset"));
    let termination = |id: &str, days: i64| {
        serde_json::json!({
            "event_id": id, "source": "workday", "kind": "termination",
            "termination_type": "voluntary",
            "person": {"id": "E77", "email": "mo@example.com"},
            "effective_at": (now + chrono::Duration::days(days)).with_timezone(&offset).to_rfc3339(),
            "requested_by": "hr"
        })
    };
    let exists = |run_id: String| {
        let client = client.clone();
        async move {
            client
                .get_schedule()
                .group_name("deprov-moves")
                .name(schedule_name(&run_id))
                .send()
                .await
                .is_ok()
        }
    };
    let first = deprov_core::ids::run_id("workday", "t-1");
    let second = deprov_core::ids::run_id("workday", "t-2");

    let reply = post(termination("t-1", 1)).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    assert_eq!(reply.body["status"], "scheduled");
    assert!(reply.body["start_at"]
        .as_str()
        .unwrap_or_default()
        .ends_with("-05:00"));
    assert!(exists(first.clone()).await);

    let reply = post(termination("t-2", 4)).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    assert_eq!(reply.body["replaced"], serde_json::json!([first.clone()]));
    assert!(
        !exists(first.clone()).await,
        "the old schedule was not deleted"
    );
    assert!(exists(second.clone()).await);
    let pending = deps
        .scheduler
        .pending_for("E77")
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].run_id, second);
    assert_eq!(pending[0].start_at.offset().local_minus_utc(), -5 * 3600);
    let removal = runs
        .schedule_removal(&first)
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .unwrap_or_default();
    assert!(removal.starts_with("moved:"), "{removal}");

    let mut cancel = termination("t-3", 0);
    cancel["kind"] = serde_json::json!("cancel");
    if let Some(object) = cancel.as_object_mut() {
        object.remove("termination_type");
    }
    let reply = post(cancel).await;
    assert_eq!(reply.status.as_u16(), 202, "{}", reply.body);
    assert_eq!(
        reply.body["unscheduled"],
        serde_json::json!([second.clone()])
    );
    assert!(
        !exists(second).await,
        "the schedule did not vanish on cancel"
    );
    assert!(deps
        .scheduler
        .pending_for("E77")
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .is_empty());
}
