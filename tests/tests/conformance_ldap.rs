//! The LDAP connector against the conformance suite, on a real OpenLDAP slapd (ppolicy,
//! refint). A real server cannot be made to throttle or fail on demand, so the storm
//! checks are skipped.

use std::sync::Arc;

use async_trait::async_trait;
use deprov_core::plan::StageKind;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, PersonQuery};
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::slapd::Slapd;

const SECRET: &str = "deprov/connector/directory";
const WRONG: &str = "wrong-password-0123456789";

struct Directory {
    slapd: Slapd,
}

impl Directory {
    fn secrets_with(&self, password: &str) -> Arc<dyn SecretSource> {
        Arc::new(
            MemorySecrets::default()
                .with(SECRET, "bind_dn", &self.slapd.admin_dn)
                .with(SECRET, "password", password),
        )
    }
}

#[async_trait]
impl ConformanceTarget for Directory {
    fn system(&self) -> (String, SystemConfig) {
        let config: SystemConfig = serde_json::from_value(serde_json::json!({
            "kind": "ldap",
            "secret": SECRET,
            "concurrency": 4,
            "connection": {
                "url": self.slapd.url,
                "base_dn": self.slapd.base_dn,
                "dialect": "openldap",
                "page_size": 2,
                "timeout_secs": 10,
            },
        }))
        .unwrap_or_else(|err| panic!("{err}"));
        ("directory".into(), config)
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        self.secrets_with(&self.slapd.admin_password)
    }
    fn secret_values(&self) -> Vec<String> {
        vec![self.slapd.admin_password.clone(), WRONG.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        self.secrets_with(WRONG)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let username = format!("conf-{tag}");
        let email = format!("{username}@example.com");
        let dn = self
            .slapd
            .add_user(&username, &email, &format!("pw-{tag}-secret"));
        // groupOfNames needs a member left once the person is removed.
        let colleague = self.slapd.add_user(
            &format!("colleague-{tag}"),
            &format!("colleague-{tag}@example.com"),
            "colleague-password",
        );
        self.slapd
            .add_group(&format!("group-{tag}-a"), &[&dn, &colleague]);
        self.slapd
            .add_group(&format!("group-{tag}-b"), &[&colleague, &dn]);
        PersonQuery {
            person_id: format!("P-{tag}"),
            email,
            username: Some(username),
        }
    }
    async fn remove_account(&self, account: &Account) {
        // The refint overlay removes the entry from its groups, as a directory does.
        self.slapd.delete(&account.id);
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
async fn ldap_on_slapd_conforms() {
    let target = Directory {
        slapd: Slapd::start(),
    };
    check_all(&target).await;
}
