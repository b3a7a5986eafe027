//! The SCIM connector against a real SCIM 2.0 server (`scim2-server`), each test on its
//! own server.

use std::sync::Arc;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, Entitlement, PersonQuery};
use deprov_tests::Scim2Server;
use serde_json::json;

const SECRET: &str = "deprov/connector/crm";

fn config(server: &Scim2Server, page_size: u64) -> SystemConfig {
    serde_json::from_value(json!({
        "kind": "scim",
        "secret": SECRET,
        "connection": {"base_url": server.base_url, "page_size": page_size, "timeout_secs": 10},
    }))
    .expect("system config")
}

fn connector_with(server: &Scim2Server, page_size: u64, token: &str) -> Arc<dyn Connector> {
    let secrets: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "token", token));
    deprov_connectors::build("crm", &config(server, page_size), secrets).expect("scim connector")
}

fn connector(server: &Scim2Server) -> Arc<dyn Connector> {
    connector_with(server, 100, &server.token)
}

fn person(username: Option<&str>, email: &str) -> PersonQuery {
    PersonQuery {
        person_id: "E1001".into(),
        email: email.into(),
        username: username.map(str::to_string),
    }
}

fn task(action: Action, account: &Account, target: Option<&Entitlement>) -> Task {
    Task {
        task_id: format!(
            "t-{}-{}-{}",
            action.as_str(),
            account.id,
            target.map_or("", |t| t.id.as_str())
        ),
        run_id: "run-1".into(),
        system: "crm".into(),
        action,
        account: AccountRef {
            id: account.id.clone(),
            username: account.username.clone(),
        },
        target: target.map(|t| Target {
            id: t.id.clone(),
            name: t.name.clone(),
            kind: t.kind.clone(),
        }),
        person_id: "E1001".into(),
    }
}

async fn discover_one(connector: &dyn Connector, query: &PersonQuery) -> Account {
    let mut accounts = connector.discover(query).await.expect("discover");
    assert_eq!(accounts.len(), 1, "{accounts:#?}");
    accounts.remove(0)
}

/// Ada (ada.l) in eng and ops, Bob in eng.
async fn seed(server: &Scim2Server) -> (String, String, String, String) {
    let ada = server.create_user("ada.l", "ada@example.com").await;
    let bob = server.create_user("bob", "bob@example.com").await;
    let eng = server.create_group("eng", &[&ada, &bob]).await;
    let ops = server.create_group("ops", &[&ada]).await;
    (ada, bob, eng, ops)
}

