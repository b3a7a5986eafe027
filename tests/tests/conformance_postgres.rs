//! The PostgreSQL connector against the conformance suite, on a real PostgreSQL server.
//! A real server cannot be made to throttle or fail on demand, so the storms are skipped.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use deprov_core::plan::StageKind;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, PersonQuery};
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::postgres::{quote_ident, Postgres, Session};

const SECRET: &str = "deprov/connector/warehouse";
const WRONG: &str = "wrong-password-0123456789";
const HEIR: &str = "data_owner";

struct RealServer {
    pg: Postgres,
    /// Sessions the seeded people keep open, so the sessions stage has something to cut.
    sessions: Mutex<Vec<Session>>,
}

impl RealServer {
    fn password(tag: &str) -> String {
        format!("pw-conf-{tag}-secret")
    }

    fn secrets_with(&self, password: &str) -> Arc<dyn SecretSource> {
        Arc::new(
            MemorySecrets::default()
                .with(SECRET, "user", &self.pg.admin_user)
                .with(SECRET, "password", password),
        )
    }
}

#[async_trait]
impl ConformanceTarget for RealServer {
    fn system(&self) -> (String, SystemConfig) {
        let config: SystemConfig = serde_json::from_value(serde_json::json!({
            "kind": "postgres",
            "secret": SECRET,
            "concurrency": 4,
            "connection": {
                "host": self.pg.host,
                "port": self.pg.port,
                "databases": ["postgres", "app"],
                "reassign_owned_to": HEIR,
                "timeout_secs": 10,
            },
        }))
        .unwrap_or_else(|err| panic!("{err}"));
        ("warehouse".into(), config)
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        self.secrets_with(&self.pg.admin_password)
    }
    fn secret_values(&self) -> Vec<String> {
        let mut values = vec![self.pg.admin_password.clone(), WRONG.to_string()];
        values.extend(["twice", "gone", "auth"].map(Self::password));
        values
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        self.secrets_with(WRONG)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        // A name that needs quoting, like many real ones.
        let role = format!("conf-{tag}");
        let password = Self::password(tag);
        self.pg.create_login_role(&role, &password).await;
        for group in [format!("grp-{tag}-a"), format!("grp-{tag}-b")] {
            self.pg.create_group_role(&group).await;
            self.pg.grant(&group, &role).await;
        }
        self.pg
            .create_table_owned_by("postgres", &format!("{tag}_notes"), &role)
            .await;
        self.pg
            .create_table_owned_by("app", &format!("{tag}_reports"), &role)
            .await;
        let session = self.pg.open_session(&role, &password).await;
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.push(session);
        }
        PersonQuery {
            person_id: format!("P-{tag}"),
            email: format!("{role}@example.com"),
            username: Some(role),
        }
    }
    async fn remove_account(&self, account: &Account) {
        let role = quote_ident(&account.id);
        self.pg
            .execute(&format!(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = '{}'",
                account.id.replace('\'', "''")
            ))
            .await;
        for database in ["app", "postgres"] {
            self.pg
                .execute_in(
                    database,
                    &format!("REASSIGN OWNED BY {role} TO {HEIR}; DROP OWNED BY {role}"),
                )
                .await;
        }
        self.pg.execute(&format!("DROP ROLE {role}")).await;
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
async fn postgres_conforms() {
    let pg = Postgres::start().await;
    pg.create_database("app").await;
    pg.create_group_role(HEIR).await;
    let target = RealServer {
        pg,
        sessions: Mutex::new(Vec::new()),
    };
    check_all(&target).await;
    for tag in ["twice", "gone"] {
        assert_eq!(target.pg.role(&format!("conf-{tag}")).await, None);
        assert_eq!(
            target
                .pg
                .table_owner("app", &format!("{tag}_reports"))
                .await
                .as_deref(),
            Some(HEIR)
        );
    }
}
