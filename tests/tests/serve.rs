//! `deprov serve` as an HR system meets it: the real binary on a free 127.0.0.1 port, real
//! HTTP, a real SCIM server (scim2-server) behind the policy, and the SQLite file it
//! leaves. Every rejection starts nothing; a termination dated ahead schedules, moves and
//! vanishes; a shutdown answers the request in flight and keeps pending schedules, which
//! the next start runs.
#![allow(clippy::unwrap_used)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use chrono::{FixedOffset, Utc};
use deprov_core::signature;
use deprov_tests::{free_port, Scim2Server};
use rusqlite::Connection;
use serde_json::{json, Value};

const KEY: &str = "serve-test-webhook-key";

fn deprov_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let binary = dir.join("deprov");
    assert!(
        binary.exists(),
        "{} is missing: run `cargo build -p deprov` (tests/run.sh does)",
        binary.display()
    );
    binary
}

/// A running `deprov serve`; killed when dropped (a test that failed midway).
struct Serve {
    child: Child,
    port: u16,
    url: String,
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Serve {
    fn start(dir: &Path, scim_token: &str, extra: &[&str]) -> Serve {
        let port = free_port().unwrap();
        let mut args = vec![
            "serve".to_string(),
            "--policy".into(),
            dir.join("policy.toml").to_string_lossy().into_owned(),
            "--db".into(),
            dir.join("deprov.db").to_string_lossy().into_owned(),
            "--port".into(),
            port.to_string(),
            "--tick-ms".into(),
            "200".into(),
        ];
        args.extend(extra.iter().map(|arg| arg.to_string()));
        let child = Command::new(deprov_binary())
            .args(&args)
            .env("DEPROV_SECRET_EXAMPLE_APP", scim_token)
            .env("DEPROV_SECRET_DEPROV_WEBHOOK", KEY)
            .env("DEPROV_LOG", "info")
            .env_remove("DEPROV_DB")
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::from(
                std::fs::File::create(dir.join(format!("serve-{port}.log"))).unwrap(),
            ))
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "deprov serve did not listen: {}",
                std::fs::read_to_string(dir.join(format!("serve-{port}.log"))).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Serve {
            child,
            port,
            url: format!("http://127.0.0.1:{port}"),
        }
    }

    /// SIGTERM; the exit status and what it printed.
    fn terminate(mut self) -> (Option<i32>, String) {
        // It may have been signalled (and stopped) already.
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        let code = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status.code();
            }
            assert!(Instant::now() < deadline, "deprov serve did not stop");
            std::thread::sleep(Duration::from_millis(50));
        };
        let mut out = String::new();
        if let Some(mut stdout) = self.child.stdout.take() {
            stdout.read_to_string(&mut out).unwrap();
        }
        (code, out)
    }
}

fn workspace(scim_base_url: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let policy = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/policy.toml"),
    )
    .unwrap()
    .replace("http://127.0.0.1:8000/v2", scim_base_url);
    std::fs::write(dir.path().join("policy.toml"), policy).unwrap();
    dir
}

fn event(id: &str, kind: &str, person: &str, username: &str, at: chrono::DateTime<Utc>) -> Value {
    let offset = FixedOffset::east_opt(3600).unwrap();
    let mut event = json!({
        "event_id": id, "source": "workday", "kind": kind,
        "person": {"id": person, "email": format!("{username}@example.com"), "usernames": {"app": username}},
        "effective_at": at.with_timezone(&offset).to_rfc3339(),
        "requested_by": "hr-integration"
    });
    if kind == "termination" {
        event["termination_type"] = json!("voluntary");
    }
    event
}

async fn post(url: &str, path: &str, body: &[u8], signed_at: i64) -> (u16, Value) {
    let response = reqwest::Client::new()
        .post(format!("{url}{path}"))
        .header(
            signature::HEADER,
            signature::sign(KEY.as_bytes(), signed_at, body),
        )
        .header("content-type", "application/json")
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    assert_eq!(
        response.headers()["content-type"],
        "application/json",
        "every answer is JSON"
    );
    (status, response.json().await.unwrap())
}

