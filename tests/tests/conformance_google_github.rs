//! The Google Workspace and GitHub connectors against the conformance suite, each on its
//! vendor-faithful mock (`deprov_tests::vendors::{google, github}`), storms included.

use std::sync::Arc;

use async_trait::async_trait;
use deprov_core::plan::StageKind;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, PersonQuery};
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::vendors::github::GitHubMock;
use deprov_tests::vendors::google::{other_key, GoogleMock, DRIVE_APPLICATION_ID};

fn config(value: serde_json::Value) -> SystemConfig {
    serde_json::from_value(value).unwrap_or_else(|err| panic!("{err}"))
}

const GOOGLE_SECRET: &str = "deprov/connector/google";
/// The manager the conformance events name.
const MANAGER: &str = "manager@example.com";

struct Google {
    mock: GoogleMock,
}

impl Google {
    fn secrets_with(&self, private_key: &str) -> Arc<dyn SecretSource> {
        Arc::new(
            MemorySecrets::default()
                .with(GOOGLE_SECRET, "client_email", &self.mock.client_email)
                .with(GOOGLE_SECRET, "private_key", private_key)
                .with(GOOGLE_SECRET, "subject", &self.mock.subject),
        )
    }
}

#[async_trait]
impl ConformanceTarget for Google {
    fn system(&self) -> (String, SystemConfig) {
        (
            "gws".into(),
            config(serde_json::json!({
                "kind": "google",
                "secret": GOOGLE_SECRET,
                "connection": {
                    "base_url": self.mock.base_url(),
                    "token_url": self.mock.token_url(),
                    "drive_application_id": DRIVE_APPLICATION_ID,
                    "page_size": 2,
                },
            })),
        )
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        self.secrets_with(&self.mock.key.private_pem)
    }
    fn secret_values(&self) -> Vec<String> {
        let mut values = Vec::new();
        for pem in [&self.mock.key.private_pem, &other_key().private_pem] {
            values.push(pem.clone());
            // Every line of the keys' bodies, so that no part of a key may show either.
            values.extend(
                pem.lines()
                    .filter(|line| !line.starts_with("-----") && line.len() >= 16)
                    .map(str::to_string),
            );
        }
        values
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        self.secrets_with(&other_key().private_pem)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let email = format!("conf-{tag}@example.com");
        let id = self.mock.add_user(&email);
        self.mock
            .add_group(&format!("group-{tag}@example.com"), &[&id]);
        self.mock
            .add_token(&id, "1234.apps.googleusercontent.com", "Some app");
        if self.mock.user_by_email(MANAGER).is_none() {
            self.mock.add_user(MANAGER);
        }
        PersonQuery {
            person_id: format!("P-{tag}"),
            email,
            username: None,
        }
    }
    async fn remove_account(&self, account: &Account) {
        self.mock.remove_user(&account.id);
    }
    fn throttle_next(&self, n: u32) -> bool {
        self.mock.throttle_next(n);
        true
    }
    fn fail_next(&self, n: u32) -> bool {
        self.mock.fail_next(n);
        true
    }
    fn stages(&self) -> Vec<StageKind> {
        vec![
            StageKind::Sessions,
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Data,
            StageKind::Delete,
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn google_conforms() {
    let target = Google {
        mock: GoogleMock::start().await,
    };
    check_all(&target).await;
}

const GITHUB_SECRET: &str = "deprov/connector/github";
const GITHUB_WRONG: &str = "ghp_wrongConformanceToken0000000000000";

struct GitHub {
    mock: GitHubMock,
}

#[async_trait]
impl ConformanceTarget for GitHub {
    fn system(&self) -> (String, SystemConfig) {
        (
            "github".into(),
            config(serde_json::json!({
                "kind": "github",
                "secret": GITHUB_SECRET,
                "connection": {
                    "base_url": self.mock.base_url(),
                    "org": self.mock.org,
                    "page_size": 2,
                },
            })),
        )
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        Arc::new(MemorySecrets::default().with(GITHUB_SECRET, "token", &self.mock.token))
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.mock.token.clone(), GITHUB_WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        Arc::new(MemorySecrets::default().with(GITHUB_SECRET, "token", GITHUB_WRONG))
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let login = format!("conf-{tag}");
        self.mock.add_member(&login);
        self.mock.add_team(&format!("team {tag}"), &[&login]);
        self.mock
            .add_authorization(&login, "personal access token", &format!("pat {tag}"));
        PersonQuery {
            person_id: format!("P-{tag}"),
            email: format!("conf-{tag}@example.com"),
            username: Some(login),
        }
    }
    async fn remove_account(&self, account: &Account) {
        self.mock.remove_member(&account.id);
    }
    fn throttle_next(&self, n: u32) -> bool {
        self.mock.throttle_next(n);
        true
    }
    fn fail_next(&self, n: u32) -> bool {
        self.mock.fail_next(n);
        true
    }
    fn stages(&self) -> Vec<StageKind> {
        vec![
            StageKind::Entitlements,
            StageKind::Credentials,
            StageKind::Delete,
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn github_conforms() {
    let target = GitHub {
        mock: GitHubMock::start("ghp_conformanceToken4242424242424242", "acme-corp").await,
    };
    check_all(&target).await;
}
