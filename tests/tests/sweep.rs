//! `deprov sweep`, `deprov approve` and `deprov deny` as an operator runs them, against a
//! real PostgreSQL server whose login roles are the accounts and whose `logins` table is
//! the last activity the connector reads (`last_activity_query`).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};

use deprov_tests::postgres::Postgres;
use deprov_tests::{deprov_binary, output_text};
use rusqlite::Connection;
use serde_json::Value;

fn deprov(pg: &Postgres, dir: &Path, args: &[&str]) -> Output {
    let secret = serde_json::json!({"user": pg.admin_user, "password": pg.admin_password});
    Command::new(deprov_binary())
        .args(args)
        .env(
            "DEPROV_SECRET_DEPROV_CONNECTOR_WAREHOUSE",
            secret.to_string(),
        )
        .env_remove("DEPROV_DB")
        .current_dir(dir)
        .output()
        .unwrap()
}

fn text(output: &Output) -> String {
    output_text(output)
}

/// A policy with one PostgreSQL system whose threshold is 35 days (the sweep's default is
/// 90), an inactivity scenario that disables, and `extra` appended.
fn policy(pg: &Postgres, extra: &str) -> String {
    format!(
        r#"
version = "sweep-test-1"

[systems.warehouse]
kind = "postgres"
secret = "deprov/connector/warehouse"
inactive_after = "35d"
connection = {{ host = "{host}", port = {port}, timeout_secs = 20, last_activity_query = "SELECT who, at FROM logins" }}

[scenarios.inactivity]
stages = ["disable"]

[[exemptions]]
account = "svc_*"
reason = "batch service accounts log in through a pooler that records no activity"
{extra}
"#,
        host = pg.host,
        port = pg.port
    )
}

/// Creates `names` as login roles, with their last login `idle_days` ago (none for `None`).
async fn seed(pg: &Postgres, roles: &[(String, Option<i64>)]) {
    let mut sql = String::from("CREATE TABLE IF NOT EXISTS logins (who text, at timestamptz);\n");
    for (name, idle) in roles {
        sql.push_str(&format!("CREATE ROLE \"{name}\" LOGIN;\n"));
        if let Some(days) = idle {
            sql.push_str(&format!(
                "INSERT INTO logins VALUES ('{name}', now() - interval '{days} days' - interval '1 hour');\n"
            ));
        }
    }
    pg.execute(&sql).await;
}

async fn can_login(pg: &Postgres) -> BTreeSet<String> {
    let rows = pg
        .admin("postgres")
        .await
        .query(
            "SELECT rolname::text FROM pg_roles WHERE rolcanlogin AND rolname !~ '^pg_'",
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|row| row.get(0)).collect()
}

fn count(db: &Path, sql: &str) -> i64 {
    Connection::open(db)
        .unwrap()
        .query_row(sql, [], |row| row.get(0))
        .unwrap()
}

