//! The GitHub connector against the mock organization (`deprov_tests::vendors::github`).

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, PersonQuery};
use deprov_tests::vendors::github::GitHubMock;
use serde_json::json;

const SECRET: &str = "deprov/connector/github";
const TOKEN: &str = "ghp_mockTokenForDeprovTests0123456789";
const ORG: &str = "acme-corp";

fn connector_with(mock: &GitHubMock, token: &str) -> Arc<dyn Connector> {
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "github",
        "secret": SECRET,
        "connection": {"base_url": mock.base_url(), "org": ORG, "page_size": 2},
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    let secrets: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "token", token));
    deprov_connectors::build("gh", &config, secrets).unwrap_or_else(|err| panic!("{err}"))
}

fn connector(mock: &GitHubMock) -> Arc<dyn Connector> {
    connector_with(mock, TOKEN)
}

fn person(login: Option<&str>) -> PersonQuery {
    PersonQuery {
        person_id: "E1".into(),
        email: "ada@example.com".into(),
        username: login.map(str::to_string),
    }
}

fn task(action: Action, account: &Account, target: Option<(&str, &str)>) -> Task {
    Task {
        task_id: format!("t-{}-{}", action.as_str(), account.id),
        run_id: "run-1".into(),
        system: "gh".into(),
        action,
        account: AccountRef {
            id: account.id.clone(),
            username: account.username.clone(),
        },
        target: target.map(|(id, kind)| Target {
            id: id.into(),
            name: id.into(),
            kind: kind.into(),
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
async fn discovery_follows_link_pages() {
    let mock = GitHubMock::start(TOKEN, ORG).await;
    mock.add_member("ada-l");
    mock.add_member("grace-h");
    let mut teams: Vec<String> = (0..3)
        .map(|i| mock.add_team(&format!("Team {i}"), &["ada-l"]))
        .collect();
    mock.add_team("Others", &["grace-h"]);
    mock.add_team("Empty", &[]);
    let pat = mock.add_authorization("ada-l", "personal access token", "ci token");
    let ssh = mock.add_authorization("ada-l", "SSH key", "laptop");
    mock.add_authorization("ada-l", "personal access token", "third");
    mock.add_authorization("grace-h", "SSH key", "grace's");
    let github = connector(&mock);
    let accounts = github
        .discover(&person(Some("ada-l")))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account = &accounts[0];
    assert_eq!(account.id, "ada-l");
    let mut found: Vec<String> = account.entitlements.iter().map(|e| e.id.clone()).collect();
    found.sort();
    teams.sort();
    assert_eq!(found, teams, "teams over three pages of two");
    assert!(account.entitlements.iter().all(|e| e.kind == "team"));
    assert_eq!(account.credentials.len(), 3, "{:?}", account.credentials);
    assert!(account
        .credentials
        .iter()
        .any(|c| c.id == pat.to_string() && c.kind == "personal_access_token"));
    assert!(account
        .credentials
        .iter()
        .any(|c| c.id == ssh.to_string() && c.kind == "ssh_key"));

    assert!(github
        .discover(&person(Some("stranger")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .is_empty());
    let err = github
        .discover(&person(None))
        .await
        .expect_err("no login, no search by email");
    assert!(err.to_string().contains("person.usernames.gh"), "{err}");

    let all = github
        .list_accounts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(all.len(), 2);
    let requests = mock.server.received_requests().await.unwrap_or_default();
    assert!(requests
        .iter()
        .any(|r| r.url.query().unwrap_or("").contains("page=2")));
    assert!(requests.iter().all(|r| {
        let h = |n: &str| r.headers.get(n).and_then(|v| v.to_str().ok());
        h("authorization") == Some(&format!("Bearer {TOKEN}"))
            && h("x-github-api-version") == Some("2022-11-28")
            && h("accept") == Some("application/vnd.github+json")
    }));
}

#[tokio::test]
async fn every_action_applies_verifies_and_is_idempotent() {
    let mock = GitHubMock::start(TOKEN, ORG).await;
    mock.add_member("ada-l");
    let team = mock.add_team("Platform", &["ada-l"]);
    let pat = mock.add_authorization("ada-l", "personal access token", "ci");
    let github = connector(&mock);
    let account = github
        .discover(&person(Some("ada-l")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);

    let observed = twice(
        github.as_ref(),
        &task(Action::RemoveEntitlement, &account, Some((&team, "team"))),
    )
    .await;
    assert_eq!(observed["status"], 404);
    assert!(!mock.in_team(&team, "ada-l"));

    let id = pat.to_string();
    let observed = twice(
        github.as_ref(),
        &task(
            Action::RemoveCredential,
            &account,
            Some((&id, "personal_access_token")),
        ),
    )
    .await;
    assert_eq!(observed["authorized"], false);
    assert_eq!(mock.authorizations("ada-l"), 0);

    let observed = twice(github.as_ref(), &task(Action::Delete, &account, None)).await;
    assert_eq!(observed["status"], 404);
    assert!(!mock.is_member("ada-l"));
}

#[tokio::test]
async fn rate_limits_are_throttled_until_the_reset_and_5xx_transient() {
    let mock = GitHubMock::start(TOKEN, ORG).await;
    mock.add_member("ada-l");
    let github = connector(&mock);

    mock.set_reset_in(42);
    mock.throttle_next(1);
    let err = github
        .discover(&person(Some("ada-l")))
        .await
        .expect_err("primary rate limit");
    let delay = err.retry_after().unwrap_or_default();
    assert!(
        matches!(err, ConnectorError::Throttled { .. })
            && delay <= Duration::from_secs(42)
            && delay >= Duration::from_secs(40),
        "{err}"
    );

    mock.throttle_secondary(9);
    mock.throttle_next(1);
    let err = github
        .discover(&person(Some("ada-l")))
        .await
        .expect_err("secondary rate limit");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(9)), "{err}");

    mock.fail_next(1);
    let err = github
        .discover(&person(Some("ada-l")))
        .await
        .expect_err("502");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err}");
    assert!(github
        .discover(&person(Some("ada-l")))
        .await
        .is_ok_and(|a| a.len() == 1));
}

#[tokio::test]
async fn a_bad_token_names_the_secret_never_the_token() {
    let mock = GitHubMock::start(TOKEN, ORG).await;
    mock.add_member("ada-l");
    let wrong = "ghp_wrongWrongWrong000000000000000000";
    let err = connector_with(&mock, wrong)
        .discover(&person(Some("ada-l")))
        .await
        .expect_err("bad credentials");
    let message = err.to_string();
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{message}");
    assert!(
        message.contains(SECRET) && message.contains("\"token\""),
        "{message}"
    );
    assert!(message.contains("Bad credentials"), "{message}");
    assert!(
        !message.contains(wrong) && !message.contains(TOKEN),
        "{message}"
    );
}

#[tokio::test]
async fn a_member_already_gone_is_success() {
    let mock = GitHubMock::start(TOKEN, ORG).await;
    mock.add_member("ada-l");
    let team = mock.add_team("Platform", &["ada-l"]);
    let pat = mock
        .add_authorization("ada-l", "SSH key", "laptop")
        .to_string();
    let github = connector(&mock);
    let account = github
        .discover(&person(Some("ada-l")))
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .remove(0);
    mock.remove_member("ada-l");
    for task in [
        task(Action::RemoveEntitlement, &account, Some((&team, "team"))),
        task(Action::RemoveCredential, &account, Some((&pat, "ssh_key"))),
        task(Action::Delete, &account, None),
    ] {
        assert_eq!(
            github.apply(&task).await.unwrap_or_else(|e| panic!("{e}")),
            Applied::AlreadyDone
        );
        assert!(
            github
                .verify(&task)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .verified
        );
    }
}
