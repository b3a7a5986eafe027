//! The LDAP connector against a real OpenLDAP slapd (ppolicy, lastbind, refint, memberof,
//! and an AD-like schema so the Active Directory code path runs against a server too).

use std::sync::Arc;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Account, Applied, Connector, ConnectorError, Entitlement, PersonQuery};
use deprov_tests::slapd::Slapd;
use serde_json::{json, Value};

const SECRET: &str = "deprov/connector/dir";

fn config(slapd: &Slapd, dialect: &str, extra: Value) -> SystemConfig {
    let mut connection = json!({
        "url": slapd.url,
        "base_dn": slapd.base_dn,
        "dialect": dialect,
        "timeout_secs": 10,
    });
    if let (Some(connection), Some(extra)) = (connection.as_object_mut(), extra.as_object()) {
        connection.extend(extra.clone());
    }
    serde_json::from_value(json!({"kind": "ldap", "secret": SECRET, "connection": connection}))
        .unwrap_or_else(|err| panic!("{err}"))
}

fn secrets(bind_dn: &str, password: &str) -> Arc<dyn SecretSource> {
    Arc::new(
        MemorySecrets::default()
            .with(SECRET, "bind_dn", bind_dn)
            .with(SECRET, "password", password),
    )
}

fn connector_as(
    slapd: &Slapd,
    dialect: &str,
    extra: Value,
    bind_dn: &str,
    password: &str,
) -> Arc<dyn Connector> {
    deprov_connectors::build(
        "dir",
        &config(slapd, dialect, extra),
        secrets(bind_dn, password),
    )
    .unwrap_or_else(|err| panic!("{err}"))
}

fn connector(slapd: &Slapd, dialect: &str, extra: Value) -> Arc<dyn Connector> {
    connector_as(
        slapd,
        dialect,
        extra,
        &slapd.admin_dn,
        &slapd.admin_password,
    )
}

fn person(username: Option<&str>, email: &str) -> PersonQuery {
    PersonQuery {
        person_id: "E1".into(),
        email: email.into(),
        username: username.map(str::to_string),
    }
}

fn task(action: Action, account: &Account, target: Option<&Entitlement>) -> Task {
    Task {
        task_id: format!("t-{}-{}", action.as_str(), fastrand::u32(..)),
        run_id: "r-1".into(),
        system: "dir".into(),
        action,
        account: AccountRef {
            id: account.id.clone(),
            username: account.username.clone(),
        },
        target: target.map(|e| Target {
            id: e.id.clone(),
            name: e.name.clone(),
            kind: e.kind.clone(),
        }),
        person_id: "E1".into(),
    }
}

async fn discover_one(connector: &Arc<dyn Connector>, query: &PersonQuery) -> Account {
    let mut accounts = connector
        .discover(query)
        .await
        .unwrap_or_else(|err| panic!("discover: {err}"));
    assert_eq!(accounts.len(), 1, "{accounts:?}");
    accounts.remove(0)
}

async fn apply_verified(connector: &Arc<dyn Connector>, task: &Task) -> Value {
    let applied = connector
        .apply(task)
        .await
        .unwrap_or_else(|err| panic!("apply {:?}: {err}", task.action));
    assert_eq!(applied, Applied::Changed, "{:?}", task.action);
    let evidence = connector
        .verify(task)
        .await
        .unwrap_or_else(|err| panic!("verify: {err}"));
    assert!(evidence.verified, "{}", evidence.observed);
    let again = connector
        .apply(task)
        .await
        .unwrap_or_else(|err| panic!("second apply: {err}"));
    assert_eq!(again, Applied::AlreadyDone, "{:?} twice", task.action);
    evidence.observed
}

