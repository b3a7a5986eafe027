//! End to end: one termination through the `deprov` binary against a real OpenLDAP slapd
//! and a real PostgreSQL, checked from outside with the servers' own tools: the person can
//! no longer bind or log in, her open database session is gone, no group lists her, the
//! audit trail verifies, and a second delivery of the same event starts nothing.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use deprov_tests::postgres::Postgres;
use deprov_tests::slapd::Slapd;
use deprov_tests::{deprov_binary, output_text};
use serde_json::json;

const ADA_LDAP_PASSWORD: &str = "ada-ldap-Secret-1";
const ADA_PG_PASSWORD: &str = "ada-pg-Secret-1";

fn text(output: &Output) -> String {
    output_text(output)
}

fn policy(slapd: &Slapd, pg: &Postgres) -> String {
    format!(
        r#"
version = "e2e-directories-1"

[systems.directory]
kind = "ldap"
secret = "e2e/ldap"
concurrency = 4
connection = {{ url = "{ldap_url}", base_dn = "{people_dn}", group_base_dn = "{groups_dn}", dialect = "openldap", timeout_secs = 10 }}

[systems.warehouse]
kind = "postgres"
secret = "e2e/postgres"
concurrency = 4
connection = {{ host = "{pg_host}", port = {pg_port}, reassign_owned_to = "archive", timeout_secs = 10 }}

[scenarios.termination]
stages = ["sessions", "disable", "entitlements", "delete"]
delays = {{ delete = "30d" }}
"#,
        ldap_url = slapd.url,
        people_dn = slapd.people_dn,
        groups_dn = slapd.groups_dn,
        pg_host = pg.host,
        pg_port = pg.port,
    )
}

fn event() -> String {
    json!({
        "event_id": "hr-e2e-directories-1",
        "source": "workday",
        "kind": "termination",
        "termination_type": "voluntary",
        "person": {
            "id": "E0815",
            "email": "ada@example.com",
            "display_name": "Ada Lovelace",
            "usernames": {"directory": "ada", "warehouse": "ada"},
            "roles": [],
        },
        "effective_at": chrono::Utc::now().to_rfc3339(),
        "reason": "resignation",
        "requested_by": "hr-integration",
    })
    .to_string()
}