#[tokio::test]
async fn discovers_by_username_and_by_email() {
    let server = Scim2Server::start().await;
    let (ada, _bob, eng, ops) = seed(&server).await;
    let crm = connector(&server);

    // The username the HR event gives wins even when the email differs.
    let by_name = discover_one(&*crm, &person(Some("ada.l"), "ada.lovelace@corp.example")).await;
    assert_eq!(by_name.id, ada);
    assert_eq!(by_name.system, "crm");
    assert_eq!(by_name.username, "ada.l");
    assert_eq!(by_name.email.as_deref(), Some("ada@example.com"));
    assert!(by_name.active);
    let mut expected = vec![
        Entitlement {
            id: eng,
            name: "eng".into(),
            kind: "group".into(),
        },
        Entitlement {
            id: ops,
            name: "ops".into(),
            kind: "group".into(),
        },
    ];
    expected.sort();
    assert_eq!(by_name.entitlements, expected);

    let by_email = discover_one(&*crm, &person(None, "ada@example.com")).await;
    assert_eq!(by_email, by_name);

    let nobody = crm
        .discover(&person(Some("grace"), "grace@example.com"))
        .await
        .expect("discover");
    assert!(nobody.is_empty(), "{nobody:#?}");

    // Quotes and backslashes in a value are escaped, not parsed as filter syntax.
    let odd = crm
        .discover(&person(
            Some(r#"x" or userName pr or "y"#),
            r#"a\"b@example.com"#,
        ))
        .await
        .expect("discover with characters to escape");
    assert!(odd.is_empty(), "{odd:#?}");
}

#[tokio::test]
async fn disable_changes_once_and_is_verified() {
    let server = Scim2Server::start().await;
    let (ada, bob, _eng, _ops) = seed(&server).await;
    let crm = connector(&server);
    let account = discover_one(&*crm, &person(Some("ada.l"), "ada@example.com")).await;
    let disable = task(Action::Disable, &account, None);

    assert_eq!(
        crm.apply(&disable).await.expect("disable"),
        Applied::Changed
    );
    let evidence = crm.verify(&disable).await.expect("verify");
    assert!(evidence.verified, "{evidence:?}");
    assert_eq!(
        evidence.observed["request"],
        json!(format!("GET /Users/{ada}"))
    );
    assert_eq!(evidence.observed["status"], json!(200));
    assert_eq!(evidence.observed["active"], json!(false));

    let raw = server.get_user(&ada).await.expect("ada exists");
    assert_eq!(raw["active"], json!(false));
    let version = raw["meta"]["version"].clone();
    assert_eq!(
        evidence.observed["version"], version,
        "evidence carries the version read"
    );

    // Again: nothing to do, and nothing changes on the server.
    assert_eq!(
        crm.apply(&disable).await.expect("disable again"),
        Applied::AlreadyDone
    );
    let raw = server.get_user(&ada).await.expect("ada exists");
    assert_eq!(
        raw["meta"]["version"], version,
        "a second disable wrote nothing"
    );

    // Bob is untouched, and verifying a disable of an active account says so.
    let bob_account = discover_one(&*crm, &person(Some("bob"), "bob@example.com")).await;
    assert_eq!(bob_account.id, bob);
    let not_done = crm
        .verify(&task(Action::Disable, &bob_account, None))
        .await
        .expect("verify bob");
    assert!(!not_done.verified);
    assert_eq!(not_done.observed["active"], json!(true));

    // The discovered state now shows the account disabled.
    let again = discover_one(&*crm, &person(Some("ada.l"), "ada@example.com")).await;
    assert!(!again.active);
}

#[tokio::test]
async fn removes_each_group_membership() {
    let server = Scim2Server::start().await;
    let (ada, bob, eng, ops) = seed(&server).await;
    let crm = connector(&server);
    let account = discover_one(&*crm, &person(Some("ada.l"), "ada@example.com")).await;
    assert_eq!(account.entitlements.len(), 2);

    for group in &account.entitlements {
        let remove = task(Action::RemoveEntitlement, &account, Some(group));
        let before = crm.verify(&remove).await.expect("verify before");
        assert!(!before.verified, "still a member before: {before:?}");
        assert_eq!(crm.apply(&remove).await.expect("remove"), Applied::Changed);
        let evidence = crm.verify(&remove).await.expect("verify");
        assert!(evidence.verified, "{evidence:?}");
        assert_eq!(evidence.observed["member"], json!(false));
        assert_eq!(evidence.observed["group"], json!(group.name));
        assert_eq!(
            crm.apply(&remove).await.expect("remove again"),
            Applied::AlreadyDone
        );
    }

    assert_eq!(
        server.group_member_ids(&eng).await,
        vec![bob.clone()],
        "bob stays in eng"
    );
    assert!(server.group_member_ids(&ops).await.is_empty());
    let after = discover_one(&*crm, &person(Some("ada.l"), "ada@example.com")).await;
    assert!(after.entitlements.is_empty(), "{after:#?}");
    assert_eq!(after.id, ada);

    // A group that no longer exists leaves nothing to revoke.
    let gone = Entitlement {
        id: "no-such-group".into(),
        name: "gone".into(),
        kind: "group".into(),
    };
    let remove = task(Action::RemoveEntitlement, &account, Some(&gone));
    assert_eq!(
        crm.apply(&remove).await.expect("remove from missing group"),
        Applied::AlreadyDone
    );
    let evidence = crm.verify(&remove).await.expect("verify missing group");
    assert!(evidence.verified);
    assert_eq!(evidence.observed["status"], json!(404));
}

#[tokio::test]
async fn delete_is_verified_by_a_404_and_idempotent() {
    let server = Scim2Server::start().await;
    let (ada, bob, _eng, _ops) = seed(&server).await;
    let crm = connector(&server);
    let account = discover_one(&*crm, &person(Some("ada.l"), "ada@example.com")).await;
    let delete = task(Action::Delete, &account, None);

    let before = crm.verify(&delete).await.expect("verify before");
    assert!(!before.verified);
    assert_eq!(crm.apply(&delete).await.expect("delete"), Applied::Changed);
    let evidence = crm.verify(&delete).await.expect("verify");
    assert!(evidence.verified, "{evidence:?}");
    assert_eq!(
        evidence.observed,
        json!({"request": format!("GET /Users/{ada}"), "status": 404})
    );
    assert!(server.get_user(&ada).await.is_none());
    assert_eq!(
        crm.apply(&delete).await.expect("delete again"),
        Applied::AlreadyDone
    );
    assert!(server.get_user(&bob).await.is_some(), "bob stays");

    // Disabling an account that is gone: nothing left to revoke, and verified.
    let disable = task(Action::Disable, &account, None);
    assert_eq!(
        crm.apply(&disable).await.expect("disable deleted"),
        Applied::AlreadyDone
    );
    assert!(crm.verify(&disable).await.expect("verify deleted").verified);
    assert!(crm
        .discover(&person(Some("ada.l"), "ada@example.com"))
        .await
        .expect("discover")
        .is_empty());
}

#[tokio::test]
async fn a_refused_token_names_the_secret_and_never_the_value() {
    let server = Scim2Server::start().await;
    let (_ada, _bob, _eng, _ops) = seed(&server).await;
    let wrong = "wrong-token-0123456789abcdef";
    let crm = connector_with(&server, 100, wrong);

    let err = crm
        .discover(&person(Some("ada.l"), "ada@example.com"))
        .await
        .expect_err("the server refuses the token");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("secret \"deprov/connector/crm\" field \"token\""),
        "{message}"
    );
    assert!(message.contains("system \"crm\""), "{message}");
    assert!(message.contains("rotate that secret"), "{message}");
    assert!(!message.contains(wrong), "{message}");
    assert!(!message.contains(&server.token), "{message}");

    let account = Account {
        system: "crm".into(),
        id: "whatever".into(),
        username: "ada.l".into(),
        email: None,
        active: true,
        entitlements: vec![],
        credentials: vec![],
        last_activity: None,
    };
    let err = crm
        .apply(&task(Action::Disable, &account, None))
        .await
        .expect_err("refused");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    assert!(!err.to_string().contains(wrong));

    // A secret without the configured field is a configuration problem that says which.
    let secrets: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "api_key", wrong));
    let crm = deprov_connectors::build("crm", &config(&server, 100), secrets).expect("connector");
    let err = crm
        .discover(&person(None, "ada@example.com"))
        .await
        .expect_err("no token field");
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("secret \"deprov/connector/crm\" has no field \"token\""),
        "{err}"
    );
    assert!(!err.to_string().contains(wrong));
}

