//! The Google Workspace connector against the mock Workspace
//! (`deprov_tests::vendors::google`), whose token endpoint checks the RS256 signature of the
//! service account's JWT with a throwaway test key.

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, Entitlement, PersonQuery};
use deprov_tests::vendors::google::{other_key, GoogleMock, DRIVE_APPLICATION_ID};
use serde_json::json;

const SECRET: &str = "deprov/connector/google";

fn secrets(mock: &GoogleMock, private_key: &str, subject: &str) -> Arc<dyn SecretSource> {
    Arc::new(
        MemorySecrets::default()
            .with(SECRET, "client_email", &mock.client_email)
            .with(SECRET, "private_key", private_key)
            .with(SECRET, "subject", subject),
    )
}

fn connector_with(mock: &GoogleMock, secrets: Arc<dyn SecretSource>) -> Arc<dyn Connector> {
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "google",
        "secret": SECRET,
        "connection": {
            "base_url": mock.base_url(),
            "token_url": mock.token_url(),
            "drive_application_id": DRIVE_APPLICATION_ID,
            "page_size": 2,
        },
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    deprov_connectors::build("gws", &config, secrets).unwrap_or_else(|err| panic!("{err}"))
}

fn connector(mock: &GoogleMock) -> Arc<dyn Connector> {
    connector_with(mock, secrets(mock, &mock.key.private_pem, &mock.subject))
}

fn person(email: &str) -> PersonQuery {
    PersonQuery {
        person_id: "E1".into(),
        email: email.into(),
        username: None,
    }
}

fn task(action: Action, account: &Account, target: Option<Target>) -> Task {
    Task {
        task_id: format!("t-{}-{}", action.as_str(), account.id),
        run_id: "run-1".into(),
        system: "gws".into(),
        action,
        account: AccountRef {
            id: account.id.clone(),
            username: account.username.clone(),
        },
        target,
        person_id: "E1".into(),
    }
}