#[tokio::test]
async fn a_sweep_of_1000_accounts_reports_exactly_the_40_inactive_and_changes_nothing() {
    let pg = Postgres::start().await;
    // 1,000 accounts. 995 people: 40 idle past the 35-day threshold (every 25th from the
    // first; the first only one day past it), every 7th with no login recorded, the rest
    // used within the last 35 days. And 5 exempt service accounts idle for a year.
    let mut roles: Vec<(String, Option<i64>)> = (1..=995)
        .map(|n: i64| {
            let idle = match n {
                1 => Some(36),
                n if n % 25 == 1 => Some(40 + n / 25),
                n if n % 7 == 0 => None,
                n => Some(n % 35),
            };
            (format!("user{n:04}"), idle)
        })
        .collect();
    roles.extend((1..=5).map(|n| (format!("svc_batch{n}"), Some(365))));
    assert_eq!(roles.len(), 1000);
    seed(&pg, &roles).await;
    let expected: BTreeSet<String> = (1..=995)
        .filter(|n| n % 25 == 1)
        .map(|n| format!("user{n:04}"))
        .collect();
    assert_eq!(expected.len(), 40);
    let before = can_login(&pg).await;
    assert_eq!(before.len(), 1001, "1,000 seeded roles and the admin");

    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        policy(&pg, "[sweep]\nmax_runs_per_sweep = 100\n"),
    )
    .unwrap();
    let db = dir.path().join("deprov.db");
    let output = deprov(
        &pg,
        dir.path(),
        &[
            "sweep",
            "--policy",
            policy_path.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--report",
            "--json",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    let found: BTreeSet<String> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["kind"] == "inactive")
        .map(|f| f["username"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(found, expected);
    let system = &report["systems"][0];
    assert_eq!(system["system"], "warehouse");
    assert_eq!(system["accounts"], 1001);
    assert_eq!(system["inactive"], 40);
    assert_eq!(system["exempted"], 5, "the svc_ accounts are exempt");
    assert_eq!(system["threshold"], "35 days");
    assert_eq!(report["brake"]["verdict"], "clear");
    for finding in report["findings"].as_array().unwrap() {
        assert_eq!(finding["acts"], true);
        assert_eq!(finding["event"]["kind"], "inactivity");
    }

    // The table form says the same; a report changes and records nothing.
    let output = deprov(
        &pg,
        dir.path(),
        &[
            "sweep",
            "--policy",
            policy_path.to_str().unwrap(),
            "--db",
            db.to_str().unwrap(),
            "--report",
        ],
    );
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("40 inactive, 0 orphans; 40 run(s) to start."),
        "{printed}"
    );
    assert!(printed.contains("user0976"), "{printed}");
    assert!(
        printed.contains("Report only: nothing was changed or recorded."),
        "{printed}"
    );
    assert_eq!(can_login(&pg).await, before);
    assert!(!db.exists(), "a report creates no database");
}

#[tokio::test]
async fn a_sweep_that_would_disable_60_percent_is_quarantined_until_approved() {
    let pg = Postgres::start().await;
    // 49 people and the admin: 30 idle for 100 days (60% of the 50 listed accounts).
    let roles: Vec<(String, Option<i64>)> = (1..=49)
        .map(|n| (format!("m{n:02}"), Some(if n <= 30 { 100 } else { 2 })))
        .collect();
    seed(&pg, &roles).await;
    let idle: BTreeSet<String> = (1..=30).map(|n| format!("m{n:02}")).collect();
    let before = can_login(&pg).await;
    assert_eq!(before.len(), 50);

    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    std::fs::write(
        &policy_path,
        policy(&pg, "[sweep]\nmax_runs_per_sweep = 100\n"),
    )
    .unwrap();
    let (policy_arg, db) = (policy_path.to_str().unwrap(), dir.path().join("deprov.db"));
    let db_arg = db.to_str().unwrap();

    // A dry run says what would happen and changes nothing.
    let output = deprov(
        &pg,
        dir.path(),
        &["sweep", "--policy", policy_arg, "--db", db_arg, "--dry-run"],
    );
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains("The brake would quarantine these runs"),
        "{printed}"
    );
    assert!(
        printed.contains("Dry run: nothing was changed or recorded."),
        "{printed}"
    );
    assert_eq!(can_login(&pg).await, before);

    // The sweep is quarantined: exit code 6, an alert on stderr, nothing changed.
    let output = deprov(
        &pg,
        dir.path(),
        &["sweep", "--policy", policy_arg, "--db", db_arg],
    );
    let alert = String::from_utf8_lossy(&output.stderr).to_string();
    assert_eq!(output.status.code(), Some(6), "{}", text(&output));
    assert!(alert.contains("QUARANTINED q-"), "{alert}");
    assert!(
        alert.contains("30 run(s) held, nothing executed"),
        "{alert}"
    );
    assert!(
        alert.contains("the sweep would act on 30 of the 50 accounts of \"warehouse\" (60.0%), more than limits.max_percent = 10"),
        "{alert}"
    );
    assert_eq!(can_login(&pg).await, before, "a quarantine changes nothing");
    assert_eq!(count(&db, "SELECT count(*) FROM runs"), 0);
    let id: String = Connection::open(&db)
        .unwrap()
        .query_row(
            "SELECT quarantine_id FROM quarantines WHERE status = 'pending'",
            [],
            |row| row.get(0),
        )
        .unwrap();
    assert!(alert.contains(&format!("deprov approve {id}")), "{alert}");
    // One record in the quarantine's chain and one in each held run's.
    let quarantined =
        "SELECT count(*) FROM audit WHERE json_extract(body, '$.kind') = 'quarantined'";
    assert_eq!(count(&db, quarantined), 31);

    // Tomorrow's sweep finds the same accounts: the same quarantine, nothing new.
    let output = deprov(
        &pg,
        dir.path(),
        &["sweep", "--policy", policy_arg, "--db", db_arg],
    );
    assert_eq!(output.status.code(), Some(6), "{}", text(&output));
    assert_eq!(count(&db, "SELECT count(*) FROM quarantines"), 1);
    assert_eq!(count(&db, quarantined), 31);

    // Releasing needs who and why.
    let output = deprov(
        &pg,
        dir.path(),
        &["approve", &id, "--by", " ", "--reason", "", "--db", db_arg],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("--reason must say why"),
        "{}",
        text(&output)
    );
    assert_eq!(can_login(&pg).await, before);

    // Approved: the held runs start and the 30 idle accounts are disabled, no other.
    let output = deprov(
        &pg,
        dir.path(),
        &[
            "approve",
            &id,
            "--by",
            "grace@example.com",
            "--reason",
            "HR confirmed the 30 contractors left",
            "--db",
            db_arg,
        ],
    );
    let printed = text(&output);
    assert_eq!(output.status.code(), Some(0), "{printed}");
    assert!(
        printed.contains(&format!("Released quarantine {id}: 30 run(s) started.")),
        "{printed}"
    );
    let after = can_login(&pg).await;
    let disabled: BTreeSet<String> = before.difference(&after).cloned().collect();
    assert_eq!(disabled, idle);
    assert_eq!(
        count(&db, "SELECT count(*) FROM runs WHERE status = 'completed'"),
        30
    );
    let approved =
        "SELECT count(*) FROM audit WHERE json_extract(body, '$.kind') = 'quarantine_approved'";
    assert_eq!(count(&db, approved), 31);
    let by = "SELECT count(*) FROM audit WHERE json_extract(body, '$.detail.decision.by') = 'grace@example.com'";
    assert_eq!(count(&db, by), 31);

    // The decision is final, and the whole trail verifies.
    let output = deprov(
        &pg,
        dir.path(),
        &[
            "deny", &id, "--by", "bob", "--reason", "too late", "--db", db_arg,
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("was approved already by grace@example.com"),
        "{}",
        text(&output)
    );
    let output = deprov(&pg, dir.path(), &["audit", "verify", "--db", db_arg]);
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = deprov(&pg, dir.path(), &["quarantines", "--db", db_arg]);
    let printed = text(&output);
    assert!(
        printed.contains(&id) && printed.contains("approved"),
        "{printed}"
    );
}

#[tokio::test]
async fn a_denied_quarantine_never_runs() {
    let pg = Postgres::start().await;
    let roles: Vec<(String, Option<i64>)> = (1..=9)
        .map(|n| (format!("d{n}"), Some(if n <= 6 { 200 } else { 1 })))
        .collect();
    seed(&pg, &roles).await;
    let before = can_login(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    // A system-level brake: at most 5 accounts of this system per trigger.
    std::fs::write(
        &policy_path,
        policy(&pg, "").replace(
            "inactive_after = \"35d\"",
            "inactive_after = \"35d\"\nmax_accounts = 5\nmax_percent = 100",
        ),
    )
    .unwrap();
    let (policy_arg, db) = (policy_path.to_str().unwrap(), dir.path().join("deprov.db"));
    let db_arg = db.to_str().unwrap();
    let output = deprov(
        &pg,
        dir.path(),
        &["sweep", "--policy", policy_arg, "--db", db_arg, "--json"],
    );
    assert_eq!(output.status.code(), Some(6), "{}", text(&output));
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    let quarantine = &result["quarantine"];
    assert_eq!(
        quarantine["breaches"][0]["limit"],
        "systems.warehouse.max_accounts"
    );
    let id = quarantine["quarantine_id"].as_str().unwrap();
    let output = deprov(
        &pg,
        dir.path(),
        &[
            "deny",
            id,
            "--by",
            "grace",
            "--reason",
            "a clock problem on the warehouse",
            "--db",
            db_arg,
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{}", text(&output));
    let output = deprov(
        &pg,
        dir.path(),
        &[
            "approve", id, "--by", "bob", "--reason", "please", "--db", db_arg,
        ],
    );
    assert_eq!(output.status.code(), Some(2), "{}", text(&output));
    assert!(
        text(&output).contains("was denied already by grace"),
        "{}",
        text(&output)
    );
    assert_eq!(can_login(&pg).await, before);
    assert_eq!(count(&db, "SELECT count(*) FROM runs"), 0);
    let denied =
        "SELECT count(*) FROM audit WHERE json_extract(body, '$.kind') = 'quarantine_denied'";
    assert_eq!(count(&db, denied), 7);
}
