//! The Okta connector against the mock Okta org (`deprov_tests::vendors::okta`).

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, Entitlement, PersonQuery};
use deprov_tests::vendors::okta::OktaMock;
use serde_json::json;

const SECRET: &str = "deprov/connector/okta";
const TOKEN: &str = "00okta-api-token-4242";

fn connector_with(
    mock: &OktaMock,
    token: &str,
    connection: serde_json::Value,
) -> Arc<dyn Connector> {
    let mut connection = connection;
    connection["base_url"] = json!(mock.base_url());
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "okta", "secret": SECRET, "connection": connection,
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    let secrets: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "token", token));
    deprov_connectors::build("okta", &config, secrets).unwrap_or_else(|err| panic!("{err}"))
}

fn connector(mock: &OktaMock) -> Arc<dyn Connector> {
    connector_with(mock, TOKEN, json!({"page_size": 2}))
}

fn person(email: &str) -> PersonQuery {
    PersonQuery {
        person_id: "E1".into(),
        email: email.into(),
        username: None,
    }
}

fn task(action: Action, account: &Account, target: Option<&Entitlement>) -> Task {
    Task {
        task_id: format!("t-{}-{}", action.as_str(), account.id),
        run_id: "run-1".into(),
        system: "okta".into(),
        action,
        account: AccountRef {
            id: account.id.clone(),
            username: account.username.clone(),
        },
        target: target.map(|t| Target {
            id: t.id.clone(),
            name: t.name.clone(),
            kind: t.kind.clone(),
        }),
        person_id: "E1".into(),
    }
}

async fn twice(connector: &dyn Connector, task: &Task) -> serde_json::Value {
    assert_eq!(
        connector
            .apply(task)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    let evidence = connector
        .verify(task)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(evidence.verified, "{}", evidence.observed);
    assert_eq!(
        connector
            .apply(task)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::AlreadyDone
    );
    evidence.observed
}

#[tokio::test]
async fn discovery_follows_link_pages_and_skips_everyone() {
    let mock = OktaMock::start(TOKEN).await;
    let ada = mock.add_user("ada@example.com", "ada@example.com");
    // Enough groups for three pages of two.
    let groups: Vec<String> = (0..4)
        .map(|i| mock.add_group(&format!("g{i}"), &[&ada]))
        .collect();
    for i in 0..5 {
        mock.add_user(&format!("u{i}@example.com"), &format!("u{i}@example.com"));
    }
    let accounts = connector(&mock)
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account = &accounts[0];
    assert_eq!(account.id, ada);
    assert_eq!(account.username, "ada@example.com");
    assert!(account.active);
    assert!(account.last_activity.is_some());
    let mut found: Vec<String> = account.entitlements.iter().map(|e| e.id.clone()).collect();
    found.sort();
    let mut want = groups.clone();
    want.sort();
    assert_eq!(found, want, "Everyone (BUILT_IN) is not an entitlement");

    let all = connector(&mock)
        .list_accounts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 6, "pages of two are followed");
    let requests = mock.server.received_requests().await.unwrap_or_default();
    assert!(requests
        .iter()
        .any(|r| r.url.query().unwrap_or("").contains("after=")));
    assert!(requests.iter().all(
        |r| r.headers.get("authorization").and_then(|v| v.to_str().ok())
            == Some(&format!("SSWS {TOKEN}"))
    ));
}

