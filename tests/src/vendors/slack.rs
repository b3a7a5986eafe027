//! A mock Slack Enterprise Grid org on wiremock: the SCIM 2.0 API under `/scim/v2`
//! (<https://docs.slack.dev/reference/scim-api>) and the Admin Web API methods under
//! `/api` (<https://docs.slack.dev/reference/methods/admin.users.session.reset>,
//! <https://docs.slack.dev/reference/methods/admin.users.session.list>), with Slack's
//! `{"ok": false, "error": …}` answers on HTTP 200 and 429 + `Retry-After`
//! (<https://docs.slack.dev/apis/web-api/rate-limits>).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::{header, query, Faults};

#[derive(Clone, Debug)]
pub struct SlackUser {
    pub id: String,
    pub user_name: String,
    pub email: String,
    pub active: bool,
    pub sessions: Vec<String>,
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, SlackUser>,
    next: u32,
}

pub struct SlackMock {
    pub server: MockServer,
    pub token: String,
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
}

pub const TEAM: &str = "T0DEPROV01";

/// Slack's SCIM error shape (<https://docs.slack.dev/reference/scim-api#errors>).
fn scim_error(status: u16, description: &str) -> ResponseTemplate {
    ResponseTemplate::new(status).set_body_json(json!({
        "Errors": {"description": description, "code": status}
    }))
}

fn web_error(code: &str) -> ResponseTemplate {
    ResponseTemplate::new(200).set_body_json(json!({"ok": false, "error": code}))
}

fn user_json(user: &SlackUser) -> Value {
    json!({
        "schemas": ["urn:ietf:params:scim:schemas:core:2.0:User"],
        "id": user.id,
        "userName": user.user_name,
        "active": user.active,
        "emails": [{"value": user.email, "primary": true}],
        "groups": [],
        "meta": {"created": "2024-01-02T03:04:05-08:00", "location": format!("https://api.slack.com/scim/v2/Users/{}", user.id)},
    })
}

fn filter_matches(filter: &str, user: &SlackUser) -> Option<bool> {
    let mut any = false;
    for clause in filter.split(" or ") {
        let (field, literal) = clause.trim().split_once(" eq ")?;
        let value: String = serde_json::from_str(literal.trim()).ok()?;
        let actual = match field {
            "userName" => &user.user_name,
            "emails.value" | "email" => &user.email,
            _ => return None,
        };
        any |= actual.eq_ignore_ascii_case(&value);
    }
    Some(any)
}

fn form(request: &Request) -> BTreeMap<String, String> {
    let body = String::from_utf8_lossy(&request.body);
    if header(request, "content-type").is_some_and(|t| t.starts_with("application/json")) {
        return serde_json::from_str::<BTreeMap<String, Value>>(&body)
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.as_str().map(str::to_string).unwrap_or(v.to_string())))
            .collect();
    }
    reqwest::Url::parse(&format!("http://form/?{body}"))
        .map(|url| url.query_pairs().into_owned().collect())
        .unwrap_or_default()
}

impl SlackMock {
    pub async fn start(token: &str) -> SlackMock {
        let mock = SlackMock {
            server: MockServer::start().await,
            token: token.into(),
            state: Arc::new(Mutex::new(State::default())),
            faults: Arc::new(Faults::default()),
        };
        mock.mount().await;
        mock
    }

    pub fn base_url(&self) -> String {
        self.server.uri()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn throttle_next(&self, n: u32) {
        self.faults.throttle_next(n);
    }

    pub fn fail_next(&self, n: u32) {
        self.faults.fail_next(n);
    }

    /// A user with one active session.
    pub fn add_user(&self, user_name: &str, email: &str) -> String {
        let mut state = self.lock();
        state.next += 1;
        let n = state.next;
        let id = format!("W{n:08}");
        state.users.insert(
            id.clone(),
            SlackUser {
                id: id.clone(),
                user_name: user_name.into(),
                email: email.into(),
                active: true,
                sessions: vec![format!("{n}01")],
            },
        );
        id
    }

    pub fn sign_in(&self, id: &str) {
        if let Some(user) = self.lock().users.get_mut(id) {
            let n = user.sessions.len() + 1;
            user.sessions.push(format!("{id}-{n}"));
        }
    }

    pub fn user(&self, id: &str) -> Option<SlackUser> {
        self.lock().users.get(id).cloned()
    }

    pub fn remove_user(&self, id: &str) {
        self.lock().users.remove(id);
    }

    fn route(
        &self,
        scim: bool,
        handler: impl Fn(&mut State, &Request, &[&str]) -> ResponseTemplate + Send + Sync + 'static,
    ) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
        let state = self.state.clone();
        let faults = self.faults.clone();
        let token = self.token.clone();
        move |request: &Request| {
            if header(request, "authorization").as_deref() != Some(&format!("Bearer {token}")) {
                return if scim {
                    scim_error(401, "invalid_authentication")
                } else {
                    web_error("invalid_auth")
                };
            }
            if faults.take_throttle() {
                // https://docs.slack.dev/apis/web-api/rate-limits (also SCIM's)
                return ResponseTemplate::new(429)
                    .insert_header("Retry-After", "1")
                    .set_body_json(json!({"ok": false, "error": "ratelimited"}));
            }
            if faults.take_fail() {
                return if scim {
                    scim_error(503, "service_unavailable")
                } else {
                    web_error("internal_error")
                };
            }
            let segments: Vec<&str> = request.url.path().split('/').skip(1).collect();
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            handler(&mut state, request, &segments)
        }
    }