#[tokio::test]
async fn openldap_discover_disable_remove_and_delete() {
    let slapd = Slapd::start();
    let ada = slapd.add_user("ada", "ada@example.com", "ada-real-password");
    let bob = slapd.add_user("bob", "bob@example.com", "bob-password");
    let eng = slapd.add_group("eng", &[&ada, &bob]);
    let ops = slapd.add_group("ops", &[&bob, &ada]);
    let devs = slapd.add_posix_group("devs", 5000, &["ada", "bob"]);
    slapd.add_group("others", &[&bob]);
    assert!(
        slapd.bind_as(&ada, "ada-real-password"),
        "ada can bind before"
    );

    let connector = connector(&slapd, "openldap", json!({}));
    let by_uid = discover_one(&connector, &person(Some("ada"), "nobody@example.com")).await;
    let by_mail = discover_one(&connector, &person(None, "ada@example.com")).await;
    assert_eq!(by_uid, by_mail);
    let account = by_uid;
    assert_eq!(account.id, ada);
    assert_eq!(account.username, "ada");
    assert_eq!(account.email.as_deref(), Some("ada@example.com"));
    assert!(account.active);
    assert!(
        account.last_activity.is_some(),
        "authTimestamp from the lastbind overlay"
    );
    let mut groups: Vec<&str> = account.entitlements.iter().map(|e| e.id.as_str()).collect();
    groups.sort_unstable();
    let mut expected = vec![devs.as_str(), eng.as_str(), ops.as_str()];
    expected.sort_unstable();
    assert_eq!(groups, expected);
    assert!(account.entitlements.iter().all(|e| e.kind == "group"));
    assert!(account.entitlements.iter().any(|e| e.name == "eng"));

    // Disable: ppolicy's permanent lock; the real password no longer binds.
    let observed = apply_verified(&connector, &task(Action::Disable, &account, None)).await;
    assert_eq!(
        observed["pwdAccountLockedTime"], "000001010000Z",
        "{observed}"
    );
    assert_eq!(observed["read"], ada.as_str());
    assert!(!observed.to_string().contains("ada-real-password"));
    assert!(
        !slapd.bind_as(&ada, "ada-real-password"),
        "a disabled account's real password is refused"
    );
    assert!(slapd.bind_as(&bob, "bob-password"), "bob is untouched");
    let again = discover_one(&connector, &person(Some("ada"), "ada@example.com")).await;
    assert!(!again.active);

    // Entitlements: each group stops listing ada; bob stays.
    for entitlement in &account.entitlements {
        let observed = apply_verified(
            &connector,
            &task(Action::RemoveEntitlement, &account, Some(entitlement)),
        )
        .await;
        assert_eq!(observed["member"], false, "{observed}");
    }
    for group in [&eng, &ops] {
        assert_eq!(slapd.members(group), vec![bob.clone()]);
    }
    assert_eq!(slapd.values(&devs, "memberUid"), vec!["bob".to_string()]);
    let again = discover_one(&connector, &person(Some("ada"), "ada@example.com")).await;
    assert!(again.entitlements.is_empty(), "{again:?}");

    // Delete: gone, then already done.
    let observed = apply_verified(&connector, &task(Action::Delete, &account, None)).await;
    assert_eq!(observed["exists"], false);
    assert!(slapd.entry(&ada).is_none());
    let none = connector
        .discover(&person(Some("ada"), "ada@example.com"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(none.is_empty());
    // Disable of an account that is gone is done too.
    assert_eq!(
        connector
            .apply(&task(Action::Disable, &account, None))
            .await
            .unwrap_or_else(|err| panic!("{err}")),
        Applied::AlreadyDone
    );
}

#[tokio::test]
async fn a_refused_service_bind_names_the_secret_and_hides_the_password() {
    let slapd = Slapd::start();
    slapd.add_user("cy", "cy@example.com", "cy-password");
    let wrong = "wrong-password-0123456789";
    let connector = connector_as(&slapd, "openldap", json!({}), &slapd.admin_dn, wrong);
    let err = connector
        .discover(&person(Some("cy"), "cy@example.com"))
        .await
        .expect_err("a wrong password is refused");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    let message = err.to_string();
    assert!(message.contains(SECRET), "{message}");
    assert!(message.contains("password"), "{message}");
    assert!(!message.contains(wrong), "{message}");
    assert!(!message.contains(&slapd.admin_password), "{message}");

    // A secret without the fields is a configuration problem naming the field.
    let empty: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "bind_dn", &slapd.admin_dn));
    let connector = deprov_connectors::build("dir", &config(&slapd, "openldap", json!({})), empty)
        .unwrap_or_else(|err| panic!("{err}"));
    let err = connector
        .discover(&person(Some("cy"), "cy@example.com"))
        .await
        .expect_err("no password field");
    assert!(matches!(err, ConnectorError::InvalidConfig(_)), "{err:?}");
    assert!(err.to_string().contains("\"password\""), "{err}");
}

