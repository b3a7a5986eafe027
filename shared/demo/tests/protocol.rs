//! The provider over real HTTP, as deprov's SCIM connector sees it.
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use deprov_demo::{seed, workforce, ScimProvider, SERVICE_ACCOUNT};
use reqwest::{Client, Method, StatusCode};
use serde_json::{json, Value};

const TOKEN: &str = "s3cret-token";
const PATCH_OP: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
const ERROR: &str = "urn:ietf:params:scim:api:messages:2.0:Error";

struct T {
    p: ScimProvider,
    c: Client,
}

impl T {
    async fn new() -> T {
        T {
            p: ScimProvider::start("crm", TOKEN).await.unwrap(),
            c: Client::new(),
        }
    }

    async fn seeded() -> T {
        let t = T::new().await;
        seed(&t.p, "crm");
        t
    }

    fn req(&self, m: Method, path: &str) -> reqwest::RequestBuilder {
        self.c
            .request(m, format!("{}{path}", self.p.base_url()))
            .bearer_auth(TOKEN)
    }

    async fn send(
        &self,
        rb: reqwest::RequestBuilder,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let r = rb.send().await.unwrap();
        let (s, h) = (r.status(), r.headers().clone());
        let text = r.text().await.unwrap();
        let v = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap()
        };
        (s, h, v)
    }

    async fn get(&self, path: &str) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        self.send(self.req(Method::GET, path)).await
    }

    async fn patch(
        &self,
        path: &str,
        ops: Value,
        if_match: Option<&str>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut rb = self
            .req(Method::PATCH, path)
            .header("content-type", "application/scim+json")
            .body(json!({"schemas": [PATCH_OP], "Operations": ops}).to_string());
        if let Some(tag) = if_match {
            rb = rb.header("if-match", tag);
        }
        self.send(rb).await
    }

    async fn filter(&self, endpoint: &str, f: &str) -> Value {
        let (s, _, v) = self
            .send(self.req(Method::GET, endpoint).query(&[("filter", f)]))
            .await;
        assert_eq!(s, 200, "{f}: {v}");
        v
    }
}

fn assert_error(v: &Value, status: &str, scim_type: Option<&str>) {
    assert_eq!(v["schemas"], json!([ERROR]), "{v}");
    assert_eq!(v["status"], status, "{v}");
    assert!(v["detail"].is_string(), "{v}");
    if let Some(t) = scim_type {
        assert_eq!(v["scimType"], t, "{v}");
    }
}

#[tokio::test]
async fn refuses_requests_without_the_right_bearer_token() {
    let t = T::seeded().await;
    let url = format!("{}/Users", t.p.base_url());
    for rb in [
        t.c.get(&url),
        t.c.get(&url).bearer_auth("wrong"),
        t.c.get(&url).basic_auth("u", Some(TOKEN)),
    ] {
        let r = rb.send().await.unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
        assert_eq!(r.headers()["content-type"], "application/scim+json");
        assert_error(&r.json().await.unwrap(), "401", None);
    }
    let (s, h, _) = t.get("/Users").await;
    assert_eq!(s, 200);
    assert_eq!(h["content-type"], "application/scim+json");
}

