//! The SaaS connectors against the conformance suite, each on its vendor-faithful mock
//! (`deprov_tests::vendors`), storms included.

use std::sync::Arc;

use async_trait::async_trait;
use deprov_core::plan::StageKind;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, PersonQuery};
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::vendors::msgraph::GraphMock;
use deprov_tests::vendors::okta::OktaMock;
use deprov_tests::vendors::slack::SlackMock;

fn config(value: serde_json::Value) -> SystemConfig {
    serde_json::from_value(value).unwrap_or_else(|err| panic!("{err}"))
}

const OKTA_SECRET: &str = "deprov/connector/okta";
const OKTA_WRONG: &str = "00wrong-okta-token-0123";

struct Okta {
    mock: OktaMock,
}

#[async_trait]
impl ConformanceTarget for Okta {
    fn system(&self) -> (String, SystemConfig) {
        (
            "okta".into(),
            config(serde_json::json!({
                "kind": "okta",
                "secret": OKTA_SECRET,
                "connection": {"base_url": self.mock.base_url(), "page_size": 2},
            })),
        )
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        Arc::new(MemorySecrets::default().with(OKTA_SECRET, "token", &self.mock.token))
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.mock.token.clone(), OKTA_WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        Arc::new(MemorySecrets::default().with(OKTA_SECRET, "token", OKTA_WRONG))
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let email = format!("conf-{tag}@example.com");
        let id = self.mock.add_user(&email, &email);
        self.mock.add_group(&format!("group-{tag}"), &[&id]);
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
            StageKind::Delete,
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn okta_conforms() {
    let target = Okta {
        mock: OktaMock::start("00okta-conformance-token-42").await,
    };
    check_all(&target).await;
}

const GRAPH_SECRET: &str = "deprov/connector/entra";
const GRAPH_WRONG: &str = "wrong~graph~client~secret~0123";

struct Graph {
    mock: GraphMock,
}

fn graph_secrets(client_id: &str, client_secret: &str) -> Arc<dyn SecretSource> {
    Arc::new(
        MemorySecrets::default()
            .with(GRAPH_SECRET, "client_id", client_id)
            .with(GRAPH_SECRET, "client_secret", client_secret),
    )
}

#[async_trait]
impl ConformanceTarget for Graph {
    fn system(&self) -> (String, SystemConfig) {
        (
            "entra".into(),
            config(serde_json::json!({
                "kind": "msgraph",
                "secret": GRAPH_SECRET,
                "connection": {
                    "base_url": self.mock.base_url(),
                    "token_url": self.mock.token_url(),
                    "page_size": 2,
                },
            })),
        )
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        graph_secrets(&self.mock.client_id, &self.mock.client_secret)
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.mock.client_secret.clone(), GRAPH_WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        graph_secrets(&self.mock.client_id, GRAPH_WRONG)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let email = format!("conf-{tag}@contoso.com");
        let id = self
            .mock
            .add_user(&email, &email, &["6fd2c87f-b296-42f0-b197-1e91e994b900"]);
        self.mock.add_group(&format!("group-{tag}"), &[&id]);
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
            StageKind::Delete,
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn msgraph_conforms() {
    let target = Graph {
        mock: GraphMock::start(
            "7f3c2d41-0000-4000-8000-00000000cafe",
            "graph~conformance~secret~42",
        )
        .await,
    };
    check_all(&target).await;
}

const SLACK_SECRET: &str = "deprov/connector/slack";
const SLACK_WRONG: &str = "xoxp-wrong-slack-token-0123";

struct Slack {
    mock: SlackMock,
}

#[async_trait]
impl ConformanceTarget for Slack {
    fn system(&self) -> (String, SystemConfig) {
        (
            "slack".into(),
            config(serde_json::json!({
                "kind": "slack",
                "secret": SLACK_SECRET,
                "connection": {"base_url": self.mock.base_url(), "page_size": 2},
            })),
        )
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        Arc::new(MemorySecrets::default().with(SLACK_SECRET, "token", &self.mock.token))
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.mock.token.clone(), SLACK_WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        Arc::new(MemorySecrets::default().with(SLACK_SECRET, "token", SLACK_WRONG))
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let email = format!("conf-{tag}@example.com");
        let id = self.mock.add_user(&format!("conf-{tag}"), &email);
        self.mock.sign_in(&id);
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
        vec![StageKind::Sessions, StageKind::Disable]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slack_conforms() {
    let target = Slack {
        mock: SlackMock::start("xoxp-slack-conformance-token-42").await,
    };
    check_all(&target).await;
}