#[tokio::test]
async fn a_bind_dn_without_write_rights_is_a_permanent_failure_that_says_so() {
    let slapd = Slapd::start();
    let reader = slapd.add_user("reader", "reader@example.com", "reader-password");
    slapd.add_user("dan", "dan@example.com", "dan-password");
    let connector = connector_as(&slapd, "openldap", json!({}), &reader, "reader-password");
    let account = discover_one(&connector, &person(Some("dan"), "dan@example.com")).await;
    let err = connector
        .apply(&task(Action::Disable, &account, None))
        .await
        .expect_err("the reader cannot write");
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("lacks the rights"), "{err}");
    assert!(
        err.to_string().contains("insufficientAccessRights"),
        "{err}"
    );
    assert!(!err.to_string().contains("reader-password"), "{err}");
}

#[tokio::test]
async fn searches_page_through_many_users_and_groups() {
    let slapd = Slapd::start();
    let eve = slapd.add_user("eve", "eve@example.com", "eve-password");
    let mut users = vec![eve.clone()];
    for n in 0..6 {
        users.push(slapd.add_user(&format!("u{n}"), &format!("u{n}@example.com"), "pw-12345"));
    }
    let members: Vec<&str> = users.iter().map(String::as_str).collect();
    for n in 0..7 {
        slapd.add_group(&format!("g{n}"), &members);
    }
    let connector = connector(&slapd, "openldap", json!({"page_size": 2}));
    let account = discover_one(&connector, &person(Some("eve"), "eve@example.com")).await;
    assert_eq!(account.entitlements.len(), 7, "{account:?}");

    let all = connector
        .list_accounts()
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert_eq!(all.len(), 7, "{all:?}");
    assert!(all.iter().all(|a| a.entitlements.len() == 7), "{all:?}");
    let listed = all
        .iter()
        .find(|a| a.id == eve)
        .unwrap_or_else(|| panic!("eve listed"));
    assert_eq!(listed.username, "eve");
    assert!(listed.active);
    // The listing really came in pages of 2 (7 users: 4 searches with the paged control).
    let pages = slapd
        .log_text()
        .lines()
        .filter(|line| {
            line.contains("SRCH") && line.contains("filter=\"(objectClass=inetOrgPerson)\"")
        })
        .count();
    assert!(pages >= 4, "{pages} pages of users:\n{}", slapd.log_text());
}

#[tokio::test]
async fn a_filter_injection_in_the_username_finds_nothing() {
    let slapd = Slapd::start();
    slapd.add_user("fay", "fay@example.com", "fay-password");
    slapd.add_user("gus", "gus@example.com", "gus-password");
    let connector = connector(&slapd, "openldap", json!({}));
    for query in [
        person(Some("*)(uid=*"), "nobody@example.com"),
        person(Some("*"), "nobody@example.com"),
        person(None, "*"),
        person(Some("fay)(|(uid=*"), "x*@example.com"),
    ] {
        let found = connector
            .discover(&query)
            .await
            .unwrap_or_else(|err| panic!("{query:?}: {err}"));
        assert!(found.is_empty(), "{query:?} found {found:?}");
    }
    // A username derived from the email does not pick someone else's account.
    slapd.add_user("hal", "hal@other.example", "hal-password");
    let found = connector
        .discover(&person(None, "hal@example.com"))
        .await
        .unwrap_or_else(|err| panic!("{err}"));
    assert!(found.is_empty(), "{found:?}");
}

