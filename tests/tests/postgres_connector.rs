//! The PostgreSQL connector against a real PostgreSQL server, each test on its own cluster.

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, PersonQuery};
use deprov_tests::postgres::{quote_ident, Postgres, RoleInfo};
use serde_json::{json, Value};

const SECRET: &str = "deprov/connector/warehouse";
const SYSTEM: &str = "warehouse";

fn config(pg: &Postgres, extra: Value) -> SystemConfig {
    let mut connection = json!({"host": pg.host, "port": pg.port, "timeout_secs": 10});
    if let (Some(connection), Some(extra)) = (connection.as_object_mut(), extra.as_object()) {
        connection.extend(extra.clone());
    }
    serde_json::from_value(json!({
        "kind": "postgres",
        "secret": SECRET,
        "connection": connection,
    }))
    .expect("system config")
}

fn connector_with(pg: &Postgres, extra: Value, password: &str) -> Arc<dyn Connector> {
    let secrets: Arc<dyn SecretSource> = Arc::new(
        MemorySecrets::default()
            .with(SECRET, "user", &pg.admin_user)
            .with(SECRET, "password", password),
    );
    deprov_connectors::build(SYSTEM, &config(pg, extra), secrets).expect("postgres connector")
}

fn connector(pg: &Postgres) -> Arc<dyn Connector> {
    connector_with(pg, json!({}), &pg.admin_password)
}

fn person(username: &str) -> PersonQuery {
    PersonQuery {
        person_id: "E1001".into(),
        email: format!("{username}@example.com"),
        username: Some(username.into()),
    }
}

fn task(action: Action, role: &str, target: Option<&str>) -> Task {
    Task {
        task_id: format!("t-{}-{role}-{}", action.as_str(), target.unwrap_or("")),
        run_id: "run-1".into(),
        system: SYSTEM.into(),
        action,
        account: AccountRef {
            id: role.into(),
            username: role.into(),
        },
        target: target.map(|group| Target {
            id: group.into(),
            name: group.into(),
            kind: "role".into(),
        }),
        person_id: "E1001".into(),
    }
}

async fn discover_one(connector: &dyn Connector, username: &str) -> Account {
    let mut accounts = connector
        .discover(&person(username))
        .await
        .expect("discover");
    assert_eq!(accounts.len(), 1, "{accounts:#?}");
    accounts.remove(0)
}

/// Applies, verifies, applies again: one change, then already done, verified both times.
async fn apply_once(connector: &dyn Connector, task: &Task) -> Value {
    let what = format!("{} {:?}", task.action.as_str(), task.target);
    assert_eq!(
        connector.apply(task).await.expect("apply"),
        Applied::Changed,
        "{what}"
    );
    let evidence = connector.verify(task).await.expect("verify");
    assert!(evidence.verified, "{what}: {}", evidence.observed);
    assert_eq!(
        connector.apply(task).await.expect("second apply"),
        Applied::AlreadyDone,
        "{what}: apply twice = one change"
    );
    let again = connector.verify(task).await.expect("verify again");
    assert!(again.verified, "{what}: {}", again.observed);
    evidence.observed
}