fn group_target(e: &Entitlement) -> Option<Target> {
    Some(Target {
        id: e.id.clone(),
        name: e.name.clone(),
        kind: e.kind.clone(),
    })
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
    assert!(
        connector
            .verify(task)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
    evidence.observed
}

#[tokio::test]
async fn discovery_follows_page_tokens_and_caches_the_token() {
    let mock = GoogleMock::start().await;
    let ada = mock.add_user("ada@example.com");
    let groups: Vec<String> = (0..5)
        .map(|i| mock.add_group(&format!("g{i}@example.com"), &[&ada]))
        .collect();
    mock.add_group("other@example.com", &[]);
    for i in 0..4 {
        mock.add_user(&format!("u{i}@example.com"));
    }
    let google = connector(&mock);
    let accounts = google
        .discover(&person("ADA@example.com"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account = &accounts[0];
    assert_eq!(account.id, ada, "the account id is Google's user id");
    assert_eq!(account.username, "ada@example.com");
    assert!(account.active);
    assert!(account.last_activity.is_some(), "lastLoginTime");
    let mut found: Vec<String> = account.entitlements.iter().map(|e| e.id.clone()).collect();
    found.sort();
    let mut want = groups.clone();
    want.sort();
    assert_eq!(found, want, "three pages of two groups are followed");
    assert!(google
        .discover(&person("nobody@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());

    let all = google
        .list_accounts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        all.len(),
        6,
        "the admin, ada and four more, over pages of two"
    );
    assert_eq!(mock.token_requests(), 1, "the access token is cached");
    let requests = mock.server.received_requests().await.unwrap_or_default();
    assert!(requests
        .iter()
        .any(|r| r.url.query().unwrap_or("").contains("pageToken=")));
    assert!(requests
        .iter()
        .filter(|r| r.url.path() != "/token")
        .all(|r| r
            .headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("Bearer ya29."))));
}

#[tokio::test]
async fn every_action_applies_verifies_and_is_idempotent() {
    let mock = GoogleMock::start().await;
    let ada = mock.add_user("ada@example.com");
    let grace = mock.add_user("grace@example.com");
    mock.add_group("eng@example.com", &[&ada]);
    mock.add_token(&ada, "1234.apps.googleusercontent.com", "Some app");
    mock.add_token(&ada, "5678.apps.googleusercontent.com", "Other app");
    mock.set_transfer_polls(2);
    let google = connector(&mock);
    let account = google
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);

    let observed = twice(
        google.as_ref(),
        &task(Action::RevokeSessions, &account, None),
    )
    .await;
    assert_eq!(mock.sign_outs(&ada), 1);
    assert_eq!(mock.tokens(&ada), 0, "both OAuth tokens deleted");
    assert_eq!(observed["signOut"]["status"], 204);
    assert_eq!(observed["signOut"]["tokens_deleted"], 2);
    assert!(observed["note"]
        .as_str()
        .unwrap_or("")
        .contains("no API that lists"));

    twice(google.as_ref(), &task(Action::Disable, &account, None)).await;
    assert!(mock.user(&ada).is_some_and(|u| u.suspended));

    let eng = account.entitlements[0].clone();
    let observed = twice(
        google.as_ref(),
        &task(Action::RemoveEntitlement, &account, group_target(&eng)),
    )
    .await;
    assert_eq!(observed["isMember"], false);
    assert!(!mock.is_member(&eng.id, &ada));

    let manager = Some(Target {
        id: "grace@example.com".into(),
        name: "grace@example.com".into(),
        kind: "user".into(),
    });
    let observed = twice(
        google.as_ref(),
        &task(Action::TransferData, &account, manager.clone()),
    )
    .await;
    assert_eq!(observed["overallTransferStatusCode"], "completed");
    let transfers = mock.transfers();
    assert_eq!(transfers.len(), 1, "one transfer per old → new owner");
    assert_eq!(transfers[0].old_owner, ada);
    assert_eq!(transfers[0].new_owner, grace);
    assert_eq!(
        transfers[0].params,
        json!([{"key": "PRIVACY_LEVEL", "value": ["PRIVATE", "SHARED"]}])
    );

    // A rehire before the delete: unsuspended, back in the group, both read back.
    twice(google.as_ref(), &task(Action::Enable, &account, None)).await;
    assert!(mock.user(&ada).is_some_and(|u| !u.suspended));
    let observed = twice(
        google.as_ref(),
        &task(Action::RestoreEntitlement, &account, group_target(&eng)),
    )
    .await;
    assert_eq!(observed["isMember"], true);
    assert!(mock.is_member(&eng.id, &ada));

    twice(google.as_ref(), &task(Action::Delete, &account, None)).await;
    assert!(mock.user(&ada).is_none());
    let enable = task(Action::Enable, &account, None);
    let err = google.apply(&enable).await.expect_err("gone");
    assert!(err.to_string().contains("no longer exists"), "{err}");
    assert!(
        !google
            .verify(&enable)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
}

#[tokio::test]
async fn a_transfer_in_progress_is_transient_and_a_missing_manager_permanent() {
    let mock = GoogleMock::start().await;
    let ada = mock.add_user("ada@example.com");
    mock.add_user("grace@example.com");
    mock.set_transfer_polls(100);
    let google = connector(&mock);
    let account = google
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    let target = |email: &str| {
        Some(Target {
            id: email.into(),
            name: email.into(),
            kind: "user".into(),
        })
    };
    let data = task(Action::TransferData, &account, target("grace@example.com"));
    assert_eq!(
        google.apply(&data).await.unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    let err = google.verify(&data).await.expect_err("still in progress");
    assert!(
        matches!(err, ConnectorError::Transient(ref m) if m.contains("inProgress")),
        "{err}"
    );
    assert_eq!(
        google.apply(&data).await.unwrap_or_else(|e| panic!("{e}")),
        Applied::AlreadyDone,
        "no second transfer while one is under way"
    );
    let orphan = task(Action::TransferData, &account, target("gone@example.com"));
    let err = google.apply(&orphan).await.expect_err("no such manager");
    assert!(
        matches!(err, ConnectorError::Permanent(ref m) if m.contains("gone@example.com")),
        "{err}"
    );
    assert_eq!(mock.transfers().len(), 1);
    assert!(mock.user(&ada).is_some());
}

#[tokio::test]
async fn throttling_is_throttled_and_5xx_transient() {
    let mock = GoogleMock::start().await;
    mock.add_user("ada@example.com");
    let google = connector(&mock);
    // Warm the token up, so the faults hit the API calls.
    google
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));

    mock.throttle_next(1);
    let err = google
        .discover(&person("ada@example.com"))
        .await
        .expect_err("403 userRateLimitExceeded");
    match &err {
        ConnectorError::Throttled {
            retry_after,
            message,
        } => {
            assert_eq!(
                *retry_after, None,
                "Google sends no delay: the engine backs off"
            );
            assert!(message.contains("userRateLimitExceeded"), "{message}");
        }
        other => panic!("expected Throttled, got {other}"),
    }

    mock.throttle_with_429(7);
    mock.throttle_next(1);
    let err = google
        .discover(&person("ada@example.com"))
        .await
        .expect_err("429");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)), "{err}");

    mock.fail_next(1);
    let err = google
        .discover(&person("ada@example.com"))
        .await
        .expect_err("503");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert!(google
        .discover(&person("ada@example.com"))
        .await
        .is_ok_and(|a| a.len() == 1));
}