#[tokio::test]
async fn ad_dialect_sets_accountdisable_and_keeps_the_other_bits() {
    let slapd = Slapd::start();
    // NORMAL_ACCOUNT | DONT_EXPIRE_PASSWORD
    let ivy = slapd.add_ad_user(
        "ivy",
        "ivy@corp.example.com",
        "ivy@example.com",
        "ivy-pw",
        0x10200,
    );
    let other = slapd.add_ad_user(
        "jon",
        "jon@corp.example.com",
        "jon@example.com",
        "jon-pw",
        0x200,
    );
    let staff = slapd.add_group("staff", &[&ivy, &other]);
    let connector = connector(&slapd, "ad", json!({}));
    let account = discover_one(&connector, &person(Some("ivy"), "nobody@example.com")).await;
    let by_upn = discover_one(&connector, &person(None, "ivy@corp.example.com")).await;
    assert_eq!(account, by_upn);
    assert_eq!(account.username, "ivy");
    assert!(account.active);
    assert_eq!(
        account.last_activity.map(|t| t.to_rfc3339()).as_deref(),
        Some("2024-01-01T00:00:00+00:00"),
        "lastLogonTimestamp is a FILETIME"
    );
    assert_eq!(account.entitlements.len(), 1);
    assert_eq!(account.entitlements[0].id, staff);

    let observed = apply_verified(&connector, &task(Action::Disable, &account, None)).await;
    assert_eq!(observed["userAccountControl"], "66050", "{observed}");
    assert_eq!(
        slapd.values(&ivy, "userAccountControl"),
        vec![(0x10200 | 0x2).to_string()]
    );
    assert_eq!(
        slapd.values(&other, "userAccountControl"),
        vec!["512".to_string()]
    );
    let again = discover_one(&connector, &person(Some("ivy"), "ivy@example.com")).await;
    assert!(!again.active);

    apply_verified(
        &connector,
        &task(
            Action::RemoveEntitlement,
            &account,
            Some(&account.entitlements[0]),
        ),
    )
    .await;
    assert_eq!(slapd.members(&staff), vec![other.clone()]);
    apply_verified(&connector, &task(Action::Delete, &account, None)).await;
    assert!(slapd.entry(&ivy).is_none());
}

#[tokio::test]
async fn dialect_389_sets_nsaccountlock() {
    let slapd = Slapd::start();
    let kim = slapd.add_389_user("kim", "kim@example.com", "kim-pw");
    let connector = connector(&slapd, "389", json!({}));
    let account = discover_one(&connector, &person(Some("kim"), "kim@example.com")).await;
    assert!(account.active);
    let observed = apply_verified(&connector, &task(Action::Disable, &account, None)).await;
    assert_eq!(observed["nsAccountLock"], "TRUE", "{observed}");
    assert_eq!(
        slapd.values(&kim, "nsAccountLock"),
        vec!["TRUE".to_string()]
    );
}

#[tokio::test]
async fn an_unreachable_directory_is_transient() {
    let port = deprov_tests::free_port().unwrap_or_else(|err| panic!("{err}"));
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "ldap", "secret": SECRET,
        "connection": {"url": format!("ldap://127.0.0.1:{port}"), "base_dn": "dc=example,dc=com",
                       "dialect": "openldap", "timeout_secs": 2},
    }))
    .unwrap_or_else(|err| panic!("{err}"));
    let connector = deprov_connectors::build("dir", &config, secrets("cn=x", "pw-123456"))
        .unwrap_or_else(|err| panic!("{err}"));
    let err = connector
        .discover(&person(Some("x"), "x@example.com"))
        .await
        .expect_err("nothing listens");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
}