#[tokio::test]
async fn sessions_are_cut_and_a_disabled_role_cannot_log_in() {
    let pg = Postgres::start().await;
    pg.create_login_role("ada", "pw-ada-1").await;
    pg.create_group_role("analysts").await;
    pg.create_group_role("loaders").await;
    pg.grant("analysts", "ada").await;
    pg.grant("loaders", "ada").await;
    let connector = connector(&pg);

    let account = discover_one(&*connector, "ada").await;
    assert_eq!(account.id, "ada");
    assert_eq!(account.username, "ada");
    assert!(account.active);
    let groups: Vec<(&str, &str)> = account
        .entitlements
        .iter()
        .map(|e| (e.id.as_str(), e.kind.as_str()))
        .collect();
    assert_eq!(groups, vec![("analysts", "role"), ("loaders", "role")]);

    // An open session is cut by the sessions stage.
    let session = pg.open_session("ada", "pw-ada-1").await;
    assert!(session.is_alive().await);
    let sessions = task(Action::RevokeSessions, "ada", None);
    let observed = apply_once(&*connector, &sessions).await;
    assert!(
        session.closed_within(Duration::from_secs(5)).await,
        "the open session was terminated"
    );
    assert_eq!(observed["backends"], json!(0));
    assert_eq!(observed["role"], json!("ada"));
    assert!(!observed.to_string().contains("pw-"), "{observed}");

    // The login still works before the disable, and a session opened now is cut by it.
    pg.connect_as("ada", "pw-ada-1")
        .await
        .expect("ada can log in before the disable");
    let late = pg.open_session("ada", "pw-ada-1").await;
    let disable = task(Action::Disable, "ada", None);
    let observed = apply_once(&*connector, &disable).await;
    assert_eq!(observed["rolcanlogin"], json!(false));
    assert_eq!(observed["backends"], json!(0));
    assert!(
        late.closed_within(Duration::from_secs(5)).await,
        "a session opened before the disable does not outlive it"
    );
    assert_eq!(
        pg.role("ada").await,
        Some(RoleInfo {
            can_login: false,
            member_of: vec!["analysts".into(), "loaders".into()],
        })
    );
    let Err(refused) = pg.connect_as("ada", "pw-ada-1").await else {
        panic!("a disabled role cannot log in");
    };
    assert_eq!(
        refused.code().map(|c| c.code()),
        Some("28000"),
        "refused as not permitted to log in: {refused}"
    );
    assert!(!discover_one(&*connector, "ada").await.active);

    // A session reopened behind the connector's back (impossible now) or a disable run
    // again finds nothing to do.
    assert_eq!(
        connector.apply(&disable).await.expect("apply"),
        Applied::AlreadyDone
    );
}

#[tokio::test]
async fn memberships_are_revoked_one_by_one() {
    let pg = Postgres::start().await;
    pg.create_login_role("ada", "pw-ada-2").await;
    pg.create_login_role("bob", "pw-bob-2").await;
    for group in ["analysts", "Read Only"] {
        pg.create_group_role(group).await;
        pg.grant(group, "ada").await;
    }
    pg.grant("analysts", "bob").await;
    let connector = connector(&pg);
    let account = discover_one(&*connector, "ada").await;
    assert_eq!(account.entitlements.len(), 2);

    for entitlement in &account.entitlements {
        let revoke = task(Action::RemoveEntitlement, "ada", Some(&entitlement.id));
        let observed = apply_once(&*connector, &revoke).await;
        assert_eq!(observed["member"], json!(false), "{observed}");
        assert_eq!(observed["group"], json!(entitlement.id));
    }
    assert_eq!(pg.role("ada").await.map(|r| r.member_of), Some(Vec::new()));
    assert_eq!(
        pg.role("bob").await.map(|r| r.member_of),
        Some(vec!["analysts".to_string()]),
        "other members keep theirs"
    );
    assert!(discover_one(&*connector, "ada")
        .await
        .entitlements
        .is_empty());

    // A group that does not exist (any more) is already done.
    let gone = task(Action::RemoveEntitlement, "ada", Some("no_such_group"));
    assert_eq!(
        connector.apply(&gone).await.expect("apply"),
        Applied::AlreadyDone
    );
    assert!(connector.verify(&gone).await.expect("verify").verified);
}

#[tokio::test]
async fn delete_reassigns_what_the_role_owns_in_every_database_then_drops_it() {
    let pg = Postgres::start().await;
    pg.create_database("app").await;
    pg.create_group_role("data_owner").await;
    pg.create_login_role("ada", "pw-ada-3").await;
    pg.create_group_role("analysts").await;
    pg.grant("analysts", "ada").await;
    pg.create_table_owned_by("postgres", "ada_notes", "ada")
        .await;
    pg.create_table_owned_by("app", "ada_reports", "ada").await;
    // A privilege granted to her on someone else's table goes with DROP OWNED.
    pg.execute_in("app", "CREATE TABLE shared_facts (id int)")
        .await;
    pg.execute_in("app", "GRANT SELECT ON shared_facts TO ada")
        .await;
    let session = pg.open_session("ada", "pw-ada-3").await;

    let connector = connector_with(
        &pg,
        json!({"databases": ["postgres", "app"], "reassign_owned_to": "data_owner"}),
        &pg.admin_password,
    );
    let delete = task(Action::Delete, "ada", None);
    let observed = apply_once(&*connector, &delete).await;
    assert_eq!(observed["exists"], json!(false), "{observed}");
    assert_eq!(pg.role("ada").await, None, "the role is gone");
    assert!(session.closed_within(Duration::from_secs(5)).await);
    assert_eq!(
        pg.table_owner("postgres", "ada_notes").await.as_deref(),
        Some("data_owner")
    );
    assert_eq!(
        pg.table_owner("app", "ada_reports").await.as_deref(),
        Some("data_owner")
    );
    assert!(pg.table_exists("app", "shared_facts").await);
    assert!(connector
        .discover(&person("ada"))
        .await
        .expect("discover")
        .is_empty());
}

