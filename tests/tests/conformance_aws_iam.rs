//! The AWS IAM connector against the conformance suite, on moto's IAM with authentication
//! enforced (a wrong key is refused as AWS refuses it). The connector talks to moto through
//! a fault proxy, which answers AWS's `Throttling` and `ServiceUnavailable` errors on demand
//! for the throttling-storm and 5xx-then-success checks.

mod iam_moto;

use std::sync::Arc;

use async_trait::async_trait;
use deprov_core::plan::StageKind;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::{Account, PersonQuery};
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::fault_proxy::{FaultProxy, Protocol};
use iam_moto::IamMoto;

const SECRET: &str = "deprov/connector/aws";
const WRONG: &str = "wrong-secret-access-key-0123456789";

struct Moto(IamMoto, FaultProxy);

#[async_trait]
impl ConformanceTarget for Moto {
    fn system(&self) -> (String, SystemConfig) {
        let mut config = self
            .0
            .config(SECRET, serde_json::json!({"protected_users": ["deprov-*"]}));
        config
            .connection
            .insert("endpoint_url".into(), serde_json::json!(self.1.endpoint));
        ("aws".into(), config)
    }
    fn throttle_next(&self, n: u32) -> bool {
        self.1.throttle_next(n);
        true
    }
    fn fail_next(&self, n: u32) -> bool {
        self.1.fail_next(n);
        true
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        self.0.secrets(SECRET)
    }
    /// The secret access keys. Access key ids are identifiers, not secrets (AWS shows them
    /// in consoles and CloudTrail), so they are not on this list.
    fn secret_values(&self) -> Vec<String> {
        vec![self.0.secret_key.clone(), WRONG.to_string()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        self.0.secrets_with(SECRET, &self.0.key_id, WRONG)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let user = format!("conf-{tag}-{}", std::process::id());
        self.0.create_user(&user).await;
        self.0.access_key(&user).await;
        self.0.ssh_key(&user).await;
        self.0.group(&user, &format!("{user}-a")).await;
        self.0.group(&user, &format!("{user}-b")).await;
        PersonQuery {
            person_id: format!("P-{tag}"),
            email: format!("{user}@example.com"),
            username: Some(user),
        }
    }
    async fn remove_account(&self, account: &Account) {
        self.0.delete_user_fully(&account.id).await;
    }
    fn stages(&self) -> Vec<StageKind> {
        vec![
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Credentials,
            StageKind::Delete,
        ]
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_iam_conforms() {
    let moto = iam_moto::start().await;
    let proxy = FaultProxy::start(&moto.endpoint, Protocol::Query).await;
    let target = Moto(moto, proxy);
    check_all(&target).await;
    assert_eq!(
        target.1.injected(),
        6 + 2,
        "every storm reached the connector"
    );
    for tag in ["twice", "gone"] {
        let user = format!("conf-{tag}-{}", std::process::id());
        assert!(target
            .0
            .client
            .get_user()
            .user_name(&user)
            .send()
            .await
            .is_err());
    }
}