/// The slapd log lines of operations on `dn` (`MOD dn="…"`, `SRCH base="…"`) since the
/// first `skip` lines.
/// `apply_batch` of `tasks`, every task applied (`what` names the step when one fails).
async fn applied_all(connector: &Arc<dyn Connector>, tasks: &[Task], what: &str) -> Vec<Applied> {
    connector
        .apply_batch(tasks)
        .await
        .into_iter()
        .map(|result| result.unwrap_or_else(|err| panic!("{what}: {err}")))
        .collect()
}

fn operations_on(slapd: &Slapd, dn: &str, skip: usize) -> Vec<String> {
    let modify = format!("MOD dn=\"{dn}\"");
    let search = format!("SRCH base=\"{dn}\"");
    slapd
        .log_text()
        .lines()
        .skip(skip)
        .filter(|line| line.contains(&modify) || line.contains(&search))
        .map(str::to_string)
        .collect()
}

fn log_lines(slapd: &Slapd) -> usize {
    slapd.log_text().lines().count()
}

#[tokio::test]
async fn a_batch_of_disables_is_answered_in_order_and_verified() {
    let slapd = Slapd::start();
    let lea = slapd.add_user("lea", "lea@example.com", "lea-real-password");
    let max = slapd.add_user("max", "max@example.com", "max-password");
    slapd.modify_ldif(&format!(
        "dn: {max}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n"
    ));
    let connector = connector(&slapd, "openldap", json!({}));
    assert!(connector.max_batch() > 1);
    let lea_account = discover_one(&connector, &person(Some("lea"), "lea@example.com")).await;
    let max_account = discover_one(&connector, &person(Some("max"), "max@example.com")).await;
    assert!(lea_account.active);
    assert!(!max_account.active);
    let gone = Account {
        id: format!("uid=nobody,{}", slapd.people_dn),
        username: "nobody".into(),
        ..lea_account.clone()
    };
    let tasks: Vec<Task> = [&lea_account, &max_account, &gone]
        .into_iter()
        .map(|account| task(Action::Disable, account, None))
        .collect();

    let before = log_lines(&slapd);
    let applied = applied_all(&connector, &tasks, "apply").await;
    assert_eq!(
        applied,
        vec![Applied::Changed, Applied::AlreadyDone, Applied::AlreadyDone]
    );
    // Disabling an active account, or one that is gone, is one modify asserting it is not
    // locked yet; a locked one fails the assertion and is read.
    let kinds = |dn: &str| -> Vec<&'static str> {
        operations_on(&slapd, dn, before)
            .iter()
            .map(|line| {
                if line.contains(" MOD ") {
                    "MOD"
                } else {
                    "SRCH"
                }
            })
            .collect()
    };
    assert_eq!(kinds(&lea), vec!["MOD"]);
    assert_eq!(kinds(&max), vec!["MOD", "SRCH"]);
    assert_eq!(kinds(&gone.id), vec!["MOD"]);

    let evidence = connector.verify_batch(&tasks).await;
    assert_eq!(evidence.len(), 3);
    for (evidence, task) in evidence.into_iter().zip(&tasks) {
        let evidence = evidence.unwrap_or_else(|err| panic!("verify {}: {err}", task.account.id));
        assert!(
            evidence.verified,
            "{}: {}",
            task.account.id, evidence.observed
        );
    }
    assert!(
        !slapd.bind_as(&lea, "lea-real-password"),
        "the disabled account's real password is refused"
    );
    assert_eq!(
        slapd.values(&lea, "pwdAccountLockedTime"),
        vec!["000001010000Z".to_string()]
    );

    // Again: every one is done already.
    let again = applied_all(&connector, &tasks, "apply again").await;
    assert_eq!(again, vec![Applied::AlreadyDone; 3]);
}