#[tokio::test]
async fn delete_names_the_setting_to_fix_when_the_role_owns_objects_elsewhere() {
    let pg = Postgres::start().await;
    pg.create_database("app").await;
    pg.create_group_role("data_owner").await;
    pg.create_login_role("bob", "pw-bob-4").await;
    pg.create_table_owned_by("app", "bob_data", "bob").await;

    let only_postgres = connector_with(
        &pg,
        json!({"reassign_owned_to": "data_owner"}),
        &pg.admin_password,
    );
    let err = only_postgres
        .apply(&task(Action::Delete, "bob", None))
        .await
        .expect_err("bob still owns a table in app");
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains("2BP01"), "{text}");
    assert!(
        text.contains("systems.warehouse.connection.databases"),
        "{text}"
    );
    assert!(pg.role("bob").await.is_some(), "nothing dropped");
    assert!(
        !only_postgres
            .verify(&task(Action::Delete, "bob", None))
            .await
            .expect("verify")
            .verified
    );

    let no_heir = connector(&pg);
    let err = no_heir
        .apply(&task(Action::Delete, "bob", None))
        .await
        .expect_err("no reassign_owned_to");
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err}");
    assert!(err
        .to_string()
        .contains("systems.warehouse.connection.reassign_owned_to is required"));
}

#[tokio::test]
async fn a_missing_role_is_already_done_for_every_action() {
    let pg = Postgres::start().await;
    pg.create_group_role("data_owner").await;
    let connector = connector_with(
        &pg,
        json!({"reassign_owned_to": "data_owner"}),
        &pg.admin_password,
    );
    assert!(connector
        .discover(&person("ghost"))
        .await
        .expect("discover")
        .is_empty());
    for task in [
        task(Action::RevokeSessions, "ghost", None),
        task(Action::Disable, "ghost", None),
        task(Action::RemoveEntitlement, "ghost", Some("data_owner")),
        task(Action::Delete, "ghost", None),
    ] {
        assert_eq!(
            connector.apply(&task).await.expect("apply"),
            Applied::AlreadyDone,
            "{}",
            task.action.as_str()
        );
        let evidence = connector.verify(&task).await.expect("verify");
        assert!(evidence.verified, "{}", evidence.observed);
        assert_eq!(evidence.observed["exists"], json!(false));
    }
}

#[tokio::test]
async fn a_wrong_admin_password_is_unauthorized_naming_the_secret() {
    let pg = Postgres::start().await;
    pg.create_login_role("ada", "pw-ada-5").await;
    let wrong = "wrong-password-7f3a9c";
    let connector = connector_with(&pg, json!({}), wrong);
    let err = connector
        .discover(&person("ada"))
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err}");
    let text = err.to_string();
    assert!(text.contains(SECRET), "{text}");
    assert!(text.contains("\"password\""), "{text}");
    assert!(text.contains("28P01"), "{text}");
    assert!(!text.contains(wrong), "{text}");
    assert!(!text.contains(&pg.admin_password), "{text}");
    let err = connector
        .apply(&task(Action::Disable, "ada", None))
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err}");
    assert_eq!(pg.role("ada").await.map(|r| r.can_login), Some(true));
}

