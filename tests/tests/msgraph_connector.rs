//! The Microsoft Graph connector against the mock Entra tenant (`deprov_tests::vendors::msgraph`).

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, Entitlement, PersonQuery};
use deprov_tests::vendors::msgraph::GraphMock;
use serde_json::json;

const SECRET: &str = "deprov/connector/entra";
const CLIENT_ID: &str = "7f3c2d41-0000-4000-8000-00000000beef";
const CLIENT_SECRET: &str = "graph~client~secret~4242";
const E3: &str = "6fd2c87f-b296-42f0-b197-1e91e994b900";

fn connector_with(mock: &GraphMock, client_secret: &str) -> Arc<dyn Connector> {
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "msgraph", "secret": SECRET,
        "connection": {"base_url": mock.base_url(), "token_url": mock.token_url(), "page_size": 2},
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    let secrets: Arc<dyn SecretSource> = Arc::new(
        MemorySecrets::default()
            .with(SECRET, "client_id", CLIENT_ID)
            .with(SECRET, "client_secret", client_secret),
    );
    deprov_connectors::build("entra", &config, secrets).unwrap_or_else(|err| panic!("{err}"))
}

fn connector(mock: &GraphMock) -> Arc<dyn Connector> {
    connector_with(mock, CLIENT_SECRET)
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
        system: "entra".into(),
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
async fn discovery_follows_next_links_and_escapes_quotes() {
    let mock = GraphMock::start(CLIENT_ID, CLIENT_SECRET).await;
    let id = mock.add_user("o'brien@contoso.com", "o'brien@contoso.com", &[E3]);
    let groups: Vec<String> = (0..3)
        .map(|i| mock.add_group(&format!("g{i}"), &[&id]))
        .collect();
    for i in 0..4 {
        mock.add_user(
            &format!("u{i}@contoso.com"),
            &format!("u{i}@contoso.com"),
            &[],
        );
    }
    let graph = connector(&mock);
    let accounts = graph
        .discover(&person("o'brien@contoso.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let kinds: Vec<(&str, &str)> = accounts[0]
        .entitlements
        .iter()
        .map(|e| (e.kind.as_str(), e.id.as_str()))
        .collect();
    assert_eq!(
        kinds.iter().filter(|(k, _)| *k == "group").count(),
        3,
        "{kinds:?}"
    );
    assert!(kinds.contains(&("license", E3)), "{kinds:?}");
    assert!(groups
        .iter()
        .all(|g| kinds.contains(&("group", g.as_str()))));

    let all = graph
        .list_accounts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 5);
    assert!(
        all.iter().all(|a| a.last_activity.is_some()),
        "signInActivity is read"
    );
    let requests = mock.server.received_requests().await.unwrap_or_default();
    assert!(requests
        .iter()
        .any(|r| r.url.query().unwrap_or("").contains("skiptoken")));
    assert_eq!(mock.tokens_issued(), 1, "the token is cached");
}

#[tokio::test]
async fn every_action_applies_verifies_and_is_idempotent() {
    let mock = GraphMock::start(CLIENT_ID, CLIENT_SECRET).await;
    let id = mock.add_user("ada@contoso.com", "ada@contoso.com", &[E3]);
    let eng = mock.add_group("eng", &[&id]);
    let graph = connector(&mock);
    let account = graph
        .discover(&person("ada@contoso.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);

    let observed = twice(
        graph.as_ref(),
        &task(Action::RevokeSessions, &account, None),
    )
    .await;
    assert!(observed["signInSessionsValidFromDateTime"]
        .as_str()
        .is_some_and(|t| t.starts_with("20")));
    assert_eq!(observed["revokeSignInSessions"]["value"], true);

    twice(graph.as_ref(), &task(Action::Disable, &account, None)).await;
    assert_eq!(mock.user(&id).map(|u| u.enabled), Some(false));

    let group = account
        .entitlements
        .iter()
        .find(|e| e.kind == "group")
        .cloned()
        .unwrap_or_else(|| panic!("a group"));
    twice(
        graph.as_ref(),
        &task(Action::RemoveEntitlement, &account, Some(&group)),
    )
    .await;
    assert!(!mock.is_member(&eng, &id));

    let license = account
        .entitlements
        .iter()
        .find(|e| e.kind == "license")
        .cloned()
        .unwrap_or_else(|| panic!("a license"));
    twice(
        graph.as_ref(),
        &task(Action::RemoveEntitlement, &account, Some(&license)),
    )
    .await;
    assert_eq!(mock.user(&id).map(|u| u.licenses.is_empty()), Some(true));

    // A rehire before the delete puts back what the pre-state held.
    twice(graph.as_ref(), &task(Action::Enable, &account, None)).await;
    assert_eq!(mock.user(&id).map(|u| u.enabled), Some(true));
    twice(
        graph.as_ref(),
        &task(Action::RestoreEntitlement, &account, Some(&group)),
    )
    .await;
    assert!(mock.is_member(&eng, &id));
    twice(
        graph.as_ref(),
        &task(Action::RestoreEntitlement, &account, Some(&license)),
    )
    .await;
    assert_eq!(mock.user(&id).map(|u| u.licenses.contains(E3)), Some(true));

    twice(graph.as_ref(), &task(Action::Delete, &account, None)).await;
    assert!(mock.user(&id).is_none());
    // A deleted user cannot be enabled: a clear permanent error, and never "verified".
    let enable = task(Action::Enable, &account, None);
    let err = graph.apply(&enable).await.expect_err("gone");
    assert!(err.to_string().contains("no longer exists"), "{err}");
    assert!(
        !graph
            .verify(&enable)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
}

#[tokio::test]
async fn an_expired_token_is_fetched_again_once() {
    let mock = GraphMock::start(CLIENT_ID, CLIENT_SECRET).await;
    mock.add_user("ada@contoso.com", "ada@contoso.com", &[]);
    let graph = connector(&mock);
    graph
        .discover(&person("ada@contoso.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    mock.expire_tokens();
    let accounts = graph
        .discover(&person("ada@contoso.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accounts.len(), 1);
    assert_eq!(mock.tokens_issued(), 2);
}

#[tokio::test]
async fn throttling_outages_and_refused_credentials() {
    let mock = GraphMock::start(CLIENT_ID, CLIENT_SECRET).await;
    mock.add_user("ada@contoso.com", "ada@contoso.com", &[]);
    let graph = connector(&mock);

    mock.throttle_next(1);
    let err = graph
        .discover(&person("ada@contoso.com"))
        .await
        .expect_err("429");
    assert!(
        matches!(err, ConnectorError::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(1)),
        "{err}"
    );

    mock.fail_next(1);
    let err = graph
        .discover(&person("ada@contoso.com"))
        .await
        .expect_err("503");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");

    let wrong = "wrong~graph~secret~0000";
    let err = connector_with(&mock, wrong)
        .discover(&person("ada@contoso.com"))
        .await
        .expect_err("invalid_client");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err}");
    let message = err.to_string();
    assert!(
        message.contains(SECRET) && message.contains("AADSTS7000215"),
        "{message}"
    );
    assert!(!message.contains(wrong), "{message}");
}