#[tokio::test]
async fn a_lock_the_assertion_and_is_disabled_read_differently_is_decided_by_the_read() {
    let slapd = Slapd::start();
    // The permanent lock with seconds: the same time to the matching rule, so the
    // assertion fails, but not the value `is_disabled` (and the account's state) knows.
    let ned = slapd.add_user("ned", "ned@example.com", "ned-password");
    slapd.modify_ldif(&format!(
        "dn: {ned}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 00000101000000Z\n"
    ));
    // A temporary lockout is not a disable.
    let ola = slapd.add_user("ola", "ola@example.com", "ola-password");
    slapd.modify_ldif(&format!(
        "dn: {ola}\nchangetype: modify\nreplace: pwdAccountLockedTime\npwdAccountLockedTime: 20240101000000Z\n"
    ));
    let connector = connector(&slapd, "openldap", json!({}));
    let people = [
        person(Some("ned"), "ned@example.com"),
        person(Some("ola"), "ola@example.com"),
    ];
    let mut tasks = Vec::new();
    for query in &people {
        let account = discover_one(&connector, query).await;
        assert!(account.active, "{account:?}");
        tasks.push(task(Action::Disable, &account, None));
    }
    let before = log_lines(&slapd);
    let applied = applied_all(&connector, &tasks, "apply").await;
    assert_eq!(applied, vec![Applied::Changed; 2]);
    let count = |dn: &str| operations_on(&slapd, dn, before).len();
    assert_eq!(count(&ned), 3, "asserting modify, read, modify");
    assert_eq!(count(&ola), 1, "asserting modify");
    for (evidence, dn) in connector
        .verify_batch(&tasks)
        .await
        .into_iter()
        .zip([&ned, &ola])
    {
        let evidence = evidence.unwrap_or_else(|err| panic!("verify {dn}: {err}"));
        assert!(evidence.verified, "{dn}: {}", evidence.observed);
        assert_eq!(
            slapd.values(dn, "pwdAccountLockedTime"),
            vec!["000001010000Z".to_string()]
        );
    }
}

#[tokio::test]
async fn discover_batch_answers_each_person_in_order() {
    let slapd = Slapd::start();
    let pia = slapd.add_user("pia", "pia@example.com", "pia-password");
    let quinn = slapd.add_user("quinn", "quinn@example.com", "quinn-password");
    let eng = slapd.add_group("eng", &[&pia, &quinn]);
    let ops = slapd.add_group("ops", &[&quinn]);
    let connector = connector(&slapd, "openldap", json!({}));
    let people = [
        person(Some("quinn"), "quinn@example.com"),
        person(Some("nobody"), "nobody@example.com"),
        person(None, "pia@example.com"),
    ];
    let found: Vec<Vec<Account>> = connector
        .discover_batch(&people)
        .await
        .into_iter()
        .map(|result| result.unwrap_or_else(|err| panic!("discover: {err}")))
        .collect();
    assert_eq!(found.len(), 3);
    let ids = |accounts: &[Account]| accounts.iter().map(|a| a.id.clone()).collect::<Vec<_>>();
    assert_eq!(ids(&found[0]), vec![quinn.clone()]);
    assert!(found[1].is_empty(), "{:?}", found[1]);
    assert_eq!(ids(&found[2]), vec![pia.clone()]);
    let groups = |account: &Account| {
        let mut ids: Vec<String> = account.entitlements.iter().map(|e| e.id.clone()).collect();
        ids.sort_unstable();
        ids
    };
    let mut quinn_groups = vec![eng.clone(), ops];
    quinn_groups.sort_unstable();
    assert_eq!(groups(&found[0][0]), quinn_groups);
    assert_eq!(groups(&found[2][0]), vec![eng]);
    // The same answers as one by one.
    for (query, batched) in people.iter().zip(&found) {
        let alone = connector
            .discover(query)
            .await
            .unwrap_or_else(|err| panic!("discover: {err}"));
        assert_eq!(&alone, batched);
    }
}
