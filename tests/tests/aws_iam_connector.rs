//! The AWS IAM connector against moto's IAM (authentication enforced), through the real
//! Rust SDK: discovery of everything a user holds, each stage applied, verified, applied
//! again, deletion in AWS's documented order, disable-only mode, refused keys, sweeps.

mod iam_moto;

use std::sync::atomic::{AtomicU32, Ordering};

use chrono::Utc;
use deprov_core::event::{EventKind, Person, TerminationType};
use deprov_core::plan::{build_plan, Action, Discovery, StageKind, Task};
use deprov_core::policy::Policy;
use deprov_core::{Account, Applied, Connector, ErrorKind, LifecycleEvent, PersonQuery};
use iam_moto::IamMoto;
use serde_json::json;

const SECRET: &str = "deprov/connector/aws";

static SEQ: AtomicU32 = AtomicU32::new(0);

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

fn connector(moto: &IamMoto, connection: serde_json::Value) -> std::sync::Arc<dyn Connector> {
    deprov_connectors::build(
        "aws",
        &moto.config(SECRET, connection),
        moto.secrets(SECRET),
    )
    .unwrap_or_else(|err| panic!("build: {err}"))
}

fn query(user: &str) -> PersonQuery {
    PersonQuery {
        person_id: format!("P-{user}"),
        email: format!("{user}@example.com"),
        username: Some(user.to_string()),
    }
}

/// The tasks the planner makes for a termination running `stages` on this account.
fn plan(connector: &dyn Connector, account: &Account, stages: &[StageKind]) -> Vec<Task> {
    let stages: Vec<&str> = stages.iter().map(|s| s.as_str()).collect();
    let text = format!(
        "version = \"iam-test\"\n[scenarios.termination]\nstages = {stages:?}\n[systems.aws]\nkind = \"aws_iam\"\n"
    );
    let policy = Policy::parse(&text).unwrap_or_else(|err| panic!("{err}"));
    let event = LifecycleEvent {
        event_id: unique("evt"),
        source: "iam-test".into(),
        kind: EventKind::Termination,
        termination_type: Some(TerminationType::Involuntary),
        person: Person {
            id: format!("P-{}", account.username),
            email: format!("{}@example.com", account.username),
            display_name: None,
            usernames: [("aws".to_string(), account.username.clone())].into(),
            roles: Vec::new(),
            manager_email: None,
        },
        effective_at: Utc::now().fixed_offset(),
        reason: None,
        requested_by: "iam-test".into(),
        transfer: None,
        systems: Vec::new(),
    };
    let plan = build_plan(
        &event,
        &policy,
        &[Discovery {
            system: "aws".into(),
            supports: connector.supports().to_vec(),
            result: Ok(vec![account.clone()]),
        }],
    )
    .unwrap_or_else(|err| panic!("plan: {err}"));
    plan.tasks().cloned().collect()
}

