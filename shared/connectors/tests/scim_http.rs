//! The SCIM connector against scripted HTTP answers (wiremock): throttling, outages,
//! refusals, stale versions, and the shapes a strictly RFC 7644 server may answer with
//! that the real test server does not (a `groups` attribute on users, no PATCH).

use std::sync::Arc;
use std::time::Duration;

use deprov_core::plan::{AccountRef, Action, Target, Task};
use deprov_core::policy::SystemConfig;
use deprov_core::ports::SecretSource;
use deprov_core::testing::MemorySecrets;
use deprov_core::{Applied, Connector, ConnectorError, ErrorKind, PersonQuery};
use serde_json::{json, Value};
use wiremock::matchers::{body_json, header, method, path, query_param};
use wiremock::{Mock, MockServer, ResponseTemplate};

const TOKEN: &str = "tok-s3cr3t-value";
const SECRET: &str = "deprov/connector/crm";

fn connector_at(base_url: &str, page_size: u64) -> Arc<dyn Connector> {
    let config: SystemConfig = serde_json::from_value(json!({
        "kind": "scim", "secret": SECRET,
        "connection": {"base_url": base_url, "page_size": page_size, "timeout_secs": 2},
    }))
    .expect("config");
    let secrets: Arc<dyn SecretSource> =
        Arc::new(MemorySecrets::default().with(SECRET, "token", TOKEN));
    deprov_connectors::build("crm", &config, secrets).expect("connector")
}

async fn setup() -> (MockServer, Arc<dyn Connector>) {
    let server = MockServer::start().await;
    let connector = connector_at(&format!("{}/scim/v2", server.uri()), 100);
    (server, connector)
}

fn person() -> PersonQuery {
    PersonQuery {
        person_id: "E1".into(),
        email: "ada@example.com".into(),
        username: Some("ada.l".into()),
    }
}

fn task(action: Action, target: Option<&str>) -> Task {
    Task {
        task_id: "task-1".into(),
        run_id: "run-1".into(),
        system: "crm".into(),
        action,
        account: AccountRef {
            id: "u1".into(),
            username: "ada.l".into(),
        },
        target: target.map(|id| Target {
            id: id.into(),
            name: "eng".into(),
            kind: "group".into(),
        }),
        person_id: "E1".into(),
    }
}

fn list(resources: Vec<Value>, total: usize, start: usize) -> Value {
    json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
           "totalResults": total, "startIndex": start, "itemsPerPage": resources.len(),
           "Resources": resources})
}

fn scim_error(status: u16, scim_type: Option<&str>, detail: &str) -> ResponseTemplate {
    let mut body = json!({"schemas": ["urn:ietf:params:scim:api:messages:2.0:Error"],
                          "status": status.to_string(), "detail": detail});
    if let Some(kind) = scim_type {
        body["scimType"] = json!(kind);
    }
    ResponseTemplate::new(status).set_body_json(body)
}

#[tokio::test]
async fn a_429_with_retry_after_is_throttled() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users"))
        .respond_with(ResponseTemplate::new(429).insert_header("Retry-After", "7"))
        .mount(&server)
        .await;
    let err = crm.discover(&person()).await.expect_err("throttled");
    assert_eq!(err.kind(), ErrorKind::Throttled);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn a_503_is_throttled_with_retry_after_and_transient_without() {
    let (server, crm) = setup().await;
    let when = (chrono::Utc::now() + chrono::Duration::seconds(120)).to_rfc2822();
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(ResponseTemplate::new(503).insert_header("Retry-After", when.as_str()))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(ResponseTemplate::new(503))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(ResponseTemplate::new(502).set_body_string("<html>bad gateway</html>"))
        .mount(&server)
        .await;

    let err = crm
        .apply(&task(Action::Disable, None))
        .await
        .expect_err("503 + date");
    let delay = err.retry_after().expect("a delay from the HTTP-date");
    assert!(
        delay > Duration::from_secs(100) && delay <= Duration::from_secs(120),
        "{delay:?}"
    );
    let err = crm
        .apply(&task(Action::Disable, None))
        .await
        .expect_err("503");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    let err = crm
        .verify(&task(Action::Disable, None))
        .await
        .expect_err("502");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 502"), "{err}");
}

