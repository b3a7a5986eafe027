//! The Slack connector against the mock Enterprise Grid org (`deprov_tests::vendors::slack`).

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, PersonQuery};
use deprov_tests::vendors::slack::SlackMock;
use serde_json::json;

const SECRET: &str = "deprov/connector/slack";
const TOKEN: &str = "xoxp-admin-token-4242";

fn connector_with(mock: &SlackMock, token: &str) -> Arc<dyn Connector> {
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "slack", "secret": SECRET,
        "connection": {"base_url": mock.base_url(), "page_size": 1},
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    let secrets: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "token", token));
    deprov_connectors::build("slack", &config, secrets).unwrap_or_else(|err| panic!("{err}"))
}

fn person(email: &str) -> PersonQuery {
    PersonQuery {
        person_id: "E1".into(),
        email: email.into(),
        username: None,
    }
}

fn task(action: Action, account: &Account) -> Task {
    Task {
        task_id: format!("t-{}-{}", action.as_str(), account.id),
        run_id: "run-1".into(),
        system: "slack".into(),
        action,
        account: AccountRef {
            id: account.id.clone(),
            username: account.username.clone(),
        },
        target: None,
        person_id: "E1".into(),
    }
}

#[tokio::test]
async fn sessions_and_deactivation_apply_verify_and_are_idempotent() {
    let mock = SlackMock::start(TOKEN).await;
    let ada = mock.add_user("ada", "ada@example.com");
    mock.sign_in(&ada);
    for i in 0..3 {
        let other = mock.add_user(&format!("u{i}"), &format!("u{i}@example.com"));
        mock.sign_in(&other);
    }
    let slack = connector_with(&mock, TOKEN);
    let mut accounts = slack
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account = accounts.remove(0);
    assert_eq!(account.id, ada);

    for action in [Action::RevokeSessions, Action::Disable] {
        let task = task(action, &account);
        let evidence = slack.verify(&task).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            !evidence.verified,
            "{action:?} before apply: {}",
            evidence.observed
        );
        assert_eq!(
            slack.apply(&task).await.unwrap_or_else(|e| panic!("{e}")),
            Applied::Changed
        );
        let evidence = slack.verify(&task).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(evidence.verified, "{action:?}: {}", evidence.observed);
        assert_eq!(
            slack.apply(&task).await.unwrap_or_else(|e| panic!("{e}")),
            Applied::AlreadyDone
        );
    }
    let user = mock.user(&ada).unwrap_or_else(|| panic!("ada"));
    assert!(!user.active && user.sessions.is_empty());
    assert_eq!(
        slack.list_accounts().await.map(|a| a.len()).unwrap_or(0),
        4,
        "SCIM pages of one are followed"
    );
}

#[tokio::test]
async fn rate_limits_errors_and_refused_tokens() {
    let mock = SlackMock::start(TOKEN).await;
    let ada = mock.add_user("ada", "ada@example.com");
    let slack = connector_with(&mock, TOKEN);
    let account = slack
        .discover(&person("ada@example.com"))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    let sessions = task(Action::RevokeSessions, &account);

    mock.throttle_next(1);
    let err = slack.apply(&sessions).await.expect_err("429");
    assert!(
        matches!(err, ConnectorError::Throttled { retry_after: Some(d), .. } if d == Duration::from_secs(1)),
        "{err}"
    );
    mock.fail_next(1);
    let err = slack.apply(&sessions).await.expect_err("internal_error");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");

    let wrong = "xoxp-wrong-token-000";
    let refused = connector_with(&mock, wrong);
    for err in [
        refused.apply(&sessions).await.expect_err("invalid_auth"),
        refused
            .discover(&person("ada@example.com"))
            .await
            .expect_err("SCIM 401"),
    ] {
        assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err}");
        let message = err.to_string();
        assert!(message.contains(SECRET), "{message}");
        assert!(!message.contains(wrong), "{message}");
    }

    mock.remove_user(&ada);
    assert_eq!(
        slack
            .apply(&sessions)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::AlreadyDone
    );
}