async fn discover_one(connector: &dyn Connector, user: &str) -> Account {
    let accounts = connector
        .discover(&query(user))
        .await
        .unwrap_or_else(|err| panic!("discover: {err}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    accounts
        .into_iter()
        .next()
        .unwrap_or_else(|| unreachable!())
}

fn kinds<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut kinds: Vec<&str> = items.collect();
    kinds.sort();
    kinds
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_stage_applies_verifies_and_is_idempotent() {
    let moto = iam_moto::start().await;
    let iam = &moto.client;
    let user = unique("ada");
    moto.create_user(&user).await;
    moto.login_profile(&user).await;
    let (_, key_secret_one) = moto.access_key(&user).await;
    let (_, key_secret_two) = moto.access_key(&user).await;
    moto.ssh_key(&user).await;
    iam.upload_signing_certificate()
        .user_name(&user)
        .certificate_body(iam_moto::CERT)
        .send()
        .await
        .unwrap_or_else(|err| panic!("signing certificate: {err:?}"));
    let device = iam
        .create_virtual_mfa_device()
        .virtual_mfa_device_name(format!("{user}-mfa"))
        .send()
        .await
        .unwrap_or_else(|err| panic!("virtual mfa: {err:?}"));
    let serial = device
        .virtual_mfa_device()
        .map(|d| d.serial_number().to_string())
        .unwrap_or_default();
    iam.enable_mfa_device()
        .user_name(&user)
        .serial_number(&serial)
        .authentication_code1("123456")
        .authentication_code2("654321")
        .send()
        .await
        .unwrap_or_else(|err| panic!("enable mfa: {err:?}"));
    iam.create_service_specific_credential()
        .user_name(&user)
        .service_name("codecommit.amazonaws.com")
        .send()
        .await
        .unwrap_or_else(|err| panic!("service credential: {err:?}"));
    moto.group(&user, &format!("{user}-eng")).await;
    moto.group(&user, &format!("{user}-ops")).await;
    let policy = iam
        .create_policy()
        .policy_name(format!("{user}-read"))
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap_or_else(|err| panic!("policy: {err:?}"));
    let arn = policy
        .policy()
        .and_then(|p| p.arn())
        .unwrap_or_default()
        .to_string();
    iam.attach_user_policy()
        .user_name(&user)
        .policy_arn(&arn)
        .send()
        .await
        .unwrap_or_else(|err| panic!("attach: {err:?}"));
    iam.put_user_policy()
        .user_name(&user)
        .policy_name("inline-extra")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sqs:*","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap_or_else(|err| panic!("inline: {err:?}"));

    let connector = connector(&moto, json!({"protected_users": ["deprov-*"]}));
    let account = discover_one(connector.as_ref(), &user).await;
    assert!(account.active);
    assert_eq!(
        kinds(account.entitlements.iter().map(|e| e.kind.as_str())),
        ["group", "group", "inline_policy", "managed_policy"]
    );
    assert!(account.entitlements.iter().any(|e| e.id == arn));
    assert_eq!(
        kinds(account.credentials.iter().map(|c| c.kind.as_str())),
        [
            "access_key",
            "access_key",
            "console_password",
            "mfa_device",
            "service_specific_credential",
            "signing_certificate",
            "ssh_public_key"
        ]
    );
    assert!(account.credentials.iter().any(|c| c.id == serial));

    let tasks = plan(
        connector.as_ref(),
        &account,
        &[
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Credentials,
            StageKind::Delete,
        ],
    );
    assert_eq!(tasks.len(), 1 + 4 + 7 + 1);
    let secrets = [key_secret_one, key_secret_two, moto.secret_key.clone()];
    for task in &tasks {
        let what = format!("{} {:?}", task.action.as_str(), task.target);
        let first = connector
            .apply(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: {err}"));
        // Disable already removed the console password.
        let expected = match &task.target {
            Some(t) if t.kind == "console_password" => Applied::AlreadyDone,
            _ => Applied::Changed,
        };
        assert_eq!(first, expected, "{what}");
        let evidence = connector
            .verify(task)
            .await
            .unwrap_or_else(|err| panic!("{what}: verify: {err}"));
        assert!(evidence.verified, "{what}: {}", evidence.observed);
        let observed = evidence.observed.to_string();
        assert!(
            secrets.iter().all(|s| !observed.contains(s.as_str())),
            "{observed}"
        );
        assert_eq!(
            connector
                .apply(task)
                .await
                .unwrap_or_else(|err| panic!("{what}: again: {err}")),
            Applied::AlreadyDone,
            "{what}: second apply"
        );
        if task.action == Action::Disable {
            // Read behind the connector's back: no password, every key inactive.
            let profile = iam.get_login_profile().user_name(&user).send().await;
            assert!(profile.is_err());
            let keys = iam
                .list_access_keys()
                .user_name(&user)
                .send()
                .await
                .unwrap_or_else(|err| panic!("{err:?}"));
            assert_eq!(keys.access_key_metadata().len(), 2);
            assert!(keys
                .access_key_metadata()
                .iter()
                .all(|k| k.status().map(|s| s.as_str()) == Some("Inactive")));
        }
    }
    // The user and its virtual MFA device are gone.
    assert!(iam.get_user().user_name(&user).send().await.is_err());
    let devices = iam
        .list_virtual_mfa_devices()
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"));
    assert!(devices
        .virtual_mfa_devices()
        .iter()
        .all(|d| d.serial_number() != serial));
    assert!(connector
        .discover(&query(&user))
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_alone_removes_everything_in_order_and_a_deleted_user_is_done() {
    let moto = iam_moto::start().await;
    let user = unique("bob");
    moto.create_user(&user).await;
    moto.login_profile(&user).await;
    moto.access_key(&user).await;
    moto.ssh_key(&user).await;
    moto.group(&user, &format!("{user}-eng")).await;
    moto.client
        .put_user_policy()
        .user_name(&user)
        .policy_name("inline")
        .policy_document(r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"sqs:*","Resource":"*"}]}"#)
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"));
    let connector = connector(&moto, json!({}));
    let account = discover_one(connector.as_ref(), &user).await;
    let tasks = plan(connector.as_ref(), &account, &[StageKind::Delete]);
    assert_eq!(tasks.len(), 1);
    let delete = &tasks[0];
    assert_eq!(
        connector
            .apply(delete)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    let evidence = connector
        .verify(delete)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(evidence.verified);
    assert_eq!(evidence.observed["GetUser"]["error"], "NoSuchEntity");
    assert_eq!(
        connector
            .apply(delete)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::AlreadyDone
    );

    // A user removed behind deprov's back: every task is already done.
    let gone = unique("gone");
    moto.create_user(&gone).await;
    moto.access_key(&gone).await;
    moto.group(&gone, &format!("{gone}-eng")).await;
    let account = discover_one(connector.as_ref(), &gone).await;
    let tasks = plan(
        connector.as_ref(),
        &account,
        &[
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Credentials,
            StageKind::Delete,
        ],
    );
    moto.delete_user_fully(&gone).await;
    for task in &tasks {
        assert_eq!(
            connector
                .apply(task)
                .await
                .unwrap_or_else(|e| panic!("{e}")),
            Applied::AlreadyDone,
            "{}",
            task.action.as_str()
        );
        assert!(
            connector
                .verify(task)
                .await
                .unwrap_or_else(|e| panic!("{e}"))
                .verified
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disable_only_leaves_the_user_and_its_keys_inactive() {
    let moto = iam_moto::start().await;
    let user = unique("cat");
    moto.create_user(&user).await;
    moto.login_profile(&user).await;
    let (key, _) = moto.access_key(&user).await;
    let connector = connector(&moto, json!({"mode": "disable_only"}));
    assert!(!connector.supports().contains(&StageKind::Delete));
    let account = discover_one(connector.as_ref(), &user).await;
    let tasks = plan(
        connector.as_ref(),
        &account,
        &[StageKind::Disable, StageKind::Delete],
    );
    assert_eq!(
        tasks.iter().map(|t| t.action).collect::<Vec<_>>(),
        [Action::Disable]
    );
    assert_eq!(
        connector
            .apply(&tasks[0])
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Applied::Changed
    );
    assert!(
        connector
            .verify(&tasks[0])
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .verified
    );
    let mut delete = tasks[0].clone();
    delete.action = Action::Delete;
    let err = connector
        .apply(&delete)
        .await
        .expect_err("no delete in disable_only");
    assert!(err.to_string().contains("disable_only"), "{err}");
    let keys = moto
        .client
        .list_access_keys()
        .user_name(&user)
        .send()
        .await
        .unwrap_or_else(|err| panic!("{err:?}"));
    let keys = keys.access_key_metadata();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].access_key_id(), Some(key.as_str()));
    assert_eq!(keys[0].status().map(|s| s.as_str()), Some("Inactive"));
    let account = discover_one(connector.as_ref(), &user).await;
    assert!(!account.active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_keys_name_the_secret_and_sweeps_see_every_user() {
    let moto = iam_moto::start().await;
    let user = unique("dan");
    moto.create_user(&user).await;
    moto.access_key(&user).await;
    let wrong_secret = "wrong-secret-access-key-0123456789";
    for (key_id, secret) in [
        (moto.key_id.as_str(), wrong_secret),
        ("AKIAIOSFODNN7EXAMPLE", wrong_secret),
    ] {
        let refused = deprov_connectors::build(
            "aws",
            &moto.config(SECRET, json!({})),
            moto.secrets_with(SECRET, key_id, secret),
        )
        .unwrap_or_else(|err| panic!("{err}"));
        let err = refused
            .discover(&query(&user))
            .await
            .expect_err("a wrong key is refused");
        assert_eq!(err.kind(), ErrorKind::Permanent, "{err}");
        let message = err.to_string();
        assert!(message.contains(SECRET), "{message}");
        assert!(!message.contains(secret), "{message}");
        assert!(!message.contains(&moto.secret_key), "{message}");
    }

    let connector = connector(&moto, json!({"protected_users": ["deprov-*"]}));
    let accounts = connector
        .list_accounts()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(accounts.iter().any(|a| a.username == user && a.active));
    assert!(
        accounts.iter().all(|a| a.username != iam_moto::ADMIN),
        "the protected admin is not listed"
    );
    // A protected user is neither discovered nor touched.
    assert!(connector
        .discover(&query(iam_moto::ADMIN))
        .await
        .unwrap_or_else(|err| panic!("{err}"))
        .is_empty());
}