#[tokio::test]
async fn every_action_applies_verifies_and_is_idempotent() {
    let mock = OktaMock::start(TOKEN).await;
    let ada = mock.add_user("ada@example.com", "ada@example.com");
    mock.add_group("eng", &[&ada]);
    let okta = connector(&mock);
    let account = okta
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);

    let observed = twice(okta.as_ref(), &task(Action::RevokeSessions, &account, None)).await;
    assert_eq!(mock.revocations(&ada), 1);
    assert_eq!(observed["revocation"]["status"], 204);
    assert!(observed["note"]
        .as_str()
        .unwrap_or("")
        .contains("no API that lists"));
    // A sign-in after the revocation (lastLogin has millisecond precision): sessions are
    // no longer known revoked.
    tokio::time::sleep(Duration::from_millis(5)).await;
    mock.sign_in(&ada);
    let sessions = task(Action::RevokeSessions, &account, None);
    assert!(
        !okta
            .verify(&sessions)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
    assert_eq!(
        okta.apply(&sessions)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    assert_eq!(mock.revocations(&ada), 2);

    twice(okta.as_ref(), &task(Action::Disable, &account, None)).await;
    assert_eq!(
        mock.user(&ada).map(|u| u.status).as_deref(),
        Some("SUSPENDED")
    );

    let eng = account.entitlements[0].clone();
    twice(
        okta.as_ref(),
        &task(Action::RemoveEntitlement, &account, Some(&eng)),
    )
    .await;
    assert!(!mock.is_member(&eng.id, &ada));

    twice(okta.as_ref(), &task(Action::Delete, &account, None)).await;
    assert!(mock.user(&ada).is_none(), "deactivated, then deleted");
}

#[tokio::test]
async fn disable_can_deactivate_and_refuses_to_suspend_what_is_not_active() {
    let mock = OktaMock::start(TOKEN).await;
    let ada = mock.add_user("ada@example.com", "ada@example.com");
    let bob = mock.add_user("bob@example.com", "bob@example.com");
    mock.set_status(&bob, "LOCKED_OUT");
    let deactivating = connector_with(&mock, TOKEN, json!({"disable": "deactivate"}));
    let account = |id: &str| Account {
        system: "okta".into(),
        id: id.into(),
        username: id.into(),
        email: None,
        active: true,
        entitlements: vec![],
        credentials: vec![],
        last_activity: None,
    };
    twice(
        deactivating.as_ref(),
        &task(Action::Disable, &account(&ada), None),
    )
    .await;
    assert_eq!(
        mock.user(&ada).map(|u| u.status).as_deref(),
        Some("DEPROVISIONED")
    );
    let err = connector(&mock)
        .apply(&task(Action::Disable, &account(&bob), None))
        .await
        .expect_err("LOCKED_OUT cannot be suspended");
    assert!(
        err.to_string().contains("disable = \"deactivate\""),
        "{err}"
    );
}

#[tokio::test]
async fn rate_limits_outages_and_refused_tokens() {
    let mock = OktaMock::start(TOKEN).await;
    mock.add_user("ada@example.com", "ada@example.com");
    let okta = connector(&mock);

    mock.throttle_next(1);
    let err = okta
        .discover(&person("ada@example.com"))
        .await
        .expect_err("429");
    match &err {
        ConnectorError::Throttled { retry_after, .. } => {
            let wait = retry_after.unwrap_or_else(|| panic!("X-Rate-Limit-Reset is read: {err}"));
            assert!(wait <= Duration::from_secs(2), "{wait:?}");
        }
        other => panic!("{other}"),
    }

    mock.fail_next(1);
    let err = okta
        .discover(&person("ada@example.com"))
        .await
        .expect_err("500");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert!(err.to_string().contains("E0000009"), "{err}");

    let wrong = "00wrong-token-999999";
    let err = connector_with(&mock, wrong, json!({}))
        .discover(&person("ada@example.com"))
        .await
        .expect_err("401");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(SECRET) && message.contains("\"token\""),
        "{message}"
    );
    assert!(!message.contains(wrong), "{message}");
}

#[tokio::test]
async fn a_user_already_gone_is_success() {
    let mock = OktaMock::start(TOKEN).await;
    let ada = mock.add_user("ada@example.com", "ada@example.com");
    let eng = mock.add_group("eng", &[&ada]);
    let okta = connector(&mock);
    let account = okta
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    mock.remove_user(&ada);
    let group = Entitlement {
        id: eng,
        name: "eng".into(),
        kind: "group".into(),
    };
    for task in [
        task(Action::RevokeSessions, &account, None),
        task(Action::Disable, &account, None),
        task(Action::RemoveEntitlement, &account, Some(&group)),
        task(Action::Delete, &account, None),
    ] {
        assert_eq!(
            okta.apply(&task).await.unwrap_or_else(|e| panic!("{e}")),
            Applied::AlreadyDone
        );
        assert!(
            okta.verify(&task)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .verified
        );
    }
}

#[tokio::test]
async fn a_rehire_unsuspends_or_reactivates_and_regrants_groups() {
    let mock = OktaMock::start(TOKEN).await;
    let ada = mock.add_user("ada@example.com", "ada@example.com");
    let eng = mock.add_group("eng", &[]);
    let okta = connector(&mock);
    let account = okta
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    assert!(okta.supports().contains(&deprov_core::StageKind::Restore));

    mock.set_status(&ada, "SUSPENDED");
    let enable = task(Action::Enable, &account, None);
    assert!(
        !okta
            .verify(&enable)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
    let observed = twice(okta.as_ref(), &enable).await;
    assert_eq!(observed["user_status"], "ACTIVE");
    assert_eq!(mock.user(&ada).map(|u| u.status).as_deref(), Some("ACTIVE"));

    mock.set_status(&ada, "DEPROVISIONED");
    twice(okta.as_ref(), &enable).await;
    assert_eq!(mock.user(&ada).map(|u| u.status).as_deref(), Some("ACTIVE"));

    let group = Entitlement {
        id: eng.clone(),
        name: "eng".into(),
        kind: "group".into(),
    };
    twice(
        okta.as_ref(),
        &task(Action::RestoreEntitlement, &account, Some(&group)),
    )
    .await;
    assert!(mock.is_member(&eng, &ada));

    // A user deleted meanwhile cannot be restored: a clear permanent error.
    mock.remove_user(&ada);
    let err = okta.apply(&enable).await.expect_err("gone");
    assert_eq!(err.kind(), deprov_core::ErrorKind::Permanent);
    assert!(err.to_string().contains("no longer exists"), "{err}");
}