/// Runs `deprov` with both systems' secrets in the environment.
async fn deprov(dir: &Path, slapd: &Slapd, pg: &Postgres, args: &[&str]) -> Output {
    tokio::process::Command::new(deprov_binary())
        .args(args)
        .env(
            "DEPROV_SECRET_E2E_LDAP",
            json!({"bind_dn": slapd.admin_dn, "password": slapd.admin_password}).to_string(),
        )
        .env(
            "DEPROV_SECRET_E2E_POSTGRES",
            json!({"user": pg.admin_user, "password": pg.admin_password}).to_string(),
        )
        .env_remove("DEPROV_DB")
        .env_remove("DEPROV_SECRETS")
        .current_dir(dir)
        .output()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_termination_locks_ldap_and_postgres_ends_the_session_and_strips_every_group() {
    let (slapd, pg) = (
        tokio::task::spawn_blocking(Slapd::start),
        Postgres::start().await,
    );
    let slapd = slapd.await.unwrap();

    // LDAP: ada with a real password, in two groups beside a colleague.
    let ada = slapd.add_user("ada", "ada@example.com", ADA_LDAP_PASSWORD);
    let grace = slapd.add_user("grace", "grace@example.com", "grace-Secret-1");
    let groups = [
        slapd.add_group("engineering", &[&ada, &grace]),
        slapd.add_group("vpn-users", &[&ada, &grace]),
    ];
    assert!(slapd.bind_as(&ada, ADA_LDAP_PASSWORD), "ada binds before");

    // PostgreSQL: a login role in two group roles, and a session she holds open.
    // The role that would receive what ada owns when she is deleted.
    pg.create_group_role("archive").await;
    pg.create_login_role("ada", ADA_PG_PASSWORD).await;
    for group in ["analysts", "writers"] {
        pg.create_group_role(group).await;
        pg.grant(group, "ada").await;
    }
    assert!(pg.connect_as("ada", ADA_PG_PASSWORD).await.is_ok());
    let session = pg.open_session("ada", ADA_PG_PASSWORD).await;
    assert!(session.is_alive().await);
    assert_eq!(pg.backends("ada").await, 1);

    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    let event_path = dir.path().join("termination.json");
    let db = dir.path().join("deprov.db");
    std::fs::write(&policy_path, policy(&slapd, &pg)).unwrap();
    std::fs::write(&event_path, event()).unwrap();
    let run_args = [
        "run",
        "--policy",
        policy_path.to_str().unwrap(),
        "--event",
        event_path.to_str().unwrap(),
        "--db",
        db.to_str().unwrap(),
    ];

    let first = deprov(dir.path(), &slapd, &pg, &run_args).await;
    let first_text = text(&first);
    assert_eq!(first.status.code(), Some(0), "{first_text}");
    assert!(
        first_text.contains("the next stage is due"),
        "the delayed delete keeps the run waiting:\n{first_text}"
    );

    // LDAP: the real password no longer binds; no group lists her; the colleague stays.
    assert!(
        !slapd.bind_as(&ada, ADA_LDAP_PASSWORD),
        "ada still binds:\n{first_text}"
    );
    assert_eq!(
        slapd.values(&ada, "pwdAccountLockedTime"),
        ["000001010000Z"]
    );
    for group in &groups {
        let members = slapd.members(group);
        assert!(
            !members.iter().any(|m| m.eq_ignore_ascii_case(&ada)),
            "{group} still lists ada: {members:?}"
        );
        assert!(members.contains(&grace), "{group} lost grace: {members:?}");
    }
    assert!(slapd.entry(&ada).is_some(), "the delete is 30 days away");

    // PostgreSQL: a new login is refused, the open session is gone, no group role lists her.
    assert!(
        pg.connect_as("ada", ADA_PG_PASSWORD).await.is_err(),
        "ada can still log in to PostgreSQL:\n{first_text}"
    );
    assert!(
        session.closed_within(Duration::from_secs(10)).await,
        "ada's open session survived"
    );
    assert_eq!(pg.backends("ada").await, 0);
    let role = pg
        .role("ada")
        .await
        .expect("the role exists until the delete");
    assert!(!role.can_login);
    assert!(role.member_of.is_empty(), "{:?}", role.member_of);

    // The audit trail verifies.
    let verify = deprov(
        dir.path(),
        &slapd,
        &pg,
        &["audit", "verify", "--db", db.to_str().unwrap()],
    )
    .await;
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    // The same event again: recognised, nothing new started.
    let second = deprov(dir.path(), &slapd, &pg, &run_args).await;
    let second_text = text(&second);
    assert_eq!(second.status.code(), Some(0), "{second_text}");
    assert!(
        second_text.contains("received before"),
        "the second delivery is not recognised:\n{second_text}"
    );
    assert!(!slapd.bind_as(&ada, ADA_LDAP_PASSWORD));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rehire_before_the_delete_stage_restores_ldap_and_postgres_from_the_pre_state() {
    let (slapd, pg) = (
        tokio::task::spawn_blocking(Slapd::start),
        Postgres::start().await,
    );
    let slapd = slapd.await.unwrap();
    let ada = slapd.add_user("ada", "ada@example.com", ADA_LDAP_PASSWORD);
    let grace = slapd.add_user("grace", "grace@example.com", "grace-Secret-1");
    let groups = [
        slapd.add_group("engineering", &[&ada, &grace]),
        slapd.add_group("vpn-users", &[&ada, &grace]),
    ];
    pg.create_group_role("archive").await;
    pg.create_login_role("ada", ADA_PG_PASSWORD).await;
    for group in ["analysts", "writers"] {
        pg.create_group_role(group).await;
        pg.grant(group, "ada").await;
    }

    let dir = tempfile::tempdir().unwrap();
    let policy_path = dir.path().join("policy.toml");
    let db = dir.path().join("deprov.db");
    std::fs::write(&policy_path, policy(&slapd, &pg)).unwrap();
    let termination_path = dir.path().join("termination.json");
    std::fs::write(&termination_path, event()).unwrap();
    let mut rehire: serde_json::Value = serde_json::from_str(&event()).unwrap();
    rehire["event_id"] = "hr-e2e-rehire-1".into();
    rehire["kind"] = "rehire".into();
    rehire["reason"] = "offer accepted again".into();
    rehire.as_object_mut().unwrap().remove("termination_type");
    let rehire_path = dir.path().join("rehire.json");
    std::fs::write(&rehire_path, rehire.to_string()).unwrap();
    let run = |event: &'static str| {
        [
            "run",
            "--policy",
            policy_path.to_str().unwrap(),
            "--event",
            event,
            "--db",
            db.to_str().unwrap(),
        ]
    };
    let termination_path: &'static str = termination_path.to_str().unwrap().to_string().leak();
    let rehire_path: &'static str = rehire_path.to_str().unwrap().to_string().leak();

    let terminated = deprov(dir.path(), &slapd, &pg, &run(termination_path)).await;
    assert_eq!(terminated.status.code(), Some(0), "{}", text(&terminated));
    assert!(!slapd.bind_as(&ada, ADA_LDAP_PASSWORD));
    assert!(pg.connect_as("ada", ADA_PG_PASSWORD).await.is_err());

    // Rehired before the 30-day delete: the delete is cancelled and the pre-state is back.
    let rehired = deprov(dir.path(), &slapd, &pg, &run(rehire_path)).await;
    let rehired_text = text(&rehired);
    assert_eq!(rehired.status.code(), Some(0), "{rehired_text}");
    assert!(
        rehired_text.contains("Stopped the pending stages of"),
        "{rehired_text}"
    );
    assert!(
        slapd.bind_as(&ada, ADA_LDAP_PASSWORD),
        "ada binds again:\n{rehired_text}"
    );
    assert!(slapd.values(&ada, "pwdAccountLockedTime").is_empty());
    for group in &groups {
        let members = slapd.members(group);
        assert!(
            members.iter().any(|m| m.eq_ignore_ascii_case(&ada)),
            "{group} does not list ada again: {members:?}"
        );
        assert!(members.contains(&grace));
    }
    assert!(
        pg.connect_as("ada", ADA_PG_PASSWORD).await.is_ok(),
        "ada cannot log in to PostgreSQL again:\n{rehired_text}"
    );
    let role = pg.role("ada").await.expect("never dropped");
    assert!(role.can_login);
    let mut member_of = role.member_of.clone();
    member_of.sort();
    assert_eq!(member_of, ["analysts", "writers"]);

    let verify = deprov(
        dir.path(),
        &slapd,
        &pg,
        &["audit", "verify", "--db", db.to_str().unwrap()],
    )
    .await;
    assert_eq!(verify.status.code(), Some(0), "{}", text(&verify));

    // The person's trail tells the whole story, in order.
    let shown = deprov(
        dir.path(),
        &slapd,
        &pg,
        &[
            "audit",
            "show",
            "--person",
            "E0815",
            "--json",
            "--db",
            db.to_str().unwrap(),
        ],
    )
    .await;
    assert_eq!(shown.status.code(), Some(0), "{}", text(&shown));
    let records: Vec<serde_json::Value> = String::from_utf8_lossy(&shown.stdout)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let kinds: Vec<&str> = records.iter().filter_map(|r| r["kind"].as_str()).collect();
    for kind in [
        "plan_recorded",
        "stage_deferred",
        "run_cancelled",
        "runs_stopped",
        "run_finished",
    ] {
        assert!(kinds.contains(&kind), "no {kind} in {kinds:?}");
    }
    let actions: Vec<&str> = records
        .iter()
        .filter(|r| r["kind"] == "task_completed")
        .filter_map(|r| r["detail"]["action"].as_str())
        .collect();
    for action in [
        "disable",
        "remove_entitlement",
        "delete",
        "enable",
        "restore_entitlement",
    ] {
        assert!(actions.contains(&action), "no {action} task in {actions:?}");
    }
}
