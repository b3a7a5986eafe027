//! moto's IAM on a loopback port with IAM authentication enforced, for the aws_iam
//! connector's tests: moto's server from `$DEPROV_MOTO_SERVER`'s venv (or
//! `~/.cache/deprov-venv`), started through `tests/iam/moto_iam.py`, which adds the
//! service-specific credential calls moto lacks. The first three requests are
//! unauthenticated (`INITIAL_NO_AUTH_ACTION_COUNT`): they create the admin user deprov signs
//! as; every later request must be signed by a real key of moto's IAM, so a wrong key is
//! refused as AWS would refuse it.

#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iam::Client;
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;

pub const ADMIN: &str = "deprov-admin";
pub const PASSWORD: &str = "Console-Pa55word!9876";
pub const CERT: &str = include_str!("cert.pem");
pub const SSH_KEY: &str = include_str!("ssh_key.pub");

/// The venv's python, next to moto_server.
fn python() -> PathBuf {
    let server = match std::env::var("DEPROV_MOTO_SERVER") {
        Ok(path) => PathBuf::from(path),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/deprov-venv/bin/moto_server"),
    };
    let python = server.with_file_name("python");
    assert!(
        python.exists(),
        "{} not found: run tests/run.sh (it installs moto[server])",
        python.display()
    );
    python
}

pub struct IamMoto {
    child: Child,
    pub endpoint: String,
    pub key_id: String,
    pub secret_key: String,
    /// Signed as the admin: for seeding and reading behind the connector's back.
    pub client: Client,
}

impl Drop for IamMoto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn client(endpoint: &str, key_id: &str, secret_key: &str) -> Client {
    let config = aws_sdk_iam::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(key_id, secret_key, None, None, "test"))
        .build();
    Client::from_conf(config)
}

pub async fn start() -> IamMoto {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("no free port: {err}"));
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("iam/moto_iam.py");
    let child = Command::new(python())
        .arg(script)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .env("INITIAL_NO_AUTH_ACTION_COUNT", "3")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start moto: {err}"));
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The three unauthenticated requests: the admin, its policy, its key.
    let bootstrap = client(&endpoint, "AKIABOOTSTRAP0000000", "bootstrap");
    bootstrap
        .create_user()
        .user_name(ADMIN)
        .send()
        .await
        .unwrap_or_else(|err| panic!("create admin: {err:?}"));
    bootstrap
        .put_user_policy()
        .user_name(ADMIN)
        .policy_name("everything")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap_or_else(|err| panic!("admin policy: {err:?}"));
    let key = bootstrap
        .create_access_key()
        .user_name(ADMIN)
        .send()
        .await
        .unwrap_or_else(|err| panic!("admin key: {err:?}"));
    let key = key
        .access_key()
        .unwrap_or_else(|| panic!("CreateAccessKey returned no key"));
    let (key_id, secret_key) = (
        key.access_key_id().to_string(),
        key.secret_access_key().to_string(),
    );
    IamMoto {
        client: client(&endpoint, &key_id, &secret_key),
        child,
        endpoint,
        key_id,
        secret_key,
    }
}

impl IamMoto {
    pub fn secrets(&self, name: &str) -> Arc<dyn SecretSource> {
        self.secrets_with(name, &self.key_id, &self.secret_key)
    }

    pub fn secrets_with(
        &self,
        name: &str,
        key_id: &str,
        secret_key: &str,
    ) -> Arc<dyn SecretSource> {
        Arc::new(
            MemorySecrets::default()
                .with(name, "access_key_id", key_id)
                .with(name, "secret_access_key", secret_key),
        )
    }

    pub fn config(&self, secret: &str, connection: serde_json::Value) -> SystemConfig {
        let mut connection = connection;
        connection["endpoint_url"] = serde_json::json!(self.endpoint);
        serde_json::from_value(serde_json::json!({
            "kind": "aws_iam",
            "secret": secret,
            "connection": connection,
        }))
        .unwrap_or_else(|err| panic!("{err}"))
    }

    pub async fn create_user(&self, name: &str) {
        self.client
            .create_user()
            .user_name(name)
            .send()
            .await
            .unwrap_or_else(|err| panic!("create user {name}: {err:?}"));
    }

    pub async fn login_profile(&self, name: &str) {
        self.client
            .create_login_profile()
            .user_name(name)
            .password(PASSWORD)
            .send()
            .await
            .unwrap_or_else(|err| panic!("login profile {name}: {err:?}"));
    }

    /// Returns (id, secret) of a new access key.
    pub async fn access_key(&self, name: &str) -> (String, String) {
        let out = self
            .client
            .create_access_key()
            .user_name(name)
            .send()
            .await
            .unwrap_or_else(|err| panic!("access key {name}: {err:?}"));
        let key = out
            .access_key()
            .unwrap_or_else(|| panic!("CreateAccessKey returned no key"));
        (
            key.access_key_id().to_string(),
            key.secret_access_key().to_string(),
        )
    }

    pub async fn group(&self, user: &str, group: &str) {
        self.client
            .create_group()
            .group_name(group)
            .send()
            .await
            .unwrap_or_else(|err| panic!("group {group}: {err:?}"));
        self.client
            .add_user_to_group()
            .group_name(group)
            .user_name(user)
            .send()
            .await
            .unwrap_or_else(|err| panic!("add {user} to {group}: {err:?}"));
    }

    pub async fn ssh_key(&self, user: &str) -> String {
        let out = self
            .client
            .upload_ssh_public_key()
            .user_name(user)
            .ssh_public_key_body(SSH_KEY.trim())
            .send()
            .await
            .unwrap_or_else(|err| panic!("ssh key {user}: {err:?}"));
        out.ssh_public_key()
            .map(|k| k.ssh_public_key_id().to_string())
            .unwrap_or_default()
    }

    /// Deletes a user the way an admin would, everything first.
    pub async fn delete_user_fully(&self, user: &str) {
        let c = &self.client;
        let _ = c.delete_login_profile().user_name(user).send().await;
        if let Ok(keys) = c.list_access_keys().user_name(user).send().await {
            for key in keys.access_key_metadata() {
                if let Some(id) = key.access_key_id() {
                    let _ = c
                        .delete_access_key()
                        .user_name(user)
                        .access_key_id(id)
                        .send()
                        .await;
                }
            }
        }
        if let Ok(keys) = c.list_ssh_public_keys().user_name(user).send().await {
            for key in keys.ssh_public_keys() {
                let _ = c
                    .delete_ssh_public_key()
                    .user_name(user)
                    .ssh_public_key_id(key.ssh_public_key_id())
                    .send()
                    .await;
            }
        }
        if let Ok(groups) = c.list_groups_for_user().user_name(user).send().await {
            for group in groups.groups() {
                let _ = c
                    .remove_user_from_group()
                    .user_name(user)
                    .group_name(group.group_name())
                    .send()
                    .await;
            }
        }
        if let Ok(attached) = c.list_attached_user_policies().user_name(user).send().await {
            for policy in attached.attached_policies() {
                if let Some(arn) = policy.policy_arn() {
                    let _ = c
                        .detach_user_policy()
                        .user_name(user)
                        .policy_arn(arn)
                        .send()
                        .await;
                }
            }
        }
        c.delete_user()
            .user_name(user)
            .send()
            .await
            .unwrap_or_else(|err| panic!("delete {user}: {err:?}"));
    }
}