async fn post_event(url: &str, event: &Value) -> (u16, Value) {
    let body = serde_json::to_vec(event).unwrap();
    post(url, "/events", &body, Utc::now().timestamp()).await
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

async fn wait_until_disabled(server: &Scim2Server, id: &str, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        if server.get_user(id).await.unwrap()["active"] == json!(false) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "user {id} was not disabled within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_start_nothing_and_a_dated_termination_schedules_moves_and_vanishes() {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jlee@example.com").await;
    let sam = server.create_user("sam", "sam@example.com").await;
    let space = workspace(&server.base_url);
    let db = space.path().join("deprov.db");
    let serve = Serve::start(space.path(), &server.token, &[]);
    let url = serve.url.clone();
    let now = Utc::now();

    // Every rejection, over real HTTP: a precise JSON error, and nothing started.
    let good = serde_json::to_vec(&event("hr-1", "termination", "E1", "jlee", now)).unwrap();
    let (status, body) = post(&url, "/events", &good, now.timestamp() - 400).await;
    assert_eq!(status, 401, "{body}");
    assert!(body["error"].as_str().unwrap().contains("s old"), "{body}");
    let response = reqwest::Client::new()
        .post(format!("{url}/events"))
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["error"].as_str().unwrap().contains("missing"),
        "{body}"
    );
    let mut tampered = good.clone();
    let last = tampered.len() - 2;
    tampered[last] = b' ';
    let response = reqwest::Client::new()
        .post(format!("{url}/events"))
        .header(
            signature::HEADER,
            signature::sign(KEY.as_bytes(), now.timestamp(), &good),
        )
        .body(tampered)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 401);
    let (status, body) = post(&url, "/events", &vec![b' '; 70_000], now.timestamp()).await;
    assert_eq!(status, 413, "{body}");
    let (status, body) = post(&url, "/events", b"{\"event_id\": ", now.timestamp()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["problems"][0]["path"], "$");
    let mut invalid = event("hr-1", "termination", "E1", "jlee", now);
    invalid["kind"] = json!("fired");
    let (status, body) = post_event(&url, &invalid).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["problems"][0]["path"], "$.kind");
    let (status, body) = post(&url, "/sources/workday", &good, now.timestamp()).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = post(&url, "/sources/bamboohr", &good, now.timestamp()).await;
    assert_eq!(status, 404, "an unconfigured source");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM runs"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM schedules"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM events"), 0);

    // A dry run says what would happen and changes nothing.
    let dry = reqwest::Client::new()
        .post(format!("{url}/events?dry_run=true"))
        .header(
            signature::HEADER,
            signature::sign(KEY.as_bytes(), now.timestamp(), &good),
        )
        .body(good.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(dry.status().as_u16(), 200);
    let dry: Value = dry.json().await.unwrap();
    assert_eq!(dry["status"], "would_start", "{dry}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM events"), 0);

    // A termination effective now runs against the real SCIM server.
    let (status, body) = post(&url, "/events", &good, now.timestamp()).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "started");
    wait_until_disabled(&server, &jordan, Duration::from_secs(30)).await;
    // The same delivery again is a duplicate; the same id with other content a conflict.
    let (status, body) = post(&url, "/events", &good, now.timestamp()).await;
    assert_eq!((status, body["status"].clone()), (200, json!("duplicate")));
    let mut replayed = event("hr-1", "termination", "E1", "jlee", now);
    replayed["reason"] = json!("edited");
    let (status, body) = post_event(&url, &replayed).await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(count(&db, "SELECT COUNT(*) FROM runs"), 1);

    // Sam's last day is tomorrow: scheduled, with the offset HR gave.
    let tomorrow = now + chrono::Duration::days(1);
    let (status, body) =
        post_event(&url, &event("hr-2", "termination", "E2", "sam", tomorrow)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "scheduled");
    assert!(body["start_at"].as_str().unwrap().ends_with("+01:00"));
    // HR moves it to the day after: one pending schedule, the old one removed with why.
    let later = now + chrono::Duration::days(2);
    let (status, body) = post_event(&url, &event("hr-3", "termination", "E2", "sam", later)).await;
    assert_eq!(status, 202, "{body}");
    let second = body["run_id"].as_str().unwrap().to_string();
    assert_eq!(body["replaced"].as_array().unwrap().len(), 1, "{body}");
    let listed = Command::new(deprov_binary())
        .args(["schedules", "--json", "--db", db.to_str().unwrap()])
        .output()
        .unwrap();
    let listed: Value = serde_json::from_slice(&listed.stdout).unwrap();
    let states: Vec<(String, String)> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["state"].as_str().unwrap().to_string(),
                s["effective_at"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(states.len(), 2, "{listed}");
    assert!(states.contains(&(
        "pending".into(),
        later
            .with_timezone(&FixedOffset::east_opt(3600).unwrap())
            .to_rfc3339()
    )));
    assert!(listed.to_string().contains("moved:"), "{listed}");
    // The termination is cancelled: nothing pending, Sam untouched.
    let (status, body) = post_event(&url, &event("hr-4", "cancel", "E2", "sam", now)).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["unscheduled"], json!([second]));
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM schedules WHERE state = 'pending'"
        ),
        0
    );
    assert_eq!(server.get_user(&sam).await.unwrap()["active"], json!(true));

    let (code, out) = serve.terminate();
    assert_eq!(code, Some(0), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_the_request_in_flight_and_the_next_start_runs_what_is_pending() {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jlee@example.com").await;
    let space = workspace(&server.base_url);
    let db = space.path().join("deprov.db");
    let serve = Serve::start(space.path(), &server.token, &[]);

    // A termination whose time comes in about a minute: the schedule must outlive the
    // process that took it.
    let at = Utc::now() + chrono::Duration::seconds(64);
    let body = serde_json::to_vec(&event("hr-9", "termination", "E9", "jlee", at)).unwrap();
    let header = signature::sign(KEY.as_bytes(), Utc::now().timestamp(), &body);

    // The request is in flight (headers and half the body sent) when SIGTERM arrives.
    let mut stream = TcpStream::connect(("127.0.0.1", serve.port)).unwrap();
    write!(
        stream,
        "POST /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n{}: {header}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        signature::HEADER,
        body.len()
    )
    .unwrap();
    let half = body.len() / 2;
    stream.write_all(&body[..half]).unwrap();
    stream.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let pid = serve.child.id();
    assert!(Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap()
        .success());
    std::thread::sleep(Duration::from_millis(500));
    // No new connections are taken any more…
    assert!(
        TcpStream::connect(("127.0.0.1", serve.port)).is_err(),
        "still accepting after SIGTERM"
    );
    // …but the one in flight is finished and answered.
    stream.write_all(&body[half..]).unwrap();
    let mut response = String::new();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    assert!(response.contains("\"scheduled\""), "{response}");
    let (code, out) = serve.terminate();
    assert_eq!(code, Some(0), "{out}");
    assert!(out.contains("1 pending schedule(s) kept"), "{out}");
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM schedules WHERE state = 'pending'"
        ),
        1
    );
    assert_eq!(
        server.get_user(&jordan).await.unwrap()["active"],
        json!(true)
    );

    // The next start runs it when its time comes.
    let serve = Serve::start(space.path(), &server.token, &[]);
    wait_until_disabled(&server, &jordan, Duration::from_secs(120)).await;
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM schedules WHERE state = 'started'"
        ),
        1
    );
    let (code, out) = serve.terminate();
    assert_eq!(code, Some(0), "{out}");
}
