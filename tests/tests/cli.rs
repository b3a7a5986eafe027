//! The `deprov` command as an operator uses it, against a real SCIM server (scim2-server)
//! and the SQLite file it leaves behind: runs, re-runs, refused input, tampering with the
//! audit trail, and a process killed mid-run.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use deprov_demo::ScimProvider;
use deprov_tests::Scim2Server;
use deprov_tests::{deprov_binary, output_text};
use rusqlite::Connection;
use serde_json::json;

struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Workspace {
        Workspace {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn db(&self) -> PathBuf {
        self.path("deprov.db")
    }

    /// `deprov run` of `event` under `policy` against this workspace's database.
    fn run(&self, token: &str, policy: &Path, event: &Path) -> Output {
        let db = self.db();
        let args = [
            "run",
            "--policy",
            path_str(policy),
            "--event",
            path_str(event),
            "--db",
            path_str(&db),
        ];
        self.deprov(token, &args)
    }

    /// Runs deprov with the secret of the example policy set to `token`.
    fn deprov(&self, token: &str, args: &[&str]) -> Output {
        Command::new(deprov_binary())
            .args(args)
            .env("DEPROV_SECRET_EXAMPLE_APP", token)
            .env_remove("DEPROV_DB")
            .current_dir(self.dir.path())
            .output()
            .unwrap()
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn text(output: &Output) -> String {
    output_text(output)
}

fn examples() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples")
}

/// The example policy pointed at `base_url`.
fn example_policy(base_url: &str) -> String {
    std::fs::read_to_string(examples().join("policy.toml"))
        .unwrap()
        .replace("http://127.0.0.1:8000/v2", base_url)
}

fn example_event(name: &str) -> String {
    std::fs::read_to_string(examples().join("events").join(name)).unwrap()
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn run_disables_on_the_real_server_and_a_second_run_changes_nothing() {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jordan.lee@example.com").await;
    let other = server.create_user("sam", "sam.rivera@example.com").await;
    let engineering = server.create_group("engineering", &[&jordan, &other]).await;
    let space = Workspace::new();
    let policy = space.write("policy.toml", &example_policy(&server.base_url));
    let event = space.write("event.json", &example_event("termination.json"));
    let db = space.db();

    let first = space.run(&server.token, &policy, &event);
    assert_eq!(first.status.code(), Some(0), "{}", text(&first));
    // Read back with a plain HTTP GET: disabled, out of the group; the other person untouched.
    let user = server.get_user(&jordan).await.unwrap();
    assert_eq!(user["active"], json!(false), "{user}");
    assert_eq!(
        server.group_member_ids(&engineering).await,
        vec![other.clone()]
    );
    assert_eq!(
        server.get_user(&other).await.unwrap()["active"],
        json!(true)
    );
    // The delete stage waits 30 days after the effective time.
    assert!(text(&first).contains("waits until"), "{}", text(&first));

    // The same delivery again: recognised, nothing new started, and it says so.
    let second = space.run(&server.token, &policy, &event);
    assert_eq!(second.status.code(), Some(0), "{}", text(&second));
    assert!(
        text(&second).contains("received before"),
        "{}",
        text(&second)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM runs"), 1);

    // A new event about the same person finds everything already done and proves it.
    let again = example_event("termination.json").replace("hr-2026-000123", "hr-2026-000199");
    let again = space.write("again.json", &again);
    let third = space.run(&server.token, &policy, &again);
    assert_eq!(third.status.code(), Some(0), "{}", text(&third));
    assert!(
        text(&third).contains("1 due tasks verified (1 already in place, 0 changed)"),
        "{}",
        text(&third)
    );

    let verify = space.deprov(
        &server.token,
        &["audit", "verify", "--db", db.to_str().unwrap()],
    );
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    assert!(
        text(&verify).contains("Audit trail intact: 2 runs"),
        "{}",
        text(&verify)
    );
    let show = space.deprov(
        &server.token,
        &[
            "audit",
            "show",
            "--person",
            "E2001",
            "--db",
            db.to_str().unwrap(),
        ],
    );
    assert!(
        text(&show).contains("remove_entitlement jlee [engineering] → verified"),
        "{}",
        text(&show)
    );
}

#[tokio::test]
async fn malformed_input_is_refused_with_its_fields_and_only_a_rejection_is_recorded() {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jordan.lee@example.com").await;
    let space = Workspace::new();
    let policy = space.write("policy.toml", &example_policy(&server.base_url));
    let db = space.db();

    let bad_event = examples().join("invalid-event.json");
    let output = space.run(&server.token, &policy, &bad_event);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    for field in [
        "$.event_id",
        "$.termination_type",
        "$.effective_at",
        "$.person.email",
        "Nothing was executed",
    ] {
        assert!(
            text(&output).contains(field),
            "{field} missing: {}",
            text(&output)
        );
    }

    let bad_policy = space.write(
        "bad.toml",
        &example_policy(&server.base_url).replace("concurrency = 8", "concurrency = 0"),
    );
    let event = space.write("event.json", &example_event("termination.json"));
    let output = space.run(&server.token, &bad_policy, &event);
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("line 12, systems.app.concurrency: is 0; use 1 to 256"),
        "{}",
        text(&output)
    );
    let check = space.deprov(
        &server.token,
        &["policy", "check", bad_policy.to_str().unwrap()],
    );
    assert_eq!(check.status.code(), Some(2), "{}", text(&check));

    // Nothing ran: the account is untouched and the database holds only the two rejections.
    assert_eq!(
        server.get_user(&jordan).await.unwrap()["active"],
        json!(true)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM runs"), 0);
    assert_eq!(count(&db, "SELECT COUNT(*) FROM tasks"), 0);
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit WHERE json_extract(body, '$.kind') = 'event_rejected'"
        ),
        2
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM audit"), 2);
}

/// A database with one finished run, for tampering.
async fn audited_run(space: &Workspace) -> PathBuf {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jordan.lee@example.com").await;
    server.create_group("engineering", &[&jordan]).await;
    server.create_group("sales", &[&jordan]).await;
    let policy = space.write("policy.toml", &example_policy(&server.base_url));
    let event = space.write("event.json", &example_event("termination.json"));
    let db = space.db();
    let output = space.run(&server.token, &policy, &event);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    db
}

#[tokio::test]
async fn tampering_with_any_audit_row_is_caught_and_named() {
    let space = Workspace::new();
    let db = audited_run(&space).await;
    let rows = count(&db, "SELECT COUNT(*) FROM audit");
    assert!(rows >= 5, "{rows} records");
    let tamperings: [(&str, &str, &str); 4] = [
        (
            "update",
            "UPDATE audit SET body = json_set(body, '$.detail.status', 'verified-by-nobody') WHERE seq = 3",
            "broken at seq 3",
        ),
        ("delete", "DELETE FROM audit WHERE seq = 2", "broken at seq 2"),
        (
            "reorder",
            "UPDATE audit SET seq = -1 WHERE seq = 2; UPDATE audit SET seq = 2 WHERE seq = 4; UPDATE audit SET seq = 4 WHERE seq = -1;",
            "broken at seq 2",
        ),
        ("truncate", "DELETE FROM audit WHERE seq = (SELECT MAX(seq) FROM audit)", "records were cut off"),
    ];
    for (name, sql, expected) in tamperings {
        let copy = space.path(&format!("tampered-{name}.db"));
        // A consistent copy of the WAL database.
        Connection::open(&db)
            .unwrap()
            .execute("VACUUM INTO ?1", [copy.to_str().unwrap()])
            .unwrap();
        Connection::open(&copy).unwrap().execute_batch(sql).unwrap();
        let output = space.deprov("", &["audit", "verify", "--db", copy.to_str().unwrap()]);
        assert_eq!(output.status.code(), Some(5), "{name}: {}", text(&output));
        assert!(
            text(&output).contains(expected),
            "{name}: expected `{expected}` in {}",
            text(&output)
        );
    }
    let output = space.deprov("", &["audit", "verify", "--db", db.to_str().unwrap()]);
    assert_eq!(
        output.status.code(),
        Some(0),
        "the original is intact: {}",
        text(&output)
    );
}

// Multi-threaded: the SCIM app is served by this test's runtime while deprov runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_killed_mid_run_resumes_without_applying_anything_twice() {
    // A slow SCIM app, so the kill lands mid-run.
    let provider = ScimProvider::start("slow", "slow-token").await.unwrap();
    let user = provider.add_user("jlee", "jordan.lee@example.com", "Jordan Lee", true);
    let groups: u64 = 12;
    for index in 0..groups {
        provider.add_group(&format!("group-{index:02}"), &[&user]);
    }
    provider.set_latency(Duration::from_millis(120));
    let space = Workspace::new();
    let policy = example_policy(&provider.base_url())
        .replace("concurrency = 8", "concurrency = 1")
        .replace("rate_limit_per_second = 20\n", "");
    let policy = space.write("policy.toml", &policy);
    let event = space.write("event.json", &example_event("termination.json"));
    let db = space.db();
    let args = [
        "run",
        "--policy",
        policy.to_str().unwrap(),
        "--event",
        event.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ];

    let mut child = Command::new(deprov_binary())
        .args(args)
        .env("DEPROV_SECRET_EXAMPLE_APP", "slow-token")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once a few entitlement removals are recorded (and while others are in flight).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let done = Connection::open(&db)
            .and_then(|c| {
                c.query_row(
                    "SELECT COUNT(*) FROM tasks WHERE outcome IS NOT NULL",
                    [],
                    |row| row.get::<_, i64>(0),
                )
            })
            .unwrap_or(0);
        if done >= 4 {
            break;
        }
        assert!(Instant::now() < deadline, "the run made no progress");
        assert!(
            child.try_wait().unwrap().is_none(),
            "deprov finished before it could be killed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let finished_before = count(&db, "SELECT COUNT(*) FROM tasks WHERE outcome IS NOT NULL");
    assert!(
        finished_before < 1 + groups as i64,
        "killed too late to prove anything"
    );

    // Restarted with the same event: the run resumes where it stopped.
    let rerun = space.run("slow-token", &policy, &event);
    assert_eq!(rerun.status.code(), Some(0), "{}", text(&rerun));
    assert_eq!(provider.user(&user).unwrap()["active"], json!(false));
    for index in 0..groups {
        let group = provider
            .group(
                &provider
                    .find_group_id(&format!("group-{index:02}"))
                    .unwrap(),
            )
            .unwrap();
        assert!(
            group["members"]
                .as_array()
                .is_none_or(|members| members.is_empty()),
            "{group}"
        );
    }
    // One PATCH per change: the disable and one per group, none repeated.
    assert_eq!(provider.patches_of_user(&user), 1);
    assert_eq!(provider.requests("PATCH"), 1 + groups);
    // One completion record per task, and the chain holds.
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM audit WHERE json_extract(body, '$.kind') = 'task_completed'"
        ),
        1 + groups as i64
    );
    assert_eq!(
        count(
            &db,
            "SELECT COUNT(*) FROM (SELECT key FROM audit GROUP BY run_id, key HAVING COUNT(*) > 1)"
        ),
        0
    );
    let verify = space.deprov("", &["audit", "verify", "--db", db.to_str().unwrap()]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
    // Plan, stage and summary records besides the task completions.
    assert!(count(&db, "SELECT COUNT(*) FROM audit") >= 1 + groups as i64 + 3);
}

#[tokio::test]
async fn a_run_held_for_approval_changes_nothing_until_approved_and_a_denied_one_never_runs() {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jordan.lee@example.com").await;
    let space = Workspace::new();
    let policy = example_policy(&server.base_url).replacen(
        "match_by = \"username\"",
        "match_by = \"username\"\napproval = true",
        1,
    );
    let policy = space.write("policy.toml", &policy);
    let event = space.write("event.json", &example_event("termination.json"));
    let db = space.db();

    let held = space.run(&server.token, &policy, &event);
    assert_eq!(held.status.code(), Some(0), "{}", text(&held));
    assert!(
        text(&held).contains("waits for approval"),
        "{}",
        text(&held)
    );
    assert_eq!(
        server.get_user(&jordan).await.unwrap()["active"],
        json!(true)
    );
    let run_id: String = Connection::open(&db)
        .unwrap()
        .query_row("SELECT run_id FROM runs", [], |row| row.get(0))
        .unwrap();

    // No reason, no decision.
    let refused = space.deprov(
        &server.token,
        &[
            "approve",
            &run_id,
            "--by",
            "it-lead",
            "--reason",
            " ",
            "--db",
            path_str(&db),
        ],
    );
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert_eq!(
        server.get_user(&jordan).await.unwrap()["active"],
        json!(true)
    );

    let approved = space.deprov(
        &server.token,
        &[
            "approve",
            &run_id,
            "--by",
            "it-lead@example.com",
            "--reason",
            "ticket IT-42",
            "--db",
            path_str(&db),
        ],
    );
    assert_eq!(approved.status.code(), Some(0), "{}", text(&approved));
    assert_eq!(
        server.get_user(&jordan).await.unwrap()["active"],
        json!(false)
    );
    let show = space.deprov(
        &server.token,
        &[
            "audit",
            "show",
            "--person",
            "E2001",
            "--json",
            "--db",
            path_str(&db),
        ],
    );
    let shown = String::from_utf8_lossy(&show.stdout).to_string();
    assert!(shown.contains("\"approval_requested\""), "{shown}");
    assert!(shown.contains("it-lead@example.com"), "{shown}");

    // Another person's run, denied: nothing changes, ever.
    let sam = server.create_user("sam", "sam.rivera@example.com").await;
    let other = example_event("termination.json")
        .replace("hr-2026-000123", "hr-2026-000777")
        .replace("jordan.lee@example.com", "sam.rivera@example.com")
        .replace("\"jlee\"", "\"sam\"")
        .replace("E2001", "E2002");
    let other = space.write("other.json", &other);
    let held = space.run(&server.token, &policy, &other);
    assert_eq!(held.status.code(), Some(0), "{}", text(&held));
    let other_run: String = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT run_id FROM runs WHERE person_id = 'E2002'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    let denied = space.deprov(
        &server.token,
        &[
            "deny",
            &other_run,
            "--by",
            "ciso",
            "--reason",
            "wrong person",
            "--db",
            path_str(&db),
        ],
    );
    assert_eq!(denied.status.code(), Some(0), "{}", text(&denied));
    assert!(
        text(&denied).contains("nothing was changed"),
        "{}",
        text(&denied)
    );
    assert_eq!(server.get_user(&sam).await.unwrap()["active"], json!(true));
    let verify = space.deprov(&server.token, &["audit", "verify", "--db", path_str(&db)]);
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));
}