#[tokio::test]
async fn names_cannot_inject_sql() {
    let pg = Postgres::start().await;
    pg.execute("CREATE TABLE x (id int)").await;
    pg.create_group_role("data_owner").await;
    let evil = "bob\"; DROP TABLE x; --";
    let evil_group = "g'); DROP TABLE x; --";
    pg.create_login_role(evil, "pw-evil-6").await;
    pg.create_group_role(evil_group).await;
    pg.grant(evil_group, evil).await;
    pg.create_login_role("bob", "pw-bob-6").await;
    let connector = connector_with(
        &pg,
        json!({"reassign_owned_to": "data_owner"}),
        &pg.admin_password,
    );

    for probe in ["x' OR '1'='1", "bob' --", "%", "bob\""] {
        assert!(
            connector
                .discover(&person(probe))
                .await
                .expect("discover")
                .is_empty(),
            "{probe}"
        );
    }
    let account = discover_one(&*connector, evil).await;
    assert_eq!(account.id, evil);
    assert_eq!(account.entitlements[0].id, evil_group);

    let _session = pg.open_session(evil, "pw-evil-6").await;
    for task in [
        task(Action::RevokeSessions, evil, None),
        task(Action::Disable, evil, None),
        task(Action::RemoveEntitlement, evil, Some(evil_group)),
        task(Action::Delete, evil, None),
    ] {
        apply_once(&*connector, &task).await;
    }
    assert!(pg.table_exists("postgres", "x").await, "table x survives");
    assert_eq!(pg.role(evil).await, None);
    assert_eq!(
        pg.role("bob").await.map(|r| r.can_login),
        Some(true),
        "the role named bob is untouched"
    );
    assert!(pg.role(evil_group).await.is_some());

    // A name PostgreSQL cannot hold is refused, never truncated onto another role.
    let long = format!("{}{}", "b".repeat(63), "ob");
    let err = connector
        .apply(&task(Action::Disable, &long, None))
        .await
        .expect_err("too long");
    assert!(err.to_string().contains("63"), "{err}");
    let _ = quote_ident(evil);
}

#[tokio::test]
async fn the_admin_role_itself_is_never_touched() {
    let pg = Postgres::start().await;
    let connector = connector(&pg);
    let err = connector
        .apply(&task(Action::Disable, &pg.admin_user, None))
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err}");
    assert!(err.to_string().contains("logs in as"), "{err}");
    assert_eq!(
        pg.role(&pg.admin_user).await.map(|r| r.can_login),
        Some(true)
    );
    let err = connector
        .apply(&task(Action::RevokeSessions, "pg_monitor", None))
        .await
        .expect_err("reserved");
    assert!(err.to_string().contains("reserved"), "{err}");
    assert!(connector
        .discover(&person("pg_monitor"))
        .await
        .expect("discover")
        .is_empty());
}

#[tokio::test]
async fn list_accounts_reads_login_roles_and_last_activity() {
    let pg = Postgres::start().await;
    pg.create_login_role("ada", "pw-ada-7").await;
    pg.create_login_role("bob", "pw-bob-7").await;
    pg.create_group_role("analysts").await;
    pg.grant("analysts", "ada").await;
    pg.execute(
        "CREATE TABLE logins (who text, at timestamptz); \
         INSERT INTO logins VALUES ('ada', '2026-01-02T03:04:05Z'), ('ada', '2026-03-01T00:00:00Z'), ('bob', NULL)",
    )
    .await;

    let plain = connector(&pg).list_accounts().await.expect("list");
    let names: Vec<&str> = plain.iter().map(|a| a.username.as_str()).collect();
    assert_eq!(names, vec!["ada", "bob", pg.admin_user.as_str()]);
    assert!(plain.iter().all(|a| a.last_activity.is_none()));

    let with_activity = connector_with(
        &pg,
        json!({"last_activity_query": "SELECT who, at FROM logins"}),
        &pg.admin_password,
    )
    .list_accounts()
    .await
    .expect("list");
    let ada = &with_activity[0];
    assert_eq!(ada.username, "ada");
    assert_eq!(ada.entitlements.len(), 1);
    assert_eq!(
        ada.last_activity.map(|t| t.to_rfc3339()),
        Some("2026-03-01T00:00:00+00:00".to_string())
    );
    assert_eq!(with_activity[1].last_activity, None);

    // Statements are bounded by timeout_secs (set on every connection).
    let bounded = connector_with(
        &pg,
        json!({"timeout_secs": 1, "last_activity_query":
            "SELECT 'bob', now() WHERE current_setting('statement_timeout') = '1s'"}),
        &pg.admin_password,
    )
    .list_accounts()
    .await
    .expect("list");
    assert!(
        bounded[1].last_activity.is_some(),
        "statement_timeout is 1s"
    );
    let err = connector_with(
        &pg,
        json!({"timeout_secs": 1, "last_activity_query": "SELECT 'bob', now() FROM pg_sleep(5)"}),
        &pg.admin_password,
    )
    .list_accounts()
    .await
    .expect_err("cancelled by statement_timeout");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert!(err.to_string().contains("57014"), "{err}");

    // The operator's query runs read-only.
    let err = connector_with(
        &pg,
        json!({"last_activity_query": "DELETE FROM logins RETURNING who, at"}),
        &pg.admin_password,
    )
    .list_accounts()
    .await
    .expect_err("read-only");
    assert!(err.to_string().contains("25006"), "{err}");
    let err = connector_with(
        &pg,
        json!({"last_activity_query": "SELECT 1, 2"}),
        &pg.admin_password,
    )
    .list_accounts()
    .await
    .expect_err("wrong shape");
    assert!(
        err.to_string().contains("last_activity_query must return"),
        "{err}"
    );
}

