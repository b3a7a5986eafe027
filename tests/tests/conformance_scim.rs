//! The SCIM connector against the conformance suite: on the real scim2-server, and on the
//! in-process RFC 7644 service provider for the storms a real server cannot be made to
//! produce on demand.

use std::sync::Arc;

use async_trait::async_trait;
use deprov_core::plan::StageKind;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, PersonQuery};
use deprov_demo::ScimProvider;
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::Scim2Server;

const SECRET: &str = "deprov/connector/app";
const WRONG: &str = "wrong-token-0123456789";

fn system(base_url: &str) -> (String, SystemConfig) {
    let config: SystemConfig = serde_json::from_value(serde_json::json!({
        "kind": "scim",
        "secret": SECRET,
        "concurrency": 4,
        "connection": {"base_url": base_url, "page_size": 2},
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    ("app".into(), config)
}

fn secrets(token: &str) -> Arc<dyn SecretSource> {
    Arc::new(MemorySecrets::default().with(SECRET, "token", token))
}

struct RealServer {
    server: Scim2Server,
}

#[async_trait]
impl ConformanceTarget for RealServer {
    fn system(&self) -> (String, SystemConfig) {
        system(&self.server.base_url)
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        secrets(&self.server.token)
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.server.token.clone(), WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        secrets(WRONG)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let username = format!("conf-{tag}");
        let email = format!("{username}@example.com");
        let id = self.server.create_user(&username, &email).await;
        self.server
            .create_group(&format!("group-{tag}-a"), &[&id])
            .await;
        self.server
            .create_group(&format!("group-{tag}-b"), &[&id])
            .await;
        PersonQuery {
            person_id: format!("P-{tag}"),
            email,
            username: Some(username),
        }
    }
    async fn remove_account(&self, account: &Account) {
        let (status, _) = self
            .server
            .request(
                reqwest::Method::DELETE,
                &format!("/Users/{}", account.id),
                None,
            )
            .await;
        assert_eq!(status, 204);
        // scim2-server leaves deleted users in their groups' member lists; a directory
        // that removed the account removes its memberships too.
        for entitlement in &account.entitlements {
            self.server
                .request(
                    reqwest::Method::DELETE,
                    &format!("/Groups/{}", entitlement.id),
                    None,
                )
                .await;
        }
    }
    fn stages(&self) -> Vec<StageKind> {
        vec![
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Delete,
        ]
    }
}

struct InProcess {
    provider: ScimProvider,
    token: String,
}

#[async_trait]
impl ConformanceTarget for InProcess {
    fn system(&self) -> (String, SystemConfig) {
        system(&self.provider.base_url())
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        secrets(&self.token)
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.token.clone(), WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        secrets(WRONG)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let username = format!("conf-{tag}");
        let email = format!("{username}@example.com");
        let id = self.provider.add_user(&username, &email, &username, true);
        self.provider.add_group(&format!("group-{tag}"), &[&id]);
        PersonQuery {
            person_id: format!("P-{tag}"),
            email,
            username: Some(username),
        }
    }
    async fn remove_account(&self, account: &Account) {
        let response = reqwest::Client::new()
            .delete(format!("{}/Users/{}", self.provider.base_url(), account.id))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{err}"));
        assert_eq!(response.status().as_u16(), 204);
    }
    fn throttle_next(&self, n: u32) -> bool {
        self.provider.throttle_next(n, 1);
        true
    }
    fn fail_next(&self, n: u32) -> bool {
        self.provider.fail_next(n);
        true
    }
    fn stages(&self) -> Vec<StageKind> {
        vec![
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Delete,
        ]
    }
}

#[tokio::test]
async fn scim_on_scim2_server_conforms() {
    let target = RealServer {
        server: Scim2Server::start().await,
    };
    check_all(&target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scim_on_an_rfc_7644_provider_conforms_including_storms() {
    let token = "in-process-token-42".to_string();
    let provider = ScimProvider::start("conformance", &token)
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    let target = InProcess { provider, token };
    check_all(&target).await;
}