#[tokio::test]
async fn many_events_from_one_file_run_together_and_an_invalid_one_stops_them_all() {
    let server = Scim2Server::start().await;
    let jordan = server.create_user("jlee", "jordan.lee@example.com").await;
    let morgan = server.create_user("mkim", "morgan.kim@example.com").await;
    let avery = server
        .create_user("apatel", "avery.patel@example.com")
        .await;
    let stays = server.create_user("sam", "sam.rivera@example.com").await;
    let space = Workspace::new();
    let policy = space.write("policy.toml", &example_policy(&server.base_url));
    // Effective now, so the delete stage (7 days later) is still waiting whatever today is.
    let layoff = std::fs::read_to_string(examples().join("events").join("layoff.jsonl"))
        .unwrap()
        .replace(
            "2026-11-25T17:00:00+01:00",
            &chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        );
    let db = space.db();
    let run_many = |events: &Path, json: bool| {
        let mut args = vec![
            "run",
            "--policy",
            path_str(&policy),
            "--events",
            path_str(events),
            "--db",
            path_str(&db),
        ];
        if json {
            args.push("--json");
        }
        space.deprov(&server.token, &args)
    };

    // One bad line among good ones: every problem named by its line, nothing executed.
    let mut broken: Vec<&str> = layoff.lines().collect();
    broken.insert(1, r#"{"event_id": "x", "kind": "termination"}"#);
    let broken = space.write("broken.jsonl", &broken.join("\n"));
    let refused = run_many(&broken, false);
    assert_eq!(refused.status.code(), Some(2), "{}", text(&refused));
    assert!(text(&refused).contains("line 2"), "{}", text(&refused));
    assert!(text(&refused).contains("Nothing was executed."));
    assert_eq!(count(&db, "SELECT COUNT(*) FROM runs"), 0);
    for user in [&jordan, &morgan, &avery] {
        assert_eq!(server.get_user(user).await.unwrap()["active"], json!(true));
    }

    // The three people of the layoff, the first given twice: three runs, four answers.
    let mut lines: Vec<&str> = layoff.lines().collect();
    lines.push(lines[0]);
    let events = space.write("layoff.jsonl", &lines.join("\n"));
    let done = run_many(&events, true);
    assert_eq!(done.status.code(), Some(0), "{}", text(&done));
    let runs: serde_json::Value =
        serde_json::from_slice(&done.stdout).unwrap_or_else(|err| panic!("{err}: {}", text(&done)));
    let runs = runs.as_array().unwrap();
    assert_eq!(runs.len(), 4);
    let people: Vec<&str> = runs
        .iter()
        .map(|r| r["person_id"].as_str().unwrap())
        .collect();
    assert_eq!(people, ["E2001", "E2002", "E2004", "E2001"]);
    assert_eq!(runs[3]["duplicate"], json!(true));
    assert_eq!(runs[3]["run_id"], runs[0]["run_id"]);
    for run in &runs[..3] {
        assert_eq!(run["status"], json!("waiting"), "{run}");
        assert!(run["verified"].as_u64().unwrap() >= 1, "{run}");
        assert_eq!(run["escalated"], json!(0), "{run}");
    }
    for user in [&jordan, &morgan, &avery] {
        assert_eq!(server.get_user(user).await.unwrap()["active"], json!(false));
    }
    assert_eq!(
        server.get_user(&stays).await.unwrap()["active"],
        json!(true)
    );
    assert_eq!(count(&db, "SELECT COUNT(*) FROM runs"), 3);
    // Three runs, and the record the refused line left.
    let verify = space.deprov(&server.token, &["audit", "verify", "--db", path_str(&db)]);
    assert!(
        text(&verify).contains("Audit trail intact: 4 runs"),
        "{}",
        text(&verify)
    );
}