    async fn mount(&self) {
        // SCIM: list users, startIndex / count, filter.
        // https://docs.slack.dev/reference/scim-api#get-users
        Mock::given(method("GET"))
            .and(path("/scim/v2/Users"))
            .respond_with(self.route(true, |state, request, _| {
                let mut found = Vec::new();
                for user in state.users.values() {
                    match query(request, "filter").map(|f| filter_matches(&f, user)) {
                        None | Some(Some(true)) => found.push(user_json(user)),
                        Some(Some(false)) => {}
                        Some(None) => return scim_error(400, "invalid_filter"),
                    }
                }
                let start = query(request, "startIndex")
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(1)
                    .max(1);
                let count = query(request, "count")
                    .and_then(|s| s.parse::<usize>().ok())
                    .unwrap_or(100)
                    .min(1000);
                let total = found.len();
                let page: Vec<Value> = found.into_iter().skip(start - 1).take(count).collect();
                ResponseTemplate::new(200).set_body_json(json!({
                    "schemas": ["urn:ietf:params:scim:api:messages:2.0:ListResponse"],
                    "totalResults": total,
                    "itemsPerPage": page.len(),
                    "startIndex": start,
                    "Resources": page,
                }))
            }))
            .mount(&self.server)
            .await;

        // SCIM: one user.
        // https://docs.slack.dev/reference/scim-api#get-users-id
        Mock::given(method("GET"))
            .and(path_regex(r"^/scim/v2/Users/[^/]+$"))
            .respond_with(
                self.route(true, |state, _, seg| match state.users.get(seg[3]) {
                    Some(user) => ResponseTemplate::new(200).set_body_json(user_json(user)),
                    None => scim_error(404, "user_not_found"),
                }),
            )
            .mount(&self.server)
            .await;

        // SCIM: PATCH `active: false` deactivates (and ends the user's sessions).
        // https://docs.slack.dev/reference/scim-api#patch-users-id
        Mock::given(method("PATCH"))
            .and(path_regex(r"^/scim/v2/Users/[^/]+$"))
            .respond_with(self.route(true, |state, request, seg| {
                let body: Value = request.body_json().unwrap_or(Value::Null);
                let Some(user) = state.users.get_mut(seg[3]) else {
                    return scim_error(404, "user_not_found");
                };
                for op in body["Operations"].as_array().into_iter().flatten() {
                    if op["path"].as_str() == Some("active") {
                        if let Some(active) = op["value"].as_bool() {
                            user.active = active;
                        }
                    } else if let Some(active) = op["value"]["active"].as_bool() {
                        user.active = active;
                    }
                }
                if !user.active {
                    user.sessions.clear();
                }
                ResponseTemplate::new(200).set_body_json(user_json(user))
            }))
            .mount(&self.server)
            .await;

        // SCIM: DELETE sets the user to deactivated (it is not removed).
        // https://docs.slack.dev/reference/scim-api#delete-users-id
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/scim/v2/Users/[^/]+$"))
            .respond_with(
                self.route(true, |state, _, seg| match state.users.get_mut(seg[3]) {
                    Some(user) => {
                        user.active = false;
                        user.sessions.clear();
                        ResponseTemplate::new(204)
                    }
                    None => scim_error(404, "user_not_found"),
                }),
            )
            .mount(&self.server)
            .await;

        // admin.users.session.reset: wipes every session of `user_id`.
        // https://docs.slack.dev/reference/methods/admin.users.session.reset
        Mock::given(method("POST"))
            .and(path("/api/admin.users.session.reset"))
            .respond_with(self.route(false, |state, request, _| {
                let form = form(request);
                let Some(user_id) = form.get("user_id") else {
                    return web_error("invalid_arguments");
                };
                match state.users.get_mut(user_id) {
                    Some(user) => {
                        user.sessions.clear();
                        ResponseTemplate::new(200).set_body_json(json!({"ok": true}))
                    }
                    None => web_error("user_not_found"),
                }
            }))
            .mount(&self.server)
            .await;

        // admin.users.session.list: user_id and team_id together, or neither (every
        // session, paginated with cursor / limit).
        // https://docs.slack.dev/reference/methods/admin.users.session.list
        Mock::given(method("POST"))
            .and(path("/api/admin.users.session.list"))
            .respond_with(self.route(false, |state, request, _| {
                let form = form(request);
                let (user, team) = (form.get("user_id"), form.get("team_id"));
                if user.is_some() != team.is_some() {
                    return web_error("invalid_arguments");
                }
                if let Some(user) = user {
                    if !state.users.contains_key(user) {
                        return web_error("user_not_found");
                    }
                }
                let all: Vec<Value> = state
                    .users
                    .values()
                    .filter(|u| user.is_none_or(|id| &u.id == id))
                    .flat_map(|u| {
                        u.sessions.iter().map(|s| {
                            json!({"user_id": u.id, "team_id": TEAM, "session_id": s,
                                   "created": {"device_hardware": "Mac", "os": "macOS",
                                               "os_version": "14.1", "slack_client_version": "4.36",
                                               "ip": "192.0.2.10"}})
                        })
                    })
                    .collect();
                let limit = form
                    .get("limit")
                    .and_then(|l| l.parse::<usize>().ok())
                    .unwrap_or(1000)
                    .clamp(1, 1000);
                let offset = form
                    .get("cursor")
                    .and_then(|c| c.strip_prefix("dXNlcjo"))
                    .and_then(|c| c.parse::<usize>().ok())
                    .unwrap_or(0);
                let next = if offset + limit < all.len() {
                    format!("dXNlcjo{}", offset + limit)
                } else {
                    String::new()
                };
                let page: Vec<Value> = all.into_iter().skip(offset).take(limit).collect();
                ResponseTemplate::new(200).set_body_json(json!({
                    "ok": true,
                    "active_sessions": page,
                    "response_metadata": {"next_cursor": next},
                }))
            }))
            .mount(&self.server)
            .await;
    }
}