#[tokio::test]
async fn a_batch_is_one_read_one_script_and_each_task_answered_in_order() {
    let pg = Postgres::start().await;
    pg.create_login_role("ada", "pw-ada-7").await;
    pg.create_login_role("bob", "pw-bob-7").await;
    pg.create_login_role("cy", "pw-cy-7").await;
    pg.execute("ALTER ROLE cy NOLOGIN").await;
    pg.create_group_role("analysts").await;
    pg.grant("analysts", "bob").await;
    let connector = connector(&pg);
    assert!(connector.max_batch() > 1);

    // Discovery of several people answers each, in order; nobody has no role.
    let found = connector
        .discover_batch(&[person("bob"), person("nobody"), person("ada")])
        .await;
    let names: Vec<Vec<String>> = found
        .into_iter()
        .map(|accounts| {
            accounts
                .expect("discover")
                .into_iter()
                .map(|a| a.id)
                .collect()
        })
        .collect();
    assert_eq!(names, [vec!["bob"], vec![], vec!["ada"]]);

    // Disables of an active role with an open session, a role that cannot log in already,
    // a role that does not exist and the admin role deprov logs in as, plus a membership
    // removal riding in the same batch.
    let session = pg.open_session("ada", "pw-ada-7").await;
    let tasks = [
        task(Action::Disable, "ada", None),
        task(Action::Disable, "cy", None),
        task(Action::Disable, "ghost", None),
        task(Action::Disable, &pg.admin_user, None),
        task(Action::RemoveEntitlement, "bob", Some("analysts")),
        task(Action::Disable, "bob", None),
    ];
    let applied = connector.apply_batch(&tasks).await;
    assert_eq!(applied.len(), tasks.len());
    assert_eq!(applied[0].as_ref().ok(), Some(&Applied::Changed));
    assert_eq!(applied[1].as_ref().ok(), Some(&Applied::AlreadyDone));
    assert_eq!(applied[2].as_ref().ok(), Some(&Applied::AlreadyDone));
    let Err(ConnectorError::Permanent(refused)) = &applied[3] else {
        panic!(
            "deprov must not disable the role it logs in as: {:?}",
            applied[3]
        );
    };
    assert!(refused.contains("logs in as"), "{refused}");
    assert_eq!(applied[4].as_ref().ok(), Some(&Applied::Changed));
    assert_eq!(applied[5].as_ref().ok(), Some(&Applied::Changed));
    assert!(
        session.closed_within(Duration::from_secs(5)).await,
        "the open session did not outlive the batch's disable"
    );
    assert!(pg.connect_as("ada", "pw-ada-7").await.is_err());
    assert!(pg.connect_as("bob", "pw-bob-7").await.is_err());
    assert_eq!(pg.role("bob").await.map(|r| r.member_of), Some(Vec::new()));

    // One read answers every task, each judged on its own.
    let evidence = connector.verify_batch(&tasks).await;
    for (task, evidence) in tasks.iter().zip(&evidence) {
        let evidence = evidence.as_ref().expect("verify");
        let refused_one = task.account.id == pg.admin_user;
        assert_eq!(
            evidence.verified, !refused_one,
            "{task:?}: {}",
            evidence.observed
        );
        assert_eq!(evidence.observed["role"], json!(task.account.id));
    }
    assert_eq!(
        evidence[2].as_ref().unwrap().observed["exists"],
        json!(false)
    );

    // The same batch again changes nothing.
    let again = connector.apply_batch(&tasks).await;
    for (index, applied) in again.iter().enumerate().filter(|(index, _)| *index != 3) {
        assert_eq!(
            applied.as_ref().ok(),
            Some(&Applied::AlreadyDone),
            "task {index}"
        );
    }
}
