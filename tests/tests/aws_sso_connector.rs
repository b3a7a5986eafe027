//! The AWS IAM Identity Center connector against moto's identitystore and sso-admin
//! (moto_server from `$DEPROV_MOTO_SERVER` or `~/.cache/deprov-venv`), through the real
//! Rust SDKs: a user with two account assignments and a group is discovered, each
//! entitlement removed (verified, applied again as already done), then the user deleted.
//! moto reports a deletion as SUCCEEDED at once, so the in-progress poll and the FAILED
//! path are not exercised here; moto does not check signatures either. Permission sets
//! are made with an explicit `SessionDuration`: moto's default is a number where AWS
//! (and the SDK) has an ISO-8601 string.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use deprov_core::event::{EventKind, Person, TerminationType};
use deprov_core::plan::{build_plan, Action, Discovery, StageKind, Task};
use deprov_core::policy::Policy;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, LifecycleEvent, PersonQuery};
use deprov_tests::conformance::{check_all, ConformanceTarget};
use deprov_tests::fault_proxy::{FaultProxy, Protocol};
use serde_json::{json, Value};

const SECRET: &str = "deprov/connector/sso";

/// Seeds an instance's identity store and sso-admin through boto3 (moto's own venv).
const SEED: &str = r#"import json, sys, boto3
endpoint, user = sys.argv[1], sys.argv[2]
kw = dict(endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
admin = boto3.client("sso-admin", **kw)
store = boto3.client("identitystore", **kw)
inst = admin.list_instances()["Instances"][0]
arn, sid = inst["InstanceArn"], inst["IdentityStoreId"]
uid = store.create_user(IdentityStoreId=sid, UserName=user, DisplayName=user, Name={"GivenName": "Ada", "FamilyName": "L"}, Emails=[{"Value": user + "@example.com", "Primary": True}])["UserId"]
gid = store.create_group(IdentityStoreId=sid, DisplayName="engineers-" + user)["GroupId"]
store.create_group_membership(IdentityStoreId=sid, GroupId=gid, MemberId={"UserId": uid})
account = "123456789012"
sets = []
for name in ["ReadOnly", "Admin"]:
    ps = admin.create_permission_set(InstanceArn=arn, Name=name + user[-6:].replace("-", ""), SessionDuration="PT1H")["PermissionSet"]["PermissionSetArn"]
    admin.provision_permission_set(InstanceArn=arn, PermissionSetArn=ps, TargetType="AWS_ACCOUNT", TargetId=account)
    admin.create_account_assignment(InstanceArn=arn, TargetId=account, TargetType="AWS_ACCOUNT", PermissionSetArn=ps, PrincipalType="USER", PrincipalId=uid)
    sets.append(ps)
# An inline policy of the customer's own, which the deny statement must leave alone.
admin.put_inline_policy_to_permission_set(InstanceArn=arn, PermissionSetArn=sets[0], InlinePolicy=json.dumps({"Version": "2012-10-17", "Statement": [{"Sid": "ReadLogs", "Effect": "Allow", "Action": "logs:Get*", "Resource": "*"}]}))
# Another principal on the same set: must not be listed as the user's.
admin.create_account_assignment(InstanceArn=arn, TargetId=account, TargetType="AWS_ACCOUNT", PermissionSetArn=sets[0], PrincipalType="GROUP", PrincipalId=gid)
print(json.dumps({"instance_arn": arn, "identity_store_id": sid, "user_id": uid, "group_id": gid, "sets": sets, "account": account}))
"#;

fn moto_server() -> PathBuf {
    match std::env::var("DEPROV_MOTO_SERVER") {
        Ok(path) => PathBuf::from(path),
        Err(_) => PathBuf::from(std::env::var("HOME").unwrap_or_default())
            .join(".cache/deprov-venv/bin/moto_server"),
    }
}

struct Moto {
    child: Child,
    endpoint: String,
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start() -> Moto {
    let server = moto_server();
    assert!(
        server.exists(),
        "{} not found: run tests/run.sh (it installs moto[server])",
        server.display()
    );
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .unwrap_or_else(|err| panic!("no free port: {err}"));
    let child = Command::new(server)
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|err| panic!("cannot start moto: {err}"));
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Moto {
        child,
        endpoint: format!("http://127.0.0.1:{port}"),
    }
}

fn seed(moto: &Moto, user: &str) -> Value {
    let python = moto_server().with_file_name("python");
    let out = Command::new(python)
        .args(["-c", SEED, &moto.endpoint, user])
        .output()
        .unwrap_or_else(|err| panic!("seed: {err}"));
    assert!(
        out.status.success(),
        "seed failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("seed output: {err}"))
}

fn connector(moto: &Moto, seeded: &Value) -> Arc<dyn Connector> {
    connector_with(moto, seeded, false)
}

fn connector_with(moto: &Moto, seeded: &Value, deny_policy: bool) -> Arc<dyn Connector> {
    let config = serde_json::from_value(json!({
        "kind": "aws_sso",
        "secret": SECRET,
        "connection": {
            "endpoint_url": moto.endpoint,
            "instance_arn": seeded["instance_arn"],
            "identity_store_id": seeded["identity_store_id"],
            "deny_policy": deny_policy,
        },
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    let secrets: Arc<dyn SecretSource> = Arc::new(
        MemorySecrets::default()
            .with(SECRET, "access_key_id", "AKIATESTTESTTESTTEST")
            .with(SECRET, "secret_access_key", "not-a-real-secret"),
    );
    deprov_connectors::build("sso", &config, secrets).unwrap_or_else(|err| panic!("build: {err}"))
}

fn plan(connector: &dyn Connector, account: &Account) -> Vec<Task> {
    let text = "version = \"sso-test\"\n[scenarios.termination]\nstages = [\"entitlements\", \"delete\"]\n[systems.sso]\nkind = \"aws_sso\"\n";
    let policy = Policy::parse(text).unwrap_or_else(|err| panic!("{err}"));
    let event = LifecycleEvent {
        event_id: format!("evt-{}", account.id),
        source: "sso-test".into(),
        kind: EventKind::Termination,
        termination_type: Some(TerminationType::Involuntary),
        person: Person {
            id: format!("P-{}", account.username),
            email: format!("{}@example.com", account.username),
            display_name: None,
            usernames: [("sso".to_string(), account.username.clone())].into(),
            roles: Vec::new(),
            manager_email: None,
        },
        effective_at: Utc::now().fixed_offset(),
        reason: None,
        requested_by: "sso-test".into(),
        transfer: None,
        systems: Vec::new(),
    };
    let plan = build_plan(
        &event,
        &policy,
        &[Discovery {
            system: "sso".into(),
            supports: connector.supports().to_vec(),
            result: Ok(vec![account.clone()]),
        }],
    )
    .unwrap_or_else(|err| panic!("plan: {err}"));
    plan.tasks().cloned().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assignments_and_groups_are_removed_then_the_user_deleted() {
    let moto = start().await;
    let user = format!("ada-{}", std::process::id());
    let seeded = seed(&moto, &user);
    let connector = connector(&moto, &seeded);
    let user_id = seeded["user_id"].as_str().unwrap_or_default().to_string();

    let nobody = connector
        .discover(&PersonQuery {
            person_id: "P-nobody".into(),
            email: "nobody@example.com".into(),
            username: Some("nobody".into()),
        })
        .await
        .unwrap_or_else(|err| panic!("discover nobody: {err}"));
    assert!(nobody.is_empty(), "{nobody:?}");

    let accounts = connector
        .discover(&PersonQuery {
            person_id: format!("P-{user}"),
            email: format!("{user}@example.com"),
            username: Some(user.clone()),
        })
        .await
        .unwrap_or_else(|err| panic!("discover: {err}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    let account = accounts[0].clone();
    assert_eq!(account.id, user_id);
    assert_eq!(account.username, user);
    assert_eq!(
        account.email.as_deref(),
        Some(format!("{user}@example.com").as_str())
    );
    let mut ids: Vec<(String, String)> = account
        .entitlements
        .iter()
        .map(|e| (e.kind.clone(), e.id.clone()))
        .collect();
    ids.sort();
    let mut expected: Vec<(String, String)> = seeded["sets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|set| {
            (
                "account_assignment".to_string(),
                format!("123456789012/{set}"),
            )
        })
        .collect();
    expected.push((
        "group".to_string(),
        seeded["group_id"].as_str().unwrap_or_default().to_string(),
    ));
    expected.sort();
    assert_eq!(ids, expected, "{account:?}");
    assert!(account
        .entitlements
        .iter()
        .all(|e| e.kind != "account_assignment" || e.name.contains("in account 123456789012")));

    let tasks = plan(connector.as_ref(), &account);
    let removals: Vec<&Task> = tasks
        .iter()
        .filter(|t| t.action == Action::RemoveEntitlement)
        .collect();
    assert_eq!(removals.len(), 3, "{tasks:?}");
    for task in &removals {
        let before = connector
            .verify(task)
            .await
            .unwrap_or_else(|err| panic!("verify before: {err}"));
        assert!(!before.verified, "{:?}", before.observed);
        let applied = connector
            .apply(task)
            .await
            .unwrap_or_else(|err| panic!("apply {:?}: {err}", task.target));
        assert_eq!(applied, Applied::Changed, "{:?}", task.target);
        let evidence = connector
            .verify(task)
            .await
            .unwrap_or_else(|err| panic!("verify: {err}"));
        assert!(evidence.verified, "{:?}", evidence.observed);
        assert!(
            evidence.observed["note"]
                .as_str()
                .is_some_and(|n| n.contains("until they expire")),
            "{:?}",
            evidence.observed
        );
        let again = connector
            .apply(task)
            .await
            .unwrap_or_else(|err| panic!("apply again: {err}"));
        assert_eq!(again, Applied::AlreadyDone, "{:?}", task.target);
    }
    let after = connector
        .discover(&PersonQuery {
            person_id: format!("P-{user}"),
            email: format!("{user}@example.com"),
            username: Some(user.clone()),
        })
        .await
        .unwrap_or_else(|err| panic!("discover after: {err}"));
    assert_eq!(after.len(), 1);
    assert!(after[0].entitlements.is_empty(), "{after:?}");

    let delete = tasks
        .iter()
        .find(|t| t.action == Action::Delete)
        .unwrap_or_else(|| panic!("no delete task in {tasks:?}"));
    assert!(connector.supports().contains(&StageKind::Delete));
    let before = connector
        .verify(delete)
        .await
        .unwrap_or_else(|err| panic!("verify delete before: {err}"));
    assert!(!before.verified);
    assert_eq!(
        connector
            .apply(delete)
            .await
            .unwrap_or_else(|err| panic!("delete: {err}")),
        Applied::Changed
    );
    let evidence = connector
        .verify(delete)
        .await
        .unwrap_or_else(|err| panic!("verify delete: {err}"));
    assert!(evidence.verified, "{:?}", evidence.observed);
    assert_eq!(
        connector
            .apply(delete)
            .await
            .unwrap_or_else(|err| panic!("delete again: {err}")),
        Applied::AlreadyDone
    );
    let gone = connector
        .discover(&PersonQuery {
            person_id: format!("P-{user}"),
            email: format!("{user}@example.com"),
            username: Some(user.clone()),
        })
        .await
        .unwrap_or_else(|err| panic!("discover gone: {err}"));
    assert!(gone.is_empty(), "{gone:?}");
}

/// The inline policy of a permission set, read with boto3 (not through the connector).
fn inline_policy(moto: &Moto, seeded: &Value, set: &str) -> Value {
    let python = moto_server().with_file_name("python");
    let code = r#"import json, sys, boto3
admin = boto3.client("sso-admin", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
print(admin.get_inline_policy_for_permission_set(InstanceArn=sys.argv[2], PermissionSetArn=sys.argv[3])["InlinePolicy"] or "{}")
"#;
    let out = Command::new(python)
        .args([
            "-c",
            code,
            &moto.endpoint,
            seeded["instance_arn"].as_str().unwrap_or_default(),
            set,
        ])
        .output()
        .unwrap_or_else(|err| panic!("read policy: {err}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|err| panic!("policy JSON: {err}"))
}

fn sids(policy: &Value) -> Vec<String> {
    policy["Statement"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s["Sid"].as_str().map(str::to_string))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deny_policy_disables_every_session_and_a_restore_lifts_it() {
    let moto = start().await;
    let user = format!("grace-{}", std::process::id());
    let seeded = seed(&moto, &user);
    let plain = connector(&moto, &seeded);
    assert!(!plain.supports().contains(&StageKind::Disable));
    let connector = connector_with(&moto, &seeded, true);
    assert!(connector.supports().contains(&StageKind::Disable));
    assert!(connector.supports().contains(&StageKind::Restore));
    let user_id = seeded["user_id"].as_str().unwrap_or_default().to_string();
    let sets: Vec<String> = seeded["sets"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|s| s.as_str().map(str::to_string))
        .collect();
    let task = |action: Action| Task {
        task_id: format!("t-{}", action.as_str()),
        run_id: "r-deny".into(),
        system: "sso".into(),
        action,
        account: deprov_core::plan::AccountRef {
            id: user_id.clone(),
            username: user.clone(),
        },
        target: None,
        person_id: format!("P-{user}"),
    };

    let disable = task(Action::Disable);
    assert!(
        !connector
            .verify(&disable)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
    assert_eq!(
        connector
            .apply(&disable)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    let evidence = connector
        .verify(&disable)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(evidence.verified, "{:?}", evidence.observed);
    assert!(evidence.observed["permission_sets"]
        .as_array()
        .is_some_and(|sets| sets.len() >= 2));
    assert_eq!(
        connector
            .apply(&disable)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::AlreadyDone
    );
    for set in &sets {
        let policy = inline_policy(&moto, &seeded, set);
        assert!(
            sids(&policy).contains(&"DeprovDeniedUsers".to_string()),
            "{policy}"
        );
        let denied = policy["Statement"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|s| s["Sid"] == "DeprovDeniedUsers")
            .cloned()
            .unwrap_or_default();
        assert_eq!(denied["Effect"], "Deny");
        assert_eq!(
            denied["Condition"]["StringEquals"]["identitystore:userId"],
            json!([user_id])
        );
    }
    assert!(sids(&inline_policy(&moto, &seeded, &sets[0])).contains(&"ReadLogs".to_string()));

    // A rehire lifts it, and the customer's own statement is still there.
    let enable = task(Action::Enable);
    assert_eq!(
        connector
            .apply(&enable)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    assert!(
        connector
            .verify(&enable)
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
    assert_eq!(sids(&inline_policy(&moto, &seeded, &sets[0])), ["ReadLogs"]);
    assert!(sids(&inline_policy(&moto, &seeded, &sets[1])).is_empty());

    // Orphan sweeps see the identity store's users (no sign-in time is kept there).
    let listed = connector
        .list_accounts()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let found = listed
        .iter()
        .find(|a| a.id == user_id)
        .unwrap_or_else(|| panic!("{user_id} not listed: {listed:?}"));
    assert_eq!(found.username, user);
    assert_eq!(
        found.email.as_deref(),
        Some(format!("{user}@example.com").as_str())
    );
    assert!(found.last_activity.is_none());
}

const GOOD_KEY_ID: &str = "AKIASSOCONFORMANCE01";
const GOOD_SECRET: &str = "sso-conformance-secret-0123456789";
const WRONG_KEY_ID: &str = "AKIASSOWRONGKEY00001";
const WRONG_SECRET: &str = "sso-wrong-secret-9876543210";

/// moto's sso-admin and identitystore behind the fault proxy, which throttles and fails on
/// demand and refuses a key other than the configured one (moto checks no signature here).
struct Sso {
    moto: Moto,
    proxy: FaultProxy,
    instance: Value,
}

fn sso_secrets(key_id: &str, secret: &str) -> Arc<dyn SecretSource> {
    Arc::new(
        MemorySecrets::default()
            .with(SECRET, "access_key_id", key_id)
            .with(SECRET, "secret_access_key", secret),
    )
}

#[async_trait::async_trait]
impl ConformanceTarget for Sso {
    fn system(&self) -> (String, deprov_core::policy::SystemConfig) {
        let config = serde_json::from_value(json!({
            "kind": "aws_sso",
            "secret": SECRET,
            "connection": {
                "endpoint_url": self.proxy.endpoint,
                "instance_arn": self.instance["instance_arn"],
                "identity_store_id": self.instance["identity_store_id"],
                "deny_policy": true,
            },
        }))
        .unwrap_or_else(|err| panic!("{err}"));
        ("sso".into(), config)
    }
    fn secrets(&self) -> Arc<dyn SecretSource> {
        sso_secrets(GOOD_KEY_ID, GOOD_SECRET)
    }
    fn secret_values(&self) -> Vec<String> {
        vec![GOOD_SECRET.into(), WRONG_SECRET.into()]
    }
    fn wrong_secrets(&self) -> Arc<dyn SecretSource> {
        sso_secrets(WRONG_KEY_ID, WRONG_SECRET)
    }
    async fn seed_person(&self, tag: &str) -> PersonQuery {
        let user = format!("conf-{tag}-{}", std::process::id());
        seed(&self.moto, &user);
        PersonQuery {
            person_id: format!("P-{tag}"),
            email: format!("{user}@example.com"),
            username: Some(user),
        }
    }
    async fn remove_account(&self, account: &Account) {
        let python = moto_server().with_file_name("python");
        let code = r#"import sys, boto3
store = boto3.client("identitystore", endpoint_url=sys.argv[1], region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
store.delete_user(IdentityStoreId=sys.argv[2], UserId=sys.argv[3])
"#;
        let out = Command::new(python)
            .args([
                "-c",
                code,
                &self.moto.endpoint,
                self.instance["identity_store_id"]
                    .as_str()
                    .unwrap_or_default(),
                &account.id,
            ])
            .output()
            .unwrap_or_else(|err| panic!("delete user: {err}"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    fn throttle_next(&self, n: u32) -> bool {
        self.proxy.throttle_next(n);
        true
    }
    fn fail_next(&self, n: u32) -> bool {
        self.proxy.fail_next(n);
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_sso_conforms() {
    let moto = start().await;
    let instance = seed(&moto, &format!("conf-instance-{}", std::process::id()));
    let proxy = FaultProxy::start(&moto.endpoint, Protocol::Json).await;
    proxy.require_key_id(GOOD_KEY_ID);
    let target = Sso {
        moto,
        proxy,
        instance,
    };
    check_all(&target).await;
    assert!(
        target.proxy.injected() >= 6 + 2,
        "every storm reached the connector"
    );
}