#[tokio::test]
async fn discovery_endpoints() {
    let t = T::new().await;
    let (s, _, spc) = t.get("/ServiceProviderConfig").await;
    assert_eq!(s, 200);
    assert_eq!(spc["patch"]["supported"], true);
    assert_eq!(
        spc["filter"],
        json!({"supported": true, "maxResults": 1000})
    );
    assert_eq!(spc["etag"]["supported"], true);
    assert_eq!(spc["bulk"]["supported"], false);
    assert_eq!(spc["authenticationSchemes"][0]["type"], "oauthbearertoken");
    let (_, _, rt) = t.get("/ResourceTypes").await;
    assert_eq!(rt["totalResults"], 2);
    assert_eq!(rt["Resources"][0]["endpoint"], "/Users");
    let (_, _, schemas) = t.get("/Schemas").await;
    let user = schemas["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "User")
        .unwrap();
    assert!(user["attributes"]
        .as_array()
        .unwrap()
        .iter()
        .any(|a| a["name"] == "userName"));
    let (s, _, v) = t.get("/Nope").await;
    assert_eq!(s, 404);
    assert_error(&v, "404", None);
}

#[tokio::test]
async fn filters_by_user_name_email_and_or() {
    let t = T::seeded().await;
    let v = t.filter("/Users", r#"userName eq "DVAUGHAN""#).await;
    assert_eq!(v["totalResults"], 1);
    assert_eq!(v["Resources"][0]["userName"], "dvaughan");
    assert_eq!(
        v["schemas"],
        json!(["urn:ietf:params:scim:api:messages:2.0:ListResponse"])
    );

    let v = t
        .filter("/Users", r#"emails.value eq "Mary.Jackson@example.com""#)
        .await;
    assert_eq!(v["totalResults"], 1);
    assert_eq!(v["Resources"][0]["userName"], "mjackson");
    let v = t
        .filter("/Users", r#"emails eq "mary.jackson@example.com""#)
        .await;
    assert_eq!(v["totalResults"], 1);

    let v = t
        .filter(
            "/Users",
            r#"userName eq "mjackson" or (emails co "hedy" and active eq true)"#,
        )
        .await;
    assert_eq!(v["totalResults"], 2);
    let v = t
        .filter("/Users", r#"userName sw "svc-" and not (active eq false)"#)
        .await;
    assert_eq!(v["Resources"][0]["userName"], SERVICE_ACCOUNT);

    let gid = t.p.find_group_id("Sales").unwrap();
    let uid = t.p.find_user_id("hlamarr").unwrap();
    let v = t
        .filter("/Groups", &format!(r#"members.value eq "{uid}""#))
        .await;
    assert_eq!(v["totalResults"], 1, "{v}");
    assert_eq!(v["Resources"][0]["id"], gid.as_str());
    let v = t
        .filter(
            "/Groups",
            &format!(r#"members[value eq "{uid}" and type eq "User"]"#),
        )
        .await;
    assert_eq!(v["totalResults"], 1, "{v}");
    let v = t
        .filter("/Users", &format!(r#"groups.value eq "{gid}""#))
        .await;
    assert_eq!(v["totalResults"], 3, "{v}"); // Dorothy, Mary, Hedy

    for bad in [
        "userName eq",
        "bogus eq \"x\"",
        "userName eq \"x\" or",
        "active co \"x\"",
    ] {
        let (s, _, v) = t
            .send(t.req(Method::GET, "/Users").query(&[("filter", bad)]))
            .await;
        assert_eq!(s, 400, "{bad}");
        assert_error(&v, "400", Some("invalidFilter"));
    }
}

#[tokio::test]
async fn paginates_in_creation_order() {
    let t = T::new().await;
    let ids: Vec<String> = (0..25)
        .map(|i| {
            t.p.add_user(
                &format!("u{i:02}"),
                &format!("u{i}@example.com"),
                &format!("User {i}"),
                true,
            )
        })
        .collect();
    let (_, _, v) = t
        .send(
            t.req(Method::GET, "/Users")
                .query(&[("startIndex", "21"), ("count", "10")]),
        )
        .await;
    assert_eq!(v["totalResults"], 25);
    assert_eq!(v["startIndex"], 21);
    assert_eq!(v["itemsPerPage"], 5);
    let got: Vec<&str> = v["Resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        got,
        ids[20..].iter().map(String::as_str).collect::<Vec<_>>()
    );

    let (_, _, v) = t
        .send(t.req(Method::GET, "/Users").query(&[("count", "0")]))
        .await;
    assert_eq!(v["totalResults"], 25);
    assert_eq!(v["itemsPerPage"], 0);
    assert_eq!(v["Resources"], json!([]));

    let (_, _, v) = t
        .send(
            t.req(Method::GET, "/Users")
                .query(&[("startIndex", "0"), ("count", "3")]),
        )
        .await;
    assert_eq!(v["startIndex"], 1);
    assert_eq!(v["Resources"][0]["id"], ids[0].as_str());
    assert_eq!(v["Resources"].as_array().unwrap().len(), 3);

    let (s, _, v) = t
        .send(t.req(Method::GET, "/Users").query(&[("count", "many")]))
        .await;
    assert_eq!(s, 400);
    assert_error(&v, "400", Some("invalidValue"));

    let (_, _, v) = t
        .send(
            t.req(Method::GET, "/Users")
                .query(&[("count", "2"), ("attributes", "userName")]),
        )
        .await;
    let first = v["Resources"][0].as_object().unwrap();
    assert!(
        first.contains_key("userName") && first.contains_key("id") && !first.contains_key("emails")
    );
}

#[tokio::test]
async fn patch_active_with_if_match() {
    let t = T::seeded().await;
    let id = t.p.find_user_id("kjohnson").unwrap();
    let path = format!("/Users/{id}");
    let (s, h, user) = t.get(&path).await;
    assert_eq!(s, 200);
    let etag = h["etag"].to_str().unwrap().to_owned();
    assert!(etag.starts_with("W/\""), "{etag}");
    assert_eq!(user["meta"]["version"], etag.as_str());
    assert_eq!(
        user["meta"]["location"],
        format!("{}{path}", t.p.base_url())
    );
    assert_eq!(user["active"], true);

    let ops = json!([{"op": "Replace", "path": "active", "value": false}]);
    let (s, h, v) = t.patch(&path, ops.clone(), Some(&etag)).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["active"], false);
    let new_tag = h["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_tag, etag);
    assert_eq!(t.p.user(&id).unwrap()["active"], false);

    // A stale version is refused and nothing changes.
    let (s, _, v) = t
        .patch(
            &path,
            json!([{"op": "replace", "value": {"active": true}}]),
            Some(&etag),
        )
        .await;
    assert_eq!(s, 412);
    assert_error(&v, "412", None);
    assert_eq!(t.p.user(&id).unwrap()["active"], false);

    // Re-applying the same change is not a modification.
    let (s, h, _) = t.patch(&path, ops, Some(&new_tag)).await;
    assert_eq!(s, 200);
    assert_eq!(h["etag"].to_str().unwrap(), new_tag);

    // If-None-Match with the current version: 304.
    let (s, _, _) = t
        .send(t.req(Method::GET, &path).header("if-none-match", &new_tag))
        .await;
    assert_eq!(s, 304);

    assert_eq!(t.p.patches_of_user(&id), 3);
    assert_eq!(t.p.requests("PATCH"), 3);
    assert_eq!(t.p.requests("get"), 2);
}

#[tokio::test]
async fn patch_variants_and_errors() {
    let t = T::seeded().await;
    let id = t.p.find_user_id("rperlman").unwrap();
    let path = format!("/Users/{id}");
    let ops = json!([
        {"op": "add", "path": "emails", "value": [{"value": "radia@home.example", "type": "home"}]},
        {"op": "replace", "path": "emails[type eq \"work\"].value", "value": "radia@example.com"},
        {"op": "replace", "path": "name.familyName", "value": "Perlman-X"},
        {"op": "add", "path": "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User:department", "value": "Support"},
        {"op": "replace", "value": {"displayName": "Radia P.", "title": "Engineer"}},
        {"op": "remove", "path": "nickName"},
    ]);
    let (s, _, v) = t.patch(&path, ops, None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["emails"].as_array().unwrap().len(), 2);
    assert_eq!(v["emails"][0]["value"], "radia@example.com");
    assert_eq!(v["name"]["familyName"], "Perlman-X");
    assert_eq!(
        v["urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"]["department"],
        "Support"
    );
    assert_eq!(v["displayName"], "Radia P.");
    assert_eq!(v["title"], "Engineer");

    let cases = [
        (
            json!([{"op": "replace", "path": "favouriteColour", "value": "x"}]),
            "invalidPath",
        ),
        (
            json!([{"op": "explode", "path": "active", "value": false}]),
            "invalidValue",
        ),
        (
            json!([{"op": "replace", "path": "active", "value": "false"}]),
            "invalidValue",
        ),
        (
            json!([{"op": "replace", "path": "groups", "value": []}]),
            "mutability",
        ),
        (json!([{"op": "remove"}]), "noTarget"),
        (
            json!([{"op": "replace", "path": "emails[type eq \"fax\"].value", "value": "x"}]),
            "noTarget",
        ),
        (
            json!([{"op": "remove", "path": "userName"}]),
            "invalidValue",
        ),
        (json!([]), "invalidSyntax"),
    ];
    let before = t.p.user(&id).unwrap();
    for (ops, scim_type) in cases {
        let (s, _, v) = t.patch(&path, ops.clone(), None).await;
        assert_eq!(s, 400, "{ops}: {v}");
        assert_error(&v, "400", Some(scim_type));
    }
    assert_eq!(
        t.p.user(&id).unwrap(),
        before,
        "failed PATCHes change nothing"
    );

    let (s, _, v) = t
        .patch(
            "/Users/does-not-exist",
            json!([{"op": "replace", "path": "active", "value": false}]),
            None,
        )
        .await;
    assert_eq!(s, 404);
    assert_error(&v, "404", None);
}

#[tokio::test]
async fn removing_a_group_member_by_value_filter() {
    let t = T::seeded().await;
    let uid = t.p.find_user_id("mjackson").unwrap();
    let gid = t.p.find_group_id("Sales").unwrap();
    let groups = t.p.user(&uid).unwrap()["groups"].clone();
    assert!(
        groups
            .as_array()
            .unwrap()
            .iter()
            .any(|g| g["value"] == gid.as_str()
                && g["display"] == "Sales"
                && g["type"] == "direct"),
        "{groups}"
    );
    let (_, h, group) = t.get(&format!("/Groups/{gid}")).await;
    let member = group["members"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["value"] == uid.as_str())
        .unwrap()
        .clone();
    assert_eq!(member["display"], "Mary Jackson");
    assert_eq!(member["type"], "User");
    assert_eq!(member["$ref"], format!("{}/Users/{uid}", t.p.base_url()));
    let etag = h["etag"].to_str().unwrap().to_owned();

    let ops = json!([{"op": "remove", "path": format!("members[value eq \"{uid}\"]")}]);
    let (s, h, v) = t
        .patch(&format!("/Groups/{gid}"), ops.clone(), Some(&etag))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_ne!(h["etag"].to_str().unwrap(), etag);
    assert!(!v["members"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["value"] == uid.as_str()));
    let groups = t.p.user(&uid).unwrap()["groups"].clone();
    assert_eq!(groups, Value::Null, "Sales was Mary's only CRM group");
    // Already removed: still fine (idempotent retry).
    let (s, _, _) = t.patch(&format!("/Groups/{gid}"), ops, None).await;
    assert_eq!(s, 200);

    // Add back, then the Azure-style remove with a value list.
    let (s, _, _) = t
        .patch(
            &format!("/Groups/{gid}"),
            json!([{"op": "add", "path": "members", "value": [{"value": uid}]}]),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert!(t.p.user(&uid).unwrap()["groups"]
        .as_array()
        .unwrap()
        .iter()
        .any(|g| g["value"] == gid.as_str()));
    let (s, _, _) = t
        .patch(
            &format!("/Groups/{gid}"),
            json!([{"op": "remove", "path": "members", "value": [{"value": uid}]}]),
            None,
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(t.p.user(&uid).unwrap()["groups"], Value::Null);

    let (s, _, v) = t
        .patch(
            &format!("/Groups/{gid}"),
            json!([{"op": "add", "path": "members", "value": [{"value": "ghost"}]}]),
            None,
        )
        .await;
    assert_eq!(s, 400);
    assert_error(&v, "400", Some("invalidValue"));
}

#[tokio::test]
async fn create_replace_delete() {
    let t = T::new().await;
    let body = json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "userName": "New.Hire", "emails": [{"value": "new.hire@example.com", "primary": true}], "active": true,
        "id": "ignored", "groups": [{"value": "ignored"}],
    });
    let post = |b: &Value| t.req(Method::POST, "/Users").json(b);
    let (s, h, v) = t.send(post(&body)).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().to_owned();
    assert_ne!(id, "ignored");
    assert!(v.get("groups").is_none());
    assert_eq!(
        h["location"].to_str().unwrap(),
        format!("{}/Users/{id}", t.p.base_url())
    );
    assert_eq!(
        h["etag"].to_str().unwrap(),
        v["meta"]["version"].as_str().unwrap()
    );
    assert_eq!(v["meta"]["resourceType"], "User");

    let dup =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "NEW.HIRE"});
    let (s, _, v) = t.send(post(&dup)).await;
    assert_eq!(s, 409);
    assert_error(&v, "409", Some("uniqueness"));
    let (s, _, _) = t.send(post(&json!({"userName": "no-schemas"}))).await;
    assert_eq!(s, 400);

    let put = json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "new.hire", "displayName": "New Hire", "active": false});
    let (s, _, v) = t
        .send(t.req(Method::PUT, &format!("/Users/{id}")).json(&put))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["active"], false);
    assert!(v.get("emails").is_none(), "PUT replaces");

    let gid = t.p.add_group("Everyone", &[&id]);
    let gv = t.p.group(&gid).unwrap()["meta"]["version"].clone();
    let (s, h, _) = t
        .send(
            t.req(Method::DELETE, &format!("/Users/{id}"))
                .header("if-match", "W/\"999\""),
        )
        .await;
    assert_eq!(s, 412, "{h:?}");
    let (s, _, v) = t.send(t.req(Method::DELETE, &format!("/Users/{id}"))).await;
    assert_eq!((s, v), (StatusCode::NO_CONTENT, Value::Null));
    let (s, _, v) = t.get(&format!("/Users/{id}")).await;
    assert_eq!(s, 404);
    assert_error(&v, "404", None);
    let (s, _, _) = t.send(t.req(Method::DELETE, &format!("/Users/{id}"))).await;
    assert_eq!(s, 404);
    let g = t.p.group(&gid).unwrap();
    assert!(
        g.get("members").is_none(),
        "deleted users leave their groups"
    );
    assert_ne!(g["meta"]["version"], gv);
    assert!(t.p.user(&id).is_none());
}

#[tokio::test]
async fn refuses_bad_bodies() {
    let t = T::new().await;
    let big = "x".repeat(2 << 20);
    let (s, _, v) = t
        .send(
            t.req(Method::POST, "/Users")
                .header("content-type", "application/json")
                .body(big),
        )
        .await;
    assert_eq!(s, 413);
    assert_error(&v, "413", None);
    let (s, _, _) = t
        .send(
            t.req(Method::POST, "/Users")
                .header("content-type", "text/plain")
                .body("{}"),
        )
        .await;
    assert_eq!(s, 415);
    let (s, _, v) = t
        .send(
            t.req(Method::POST, "/Users")
                .header("content-type", "application/scim+json")
                .body("{nope"),
        )
        .await;
    assert_eq!(s, 400);
    assert_error(&v, "400", Some("invalidSyntax"));
    let (s, _, _) = t.send(t.req(Method::PUT, "/Users")).await;
    assert_eq!(s, 405);
}

#[tokio::test]
async fn fault_injection_latency_and_counters() {
    let t = T::seeded().await;
    t.p.throttle_next(2, 7);
    for _ in 0..2 {
        let r = t.req(Method::GET, "/Users").send().await.unwrap();
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["retry-after"], "7");
        assert_error(&r.json().await.unwrap(), "429", None);
    }
    t.p.fail_next(1);
    let r = t.req(Method::GET, "/Users").send().await.unwrap();
    assert_eq!(r.status(), 503);
    assert!(r.headers().get("retry-after").is_none());
    assert_eq!(t.get("/Users").await.0, 200);

    t.p.set_latency(Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(t.get("/ServiceProviderConfig").await.0, 200);
    assert!(started.elapsed() >= Duration::from_millis(150));
    t.p.set_latency(Duration::ZERO);

    assert_eq!(t.p.requests("GET"), 5);
    assert_eq!(t.p.requests("DELETE"), 0);

    let p2 = t.p.clone();
    t.p.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(Client::new()
        .get(format!("{}/Users", p2.base_url()))
        .bearer_auth(TOKEN)
        .send()
        .await
        .is_err());
}

#[tokio::test]
async fn seed_follows_the_workforce() {
    let crm = ScimProvider::start("crm", TOKEN).await.unwrap();
    let wiki = ScimProvider::start("wiki", TOKEN).await.unwrap();
    seed(&crm, "crm");
    seed(&wiki, "wiki");
    seed(&wiki, "wiki"); // idempotent
    assert_ne!(crm.base_url(), wiki.base_url());
    assert_eq!(wiki.name(), "wiki");
    for (p, app) in [(&crm, "crm"), (&wiki, "wiki")] {
        for person in workforce() {
            let id = p.find_user_id(person.username);
            assert_eq!(
                id.is_some(),
                person.apps.contains(&app),
                "{} in {app}",
                person.id
            );
            if let Some(id) = id {
                let u = p.user(&id).unwrap();
                assert_eq!(u["emails"][0]["value"], person.email);
                assert_eq!(u["displayName"], person.display_name);
                assert_eq!(u["externalId"], person.id);
                let groups: Vec<&str> = u["groups"]
                    .as_array()
                    .map(|g| g.iter().map(|g| g["display"].as_str().unwrap()).collect())
                    .unwrap_or_default();
                for g in person
                    .groups
                    .iter()
                    .filter(|g| deprov_demo::app_groups(app).contains(g))
                {
                    assert!(
                        groups.contains(g),
                        "{} should be in {g} in {app}",
                        person.username
                    );
                }
            }
        }
        let svc = p.find_user_id(SERVICE_ACCOUNT).unwrap();
        assert_eq!(p.user(&svc).unwrap()["active"], true);
    }
    let t = T {
        p: wiki.clone(),
        c: Client::new(),
    };
    let v = t.filter("/Users", "userName pr").await;
    let accounts = workforce()
        .iter()
        .filter(|p| p.apps.contains(&"wiki"))
        .count()
        + 1;
    assert_eq!(v["totalResults"], accounts);
    let v = t.filter("/Groups", "displayName pr").await;
    assert_eq!(v["totalResults"], 4);
}

#[tokio::test]
async fn search_projection_and_primary_emails() {
    let t = T::seeded().await;
    let search = json!({
        "schemas": ["urn:ietf:params:scim:api:messages:2.0:SearchRequest"],
        "filter": "userName eq \"ghopper\" or userName eq \"hlamarr\"",
        "excludedAttributes": ["groups", "emails"],
        "count": 1,
    });
    let (s, _, v) = t
        .send(t.req(Method::POST, "/Users/.search").json(&search))
        .await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["totalResults"], 2);
    assert_eq!(v["itemsPerPage"], 1);
    let first = v["Resources"][0].as_object().unwrap();
    assert!(
        first.contains_key("userName")
            && !first.contains_key("groups")
            && !first.contains_key("emails")
    );

    let (_, _, v) = t
        .send(t.req(Method::GET, "/Users").query(&[
            ("filter", "userName eq \"hlamarr\""),
            ("attributes", "emails.value,name.givenName"),
        ]))
        .await;
    assert_eq!(
        v["Resources"][0]["emails"],
        json!([{"value": "hedy.lamarr@example.com"}])
    );
    assert_eq!(v["Resources"][0]["name"], json!({"givenName": "Hedy"}));

    let id = t.p.find_user_id("hlamarr").unwrap();
    let ops = json!([{"op": "add", "path": "emails", "value": [{"value": "hedy@new.example", "type": "work", "primary": true}]}]);
    let (s, _, v) = t.patch(&format!("/Users/{id}"), ops, None).await;
    assert_eq!(s, 200, "{v}");
    let primaries: Vec<&Value> = v["emails"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["primary"] == true)
        .collect();
    assert_eq!(primaries.len(), 1);
    assert_eq!(primaries[0]["value"], "hedy@new.example");

    let put =
        json!({"schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"], "userName": "hlamarr"});
    let (s, _, v) = t
        .send(
            t.req(Method::PUT, &format!("/Users/{id}"))
                .header("if-match", "W/\"1\"")
                .json(&put),
        )
        .await;
    assert_eq!(s, 412);
    assert_error(&v, "412", None);
}