#[tokio::test]
async fn pages_through_users_and_groups() {
    let server = Scim2Server::start().await;
    let shared = "shared@example.com";
    let mut users = Vec::new();
    for name in ["svc-a", "svc-b", "svc-c"] {
        users.push(server.create_user(name, shared).await);
    }
    let _other = server.create_user("other", "other@example.com").await;
    let mut groups = Vec::new();
    for name in ["g1", "g2", "g3", "g4"] {
        let members: Vec<&str> = users.iter().map(String::as_str).collect();
        groups.push(server.create_group(name, &members).await);
    }
    let crm = connector_with(&server, 1, &server.token);

    let accounts = crm.discover(&person(None, shared)).await.expect("discover");
    let mut ids: Vec<String> = accounts.iter().map(|a| a.id.clone()).collect();
    ids.sort();
    let mut expected = users.clone();
    expected.sort();
    assert_eq!(ids, expected, "every page of users was read");
    for account in &accounts {
        let mut group_ids: Vec<String> =
            account.entitlements.iter().map(|e| e.id.clone()).collect();
        group_ids.sort();
        let mut expected = groups.clone();
        expected.sort();
        assert_eq!(
            group_ids, expected,
            "every page of groups was read for {}",
            account.username
        );
    }

    let all = crm.list_accounts().await.expect("list accounts");
    assert_eq!(all.len(), 4);
    assert!(all
        .iter()
        .any(|a| a.username == "other" && a.entitlements.is_empty()));
    assert!(all.iter().filter(|a| a.entitlements.len() == 4).count() == 3);
}

/// Many removals from one group at once: each PATCH carries the version it read in
/// `If-Match`, so a removal that raced another gets 412 (transient) instead of writing
/// over it, and the retry converges.
#[tokio::test]
async fn concurrent_removals_from_one_group_converge_with_if_match() {
    let server = Scim2Server::start().await;
    let mut users = Vec::new();
    for i in 0..6 {
        users.push(
            server
                .create_user(&format!("user{i}"), &format!("user{i}@example.com"))
                .await,
        );
    }
    let members: Vec<&str> = users.iter().map(String::as_str).collect();
    let group = server.create_group("everyone", &members).await;
    let crm = connector(&server);
    let target = Entitlement {
        id: group.clone(),
        name: "everyone".into(),
        kind: "group".into(),
    };

    let mut handles = Vec::new();
    for (i, id) in users.iter().enumerate() {
        let crm = crm.clone();
        let account = Account {
            system: "crm".into(),
            id: id.clone(),
            username: format!("user{i}"),
            email: None,
            active: true,
            entitlements: vec![target.clone()],
            credentials: vec![],
            last_activity: None,
        };
        let remove = task(Action::RemoveEntitlement, &account, Some(&target));
        handles.push(tokio::spawn(async move {
            let mut stale = 0;
            for _ in 0..20 {
                match crm.apply(&remove).await {
                    Ok(applied) => return (applied, stale),
                    Err(ConnectorError::Transient(message)) => {
                        assert!(message.contains("HTTP 412"), "{message}");
                        stale += 1;
                    }
                    Err(err) => panic!("unexpected error: {err}"),
                }
            }
            panic!("removal did not converge");
        }));
    }
    let mut stale_total = 0;
    for handle in handles {
        let (applied, stale) = handle.await.expect("task");
        assert_eq!(applied, Applied::Changed);
        stale_total += stale;
    }
    eprintln!("stale ETags met and retried: {stale_total}");
    assert!(server.group_member_ids(&group).await.is_empty());

    // What the retries relied on: this server refuses a write with a stale version.
    let stale = reqwest::Client::new()
        .patch(server.url(&format!("/Groups/{group}")))
        .bearer_auth(&server.token)
        .header("content-type", "application/scim+json")
        .header("if-match", "W/\"0\"")
        .body(
            json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
                   "Operations": [{"op": "replace", "path": "displayName", "value": "x"}]})
            .to_string(),
        )
        .send()
        .await
        .expect("stale patch");
    assert_eq!(stale.status().as_u16(), 412);
}