#[tokio::test]
async fn timeouts_and_refused_connections_are_transient() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .respond_with(ResponseTemplate::new(200).set_delay(Duration::from_secs(5)))
        .mount(&server)
        .await;
    let err = crm
        .verify(&task(Action::Disable, None))
        .await
        .expect_err("timeout");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");

    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.local_addr().expect("addr").port()
    };
    let closed = connector_at(&format!("http://127.0.0.1:{port}/scim"), 100);
    let err = closed.discover(&person()).await.expect_err("refused");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
}

#[tokio::test]
async fn disable_sends_if_match_and_a_stale_version_is_read_again_at_once() {
    let (server, crm) = setup().await;
    let user = |version: &str| {
        ResponseTemplate::new(200)
            .insert_header("ETag", version)
            .set_body_json(json!({"id": "u1", "userName": "ada.l", "active": true}))
    };
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .and(header("authorization", format!("Bearer {TOKEN}").as_str()))
        .respond_with(user("W/\"7\""))
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(user("W/\"8\""))
        .expect(1)
        .mount(&server)
        .await;
    let disable = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
        "Operations": [{"op": "replace", "path": "active", "value": false}]});
    Mock::given(method("PATCH"))
        .and(path("/scim/v2/Users/u1"))
        .and(header("if-match", "W/\"7\""))
        .and(body_json(disable.clone()))
        .respond_with(scim_error(
            412,
            None,
            "Failed to update. Resource has changed on the server",
        ))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/scim/v2/Users/u1"))
        .and(header("if-match", "W/\"8\""))
        .and(body_json(disable))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "u1"})))
        .expect(1)
        .mount(&server)
        .await;
    let applied = crm
        .apply(&task(Action::Disable, None))
        .await
        .expect("the second write, with the version read again, goes through");
    assert_eq!(applied, Applied::Changed);
}

#[tokio::test]
async fn contention_that_never_lets_up_is_transient() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Groups/g1"))
        .respond_with(
            ResponseTemplate::new(200)
                .insert_header("ETag", "W/\"1\"")
                .set_body_json(
                    json!({"id": "g1", "displayName": "eng", "members": [{"value": "u1"}]}),
                ),
        )
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/scim/v2/Groups/g1"))
        .respond_with(scim_error(412, None, "Resource has changed on the server"))
        .expect(16)
        .mount(&server)
        .await;
    let err = crm
        .apply(&task(Action::RemoveEntitlement, Some("g1")))
        .await
        .expect_err("never written");
    assert!(matches!(err, ConnectorError::Transient(_)), "{err:?}");
    assert!(err.to_string().contains("HTTP 412"), "{err}");
}

#[tokio::test]
async fn version_comes_from_meta_when_there_is_no_etag_header() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Groups/g1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "g1", "displayName": "eng", "meta": {"version": "W/\"abc\""},
            "members": [{"value": "u1"}, {"value": "u2"}]})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/scim/v2/Groups/g1"))
        .and(header("if-match", "W/\"abc\""))
        .and(body_json(json!({
            "schemas": ["urn:ietf:params:scim:api:messages:2.0:PatchOp"],
            "Operations": [{"op": "remove", "path": "members[value eq \"u1\"]"}]})))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "g1"})))
        .expect(1)
        .mount(&server)
        .await;
    let applied = crm
        .apply(&task(Action::RemoveEntitlement, Some("g1")))
        .await
        .expect("removed");
    assert_eq!(applied, Applied::Changed);
}