#[tokio::test]
async fn refused_keys_and_subjects_name_the_secret_never_the_key() {
    let mock = GoogleMock::start().await;
    mock.add_user("ada@example.com");
    let wrong_key = other_key().private_pem.clone();
    let google = connector_with(&mock, secrets(&mock, &wrong_key, &mock.subject));
    let err = google
        .discover(&person("ada@example.com"))
        .await
        .expect_err("a key Google does not know");
    let message = err.to_string();
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{message}");
    assert!(message.contains(SECRET), "{message}");
    assert!(message.contains("private_key"), "{message}");
    assert!(message.contains("Invalid JWT Signature"), "{message}");
    for key in [&wrong_key, &mock.key.private_pem] {
        let body: String = key.lines().filter(|l| !l.starts_with("-----")).collect();
        assert!(!message.contains(&body[..40]), "{message}");
    }

    // A subject without domain-wide delegation rights.
    mock.add_user("someone@example.com");
    let google = connector_with(
        &mock,
        secrets(&mock, &mock.key.private_pem, "someone@example.com"),
    );
    let err = google
        .discover(&person("ada@example.com"))
        .await
        .expect_err("not delegated");
    assert!(
        matches!(err, ConnectorError::Unauthorized(ref m) if m.contains("unauthorized_client") && m.contains(SECRET)),
        "{err}"
    );

    // Not a PEM key at all: the configuration is wrong, and the value is not shown.
    let google = connector_with(
        &mock,
        secrets(&mock, "not-a-key-but-a-secret-value", &mock.subject),
    );
    let err = google
        .discover(&person("ada@example.com"))
        .await
        .expect_err("no PEM");
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err}");
    assert!(!err.to_string().contains("not-a-key-but"), "{err}");
    assert_eq!(mock.token_requests(), 0);
}

#[tokio::test]
async fn an_account_already_gone_is_success() {
    let mock = GoogleMock::start().await;
    let ada = mock.add_user("ada@example.com");
    mock.add_user("grace@example.com");
    let group = mock.add_group("eng@example.com", &[&ada]);
    let google = connector(&mock);
    let account = google
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    mock.remove_user(&ada);
    let manager = Some(Target {
        id: "grace@example.com".into(),
        name: "grace@example.com".into(),
        kind: "user".into(),
    });
    for task in [
        task(Action::RevokeSessions, &account, None),
        task(Action::Disable, &account, None),
        task(
            Action::RemoveEntitlement,
            &account,
            Some(Target {
                id: group.clone(),
                name: "eng".into(),
                kind: "group".into(),
            }),
        ),
        task(Action::TransferData, &account, manager),
        task(Action::Delete, &account, None),
    ] {
        assert_eq!(
            google.apply(&task).await.unwrap_or_else(|e| panic!("{e}")),
            Applied::AlreadyDone,
            "{}",
            task.action.as_str()
        );
        let evidence = google.verify(&task).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(evidence.verified, "{}", evidence.observed);
    }
}