#[tokio::test]
async fn refusals_and_bad_requests() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(scim_error(
            403,
            None,
            &format!("token {TOKEN} lacks scope users:write"),
        ))
        .mount(&server)
        .await;
    Mock::given(method("DELETE"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(scim_error(409, Some("mutability"), "user owns resources"))
        .mount(&server)
        .await;

    let err = crm
        .apply(&task(Action::Disable, None))
        .await
        .expect_err("403");
    assert!(matches!(err, ConnectorError::Unauthorized(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("secret \"deprov/connector/crm\" field \"token\""),
        "{message}"
    );
    assert!(
        !message.contains(TOKEN),
        "an echoed token is redacted: {message}"
    );

    let err = crm
        .apply(&task(Action::Delete, None))
        .await
        .expect_err("409");
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err:?}");
    assert!(
        err.to_string()
            .contains("DELETE /Users/u1 answered HTTP 409 (mutability: user owns resources)"),
        "{err}"
    );
}

#[tokio::test]
async fn users_carrying_groups_need_no_group_search_and_pages_are_followed() {
    let server = MockServer::start().await;
    let crm = connector_at(&format!("{}/scim/v2", server.uri()), 2);
    let user = |id: &str| {
        json!({"id": id, "userName": id, "active": false,
               "emails": [{"value": "ada@example.com", "primary": true}],
               "groups": [{"value": "g1", "display": "eng", "type": "direct"}]})
    };
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users"))
        .and(query_param("startIndex", "1"))
        .and(query_param("count", "2"))
        .and(query_param(
            "filter",
            "userName eq \"ada.l\" or userName eq \"ada@example.com\" or emails.value eq \"ada@example.com\"",
        ))
        .respond_with(
            ResponseTemplate::new(200).set_body_json(list(vec![user("a"), user("b")], 3, 1)),
        )
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users"))
        .and(query_param("startIndex", "3"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(vec![user("c")], 3, 3)))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(path("/scim/v2/Groups"))
        .respond_with(ResponseTemplate::new(500))
        .expect(0)
        .mount(&server)
        .await;

    let accounts = crm.discover(&person()).await.expect("discover");
    assert_eq!(accounts.len(), 3);
    for account in &accounts {
        assert!(!account.active);
        assert_eq!(account.entitlements.len(), 1);
        assert_eq!(account.entitlements[0].name, "eng");
    }
}

#[tokio::test]
async fn a_server_without_member_filters_is_scanned() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(
            vec![json!({"id": "u1", "userName": "ada.l"})],
            1,
            1,
        )))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Groups"))
        .and(query_param("filter", "members.value eq \"u1\""))
        .respond_with(scim_error(
            400,
            Some("invalidFilter"),
            "unsupported attribute",
        ))
        .mount(&server)
        .await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Groups"))
        .respond_with(ResponseTemplate::new(200).set_body_json(list(
            vec![
                json!({"id": "g1", "displayName": "eng", "members": [{"value": "u1"}]}),
                json!({"id": "g2", "displayName": "ops", "members": [{"value": "u2"}]}),
            ],
            2,
            1,
        )))
        .mount(&server)
        .await;
    let accounts = crm.discover(&person()).await.expect("discover");
    assert_eq!(accounts.len(), 1);
    let names: Vec<&str> = accounts[0]
        .entitlements
        .iter()
        .map(|e| e.name.as_str())
        .collect();
    assert_eq!(names, vec!["eng"]);
}

#[tokio::test]
async fn without_patch_support_the_resource_is_put_back_changed() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "u1", "userName": "ada.l", "active": true,
            "meta": {"version": "W/\"2\"", "resourceType": "User"}})))
        .mount(&server)
        .await;
    Mock::given(method("PATCH"))
        .and(path("/scim/v2/Users/u1"))
        .respond_with(scim_error(501, None, "PATCH is not supported"))
        .expect(1)
        .mount(&server)
        .await;
    Mock::given(method("PUT"))
        .and(path("/scim/v2/Users/u1"))
        .and(header("if-match", "W/\"2\""))
        .and(body_json(
            json!({"id": "u1", "userName": "ada.l", "active": false}),
        ))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({"id": "u1"})))
        .expect(1)
        .mount(&server)
        .await;
    assert_eq!(
        crm.apply(&task(Action::Disable, None))
            .await
            .expect("disable"),
        Applied::Changed
    );
}

#[tokio::test]
async fn oversized_answers_are_refused() {
    let (server, crm) = setup().await;
    Mock::given(method("GET"))
        .and(path("/scim/v2/Groups/g1"))
        .respond_with(ResponseTemplate::new(200).set_body_string("x".repeat(5 * 1024 * 1024)))
        .mount(&server)
        .await;
    let err = crm
        .verify(&task(Action::RemoveEntitlement, Some("g1")))
        .await
        .expect_err("too large");
    assert!(matches!(err, ConnectorError::Permanent(_)), "{err:?}");
    assert!(err.to_string().contains("larger than 4 MiB"), "{err}");
}

#[tokio::test]
async fn actions_scim_cannot_do_are_unsupported() {
    let (_server, crm) = setup().await;
    for action in [
        Action::RevokeSessions,
        Action::RemoveCredential,
        Action::TransferData,
    ] {
        let err = crm
            .apply(&task(action, None))
            .await
            .expect_err("unsupported");
        assert!(matches!(err, ConnectorError::Unsupported(_)), "{err:?}");
    }
    use deprov_core::StageKind;
    assert_eq!(
        crm.supports(),
        &[
            StageKind::Disable,
            StageKind::Entitlements,
            StageKind::Delete,
            StageKind::Restore
        ]
    );
}
