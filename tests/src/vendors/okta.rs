//! A mock Okta org (Management API v1) on wiremock, following
//! <https://developer.okta.com/docs/api/openapi/okta-management/> :
//! `Authorization: SSWS <token>`, Okta error bodies (`errorCode`, `errorSummary`, …),
//! `Link` pagination with an `after` cursor and `limit`, 429 with the
//! `X-Rate-Limit-*` headers (<https://developer.okta.com/docs/reference/rl-best-practices/>),
//! and the user lifecycle (ACTIVE → SUSPENDED → DEPROVISIONED → deleted).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use serde_json::{json, Value};
use wiremock::matchers::{method, path, path_regex};
use wiremock::{Mock, MockServer, Request, ResponseTemplate};

use super::{header, new_id, query, Faults};

#[derive(Clone, Debug)]
pub struct OktaUser {
    pub id: String,
    pub login: String,
    pub email: String,
    pub status: String,
    pub last_login: Option<String>,
}

#[derive(Clone, Debug)]
struct Group {
    id: String,
    name: String,
    kind: String,
    members: BTreeSet<String>,
}

#[derive(Default)]
struct State {
    users: BTreeMap<String, OktaUser>,
    groups: BTreeMap<String, Group>,
    everyone: String,
    /// Session revocations per user (`DELETE /api/v1/users/{id}/sessions`).
    revocations: BTreeMap<String, u32>,
}

pub struct OktaMock {
    pub server: MockServer,
    pub token: String,
    state: Arc<Mutex<State>>,
    faults: Arc<Faults>,
}

fn error(status: u16, code: &str, summary: &str) -> ResponseTemplate {
    // https://developer.okta.com/docs/reference/error-codes/
    ResponseTemplate::new(status).set_body_json(json!({
        "errorCode": code,
        "errorSummary": summary,
        "errorLink": code,
        "errorId": format!("oae{:x}", fastrand::u64(..)),
        "errorCauses": [],
    }))
}

fn not_found() -> ResponseTemplate {
    error(404, "E0000007", "Not found: Resource not found: (User)")
}

fn user_json(base: &str, user: &OktaUser) -> Value {
    json!({
        "id": user.id,
        "status": user.status,
        "created": "2024-01-02T03:04:05.000Z",
        "activated": "2024-01-02T03:04:05.000Z",
        "statusChanged": null,
        "lastLogin": user.last_login,
        "lastUpdated": "2024-01-02T03:04:05.000Z",
        "passwordChanged": null,
        "type": {"id": "oty1"},
        "profile": {
            "login": user.login,
            "email": user.email,
            "firstName": user.login.split('@').next().unwrap_or_default(),
            "lastName": "Test",
        },
        "credentials": {"provider": {"type": "OKTA", "name": "OKTA"}},
        "_links": {"self": {"href": format!("{base}/api/v1/users/{}", user.id)}},
    })
}

fn group_json(group: &Group) -> Value {
    json!({
        "id": group.id,
        "created": "2024-01-02T03:04:05.000Z",
        "lastUpdated": "2024-01-02T03:04:05.000Z",
        "lastMembershipUpdated": "2024-01-02T03:04:05.000Z",
        "objectClass": ["okta:user_group"],
        "type": group.kind,
        "profile": {"name": group.name, "description": null},
    })
}

/// One clause of `search`: `profile.login eq "x"` (only what the connector needs; anything
/// else is Okta's E0000031).
fn clause_matches(clause: &str, user: &OktaUser) -> Option<bool> {
    let (field, rest) = clause.trim().split_once(" eq ")?;
    let value: String = serde_json::from_str(rest.trim()).ok()?;
    let actual = match field.trim() {
        "profile.login" => &user.login,
        "profile.email" => &user.email,
        "status" => &user.status,
        "id" => &user.id,
        _ => return None,
    };
    Some(actual.eq_ignore_ascii_case(&value))
}

fn search_matches(search: &str, user: &OktaUser) -> Option<bool> {
    let mut any = false;
    for clause in search.split(" or ") {
        any |= clause_matches(clause, user)?;
    }
    Some(any)
}

/// A page of `items` (sorted by id) after the `after` cursor, with `Link` headers.
fn page(base: &str, request: &Request, items: Vec<(String, Value)>) -> ResponseTemplate {
    let limit = query(request, "limit")
        .and_then(|l| l.parse::<usize>().ok())
        .unwrap_or(200)
        .clamp(1, 200);
    let after = query(request, "after");
    let rest: Vec<(String, Value)> = items
        .into_iter()
        .filter(|(id, _)| after.as_ref().is_none_or(|after| id > after))
        .collect();
    let more = rest.len() > limit;
    let page: Vec<(String, Value)> = rest.into_iter().take(limit).collect();
    // Links are absolute URLs on the org's own host.
    let mut url = match reqwest::Url::parse(&format!("{base}{}", request.url.path())) {
        Ok(mut url) => {
            url.set_query(request.url.query());
            url
        }
        Err(_) => request.url.clone(),
    };
    let mut response = ResponseTemplate::new(200)
        .append_header("Link", format!("<{url}>; rel=\"self\"").as_str())
        .set_body_json(Value::Array(page.iter().map(|(_, v)| v.clone()).collect()));
    if more {
        if let Some((last, _)) = page.last() {
            let pairs: Vec<(String, String)> = request
                .url
                .query_pairs()
                .filter(|(k, _)| k != "after")
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect();
            url.query_pairs_mut()
                .clear()
                .extend_pairs(pairs)
                .append_pair("after", last);
            response = response.append_header("Link", format!("<{url}>; rel=\"next\"").as_str());
        }
    }
    response
}

impl OktaMock {
    pub async fn start(token: &str) -> OktaMock {
        let server = MockServer::start().await;
        let state = Arc::new(Mutex::new(State::default()));
        let faults = Arc::new(Faults::default());
        let mock = OktaMock {
            server,
            token: token.to_string(),
            state,
            faults,
        };
        let everyone = mock.add_group_of_type("Everyone", "BUILT_IN");
        mock.lock().everyone = everyone;
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

    pub fn add_user(&self, login: &str, email: &str) -> String {
        let id = new_id("00u");
        let mut state = self.lock();
        let everyone = state.everyone.clone();
        state.users.insert(
            id.clone(),
            OktaUser {
                id: id.clone(),
                login: login.into(),
                email: email.into(),
                status: "ACTIVE".into(),
                last_login: Some("2026-11-01T09:00:00.000Z".into()),
            },
        );
        if let Some(group) = state.groups.get_mut(&everyone) {
            group.members.insert(id.clone());
        }
        id
    }

    pub fn add_group(&self, name: &str, members: &[&str]) -> String {
        let id = self.add_group_of_type(name, "OKTA_GROUP");
        if let Some(group) = self.lock().groups.get_mut(&id) {
            group.members.extend(members.iter().map(|m| m.to_string()));
        }
        id
    }

    fn add_group_of_type(&self, name: &str, kind: &str) -> String {
        let id = new_id("00g");
        self.lock().groups.insert(
            id.clone(),
            Group {
                id: id.clone(),
                name: name.into(),
                kind: kind.into(),
                members: BTreeSet::new(),
            },
        );
        id
    }

    pub fn user(&self, id: &str) -> Option<OktaUser> {
        self.lock().users.get(id).cloned()
    }

    pub fn set_status(&self, id: &str, status: &str) {
        if let Some(user) = self.lock().users.get_mut(id) {
            user.status = status.into();
        }
    }

    /// The user signs in (again), now.
    pub fn sign_in(&self, id: &str) {
        if let Some(user) = self.lock().users.get_mut(id) {
            user.last_login = Some(Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string());
        }
    }

    pub fn revocations(&self, id: &str) -> u32 {
        self.lock().revocations.get(id).copied().unwrap_or(0)
    }

    pub fn is_member(&self, group: &str, user: &str) -> bool {
        self.lock()
            .groups
            .get(group)
            .is_some_and(|g| g.members.contains(user))
    }

    /// Removes a user behind the connector's back (with its memberships).
    pub fn remove_user(&self, id: &str) {
        let mut state = self.lock();
        state.users.remove(id);
        for group in state.groups.values_mut() {
            group.members.remove(id);
        }
    }

    /// Auth, then injected faults, then the route.
    fn guard(&self) -> impl Fn(&Request) -> Option<ResponseTemplate> + Send + Sync + 'static {
        let token = self.token.clone();
        let faults = self.faults.clone();
        move |request: &Request| {
            // https://developer.okta.com/docs/guides/create-an-api-token/main/ (SSWS scheme)
            if header(request, "authorization").as_deref() != Some(&format!("SSWS {token}")) {
                return Some(error(401, "E0000011", "Invalid token provided"));
            }
            if faults.take_throttle() {
                // https://developer.okta.com/docs/reference/rl-best-practices/
                let reset = Utc::now().timestamp() + 1;
                return Some(
                    error(
                        429,
                        "E0000047",
                        "API call exceeded rate limit due to too many requests.",
                    )
                    .insert_header("X-Rate-Limit-Limit", "600")
                    .insert_header("X-Rate-Limit-Remaining", "0")
                    .insert_header("X-Rate-Limit-Reset", reset.to_string().as_str()),
                );
            }
            if faults.take_fail() {
                return Some(error(500, "E0000009", "Internal Server Error"));
            }
            None
        }
    }

    fn route(
        &self,
        handler: impl Fn(&mut State, &str, &Request, &[&str]) -> ResponseTemplate
            + Send
            + Sync
            + 'static,
    ) -> impl Fn(&Request) -> ResponseTemplate + Send + Sync + 'static {
        let guard = self.guard();
        let state = self.state.clone();
        let base = self.base_url();
        move |request: &Request| {
            if let Some(refused) = guard(request) {
                return refused;
            }
            let segments: Vec<&str> = request.url.path().split('/').skip(1).collect();
            let mut state = state.lock().unwrap_or_else(|p| p.into_inner());
            handler(&mut state, &base, request, &segments)
        }
    }

    async fn mount(&self) {
        // List / search users.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/listUsers
        Mock::given(method("GET"))
            .and(path("/api/v1/users"))
            .respond_with(self.route(|state, base, request, _| {
                let search = query(request, "search");
                let mut items = Vec::new();
                for user in state.users.values() {
                    let keep = match &search {
                        Some(search) => match search_matches(search, user) {
                            Some(keep) => keep,
                            None => return error(400, "E0000031", "Invalid search criteria."),
                        },
                        // Without search or filter, DEPROVISIONED users are not listed.
                        None => user.status != "DEPROVISIONED",
                    };
                    if keep {
                        items.push((user.id.clone(), user_json(base, user)));
                    }
                }
                page(base, request, items)
            }))
            .mount(&self.server)
            .await;

        // Get a user.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/getUser
        Mock::given(method("GET"))
            .and(path_regex(r"^/api/v1/users/[^/]+$"))
            .respond_with(
                self.route(|state, base, _, seg| match state.users.get(seg[3]) {
                    Some(user) => ResponseTemplate::new(200).set_body_json(user_json(base, user)),
                    None => not_found(),
                }),
            )
            .mount(&self.server)
            .await;

        // List a user's groups (paginated).
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/listUserGroups
        Mock::given(method("GET"))
            .and(path_regex(r"^/api/v1/users/[^/]+/groups$"))
            .respond_with(self.route(|state, base, request, seg| {
                if !state.users.contains_key(seg[3]) {
                    return not_found();
                }
                let items = state
                    .groups
                    .values()
                    .filter(|g| g.members.contains(seg[3]))
                    .map(|g| (g.id.clone(), group_json(g)))
                    .collect();
                page(base, request, items)
            }))
            .mount(&self.server)
            .await;

        // Revoke all user sessions: 204, whatever there was.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserSessions/#tag/UserSessions/operation/revokeUserSessions
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/api/v1/users/[^/]+/sessions$"))
            .respond_with(self.route(|state, _, _, seg| {
                if !state.users.contains_key(seg[3]) {
                    return not_found();
                }
                *state.revocations.entry(seg[3].to_string()).or_default() += 1;
                ResponseTemplate::new(204)
            }))
            .mount(&self.server)
            .await;

        // Suspend: only from ACTIVE; 200 with an empty object.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserLifecycle/#tag/UserLifecycle/operation/suspendUser
        Mock::given(method("POST"))
            .and(path_regex(r"^/api/v1/users/[^/]+/lifecycle/suspend$"))
            .respond_with(
                self.route(|state, _, _, seg| match state.users.get_mut(seg[3]) {
                    None => not_found(),
                    Some(user) if user.status != "ACTIVE" => error(
                        400,
                        "E0000001",
                        "Api validation failed: Cannot suspend a user that is not active",
                    ),
                    Some(user) => {
                        user.status = "SUSPENDED".into();
                        ResponseTemplate::new(200).set_body_json(json!({}))
                    }
                }),
            )
            .mount(&self.server)
            .await;

        // Deactivate: any status → DEPROVISIONED; 200 with an empty object.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserLifecycle/#tag/UserLifecycle/operation/deactivateUser
        Mock::given(method("POST"))
            .and(path_regex(r"^/api/v1/users/[^/]+/lifecycle/deactivate$"))
            .respond_with(
                self.route(|state, _, _, seg| match state.users.get_mut(seg[3]) {
                    None => not_found(),
                    Some(user) => {
                        user.status = "DEPROVISIONED".into();
                        ResponseTemplate::new(200).set_body_json(json!({}))
                    }
                }),
            )
            .mount(&self.server)
            .await;

        // Delete a user: a user not yet DEPROVISIONED is deactivated by the first call.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/User/#tag/User/operation/deleteUser
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/api/v1/users/[^/]+$"))
            .respond_with(self.route(|state, _, _, seg| {
                let id = seg[3].to_string();
                match state.users.get_mut(&id) {
                    None => not_found(),
                    Some(user) if user.status != "DEPROVISIONED" => {
                        user.status = "DEPROVISIONED".into();
                        ResponseTemplate::new(204)
                    }
                    Some(_) => {
                        state.users.remove(&id);
                        for group in state.groups.values_mut() {
                            group.members.remove(&id);
                        }
                        ResponseTemplate::new(204)
                    }
                }
            }))
            .mount(&self.server)
            .await;

        // Unsuspend: only from SUSPENDED; 200 with an empty object.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserLifecycle/#tag/UserLifecycle/operation/unsuspendUser
        Mock::given(method("POST"))
            .and(path_regex(r"^/api/v1/users/[^/]+/lifecycle/unsuspend$"))
            .respond_with(
                self.route(|state, _, _, seg| match state.users.get_mut(seg[3]) {
                    None => not_found(),
                    Some(user) if user.status != "SUSPENDED" => error(
                        400,
                        "E0000001",
                        "Api validation failed: Cannot unsuspend a user that is not suspended",
                    ),
                    Some(user) => {
                        user.status = "ACTIVE".into();
                        ResponseTemplate::new(200).set_body_json(json!({}))
                    }
                }),
            )
            .mount(&self.server)
            .await;

        // Activate: from STAGED or DEPROVISIONED; with sendEmail=false the answer carries the
        // activation link. These users have passwords, so they come back ACTIVE.
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/UserLifecycle/#tag/UserLifecycle/operation/activateUser
        Mock::given(method("POST"))
            .and(path_regex(r"^/api/v1/users/[^/]+/lifecycle/activate$"))
            .respond_with(self.route(|state, base, request, seg| {
                let send_email = query(request, "sendEmail");
                match state.users.get_mut(seg[3]) {
                    None => not_found(),
                    Some(user) if user.status == "ACTIVE" => error(
                        403,
                        "E0000016",
                        "Activation failed because the user is already active",
                    ),
                    Some(user) => {
                        user.status = "ACTIVE".into();
                        if send_email.as_deref() == Some("false") {
                            ResponseTemplate::new(200).set_body_json(json!({
                                "activationUrl": format!("{base}/welcome/XE6wE17zmphl3KqAPFxO"),
                                "activationToken": "XE6wE17zmphl3KqAPFxO",
                            }))
                        } else {
                            ResponseTemplate::new(200).set_body_json(json!({}))
                        }
                    }
                }
            }))
            .mount(&self.server)
            .await;

        // Assign a user to a group: 204 (also when a member already).
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/Group/#tag/Group/operation/assignUserToGroup
        Mock::given(method("PUT"))
            .and(path_regex(r"^/api/v1/groups/[^/]+/users/[^/]+$"))
            .respond_with(self.route(|state, _, _, seg| {
                if !state.users.contains_key(seg[5]) {
                    return not_found();
                }
                match state.groups.get_mut(seg[3]) {
                    None => error(404, "E0000007", "Not found: Resource not found: (Group)"),
                    Some(group) => {
                        group.members.insert(seg[5].to_string());
                        ResponseTemplate::new(204)
                    }
                }
            }))
            .mount(&self.server)
            .await;

        // Unassign a user from a group: 204 (also when not a member).
        // https://developer.okta.com/docs/api/openapi/okta-management/management/tag/Group/#tag/Group/operation/unassignUserFromGroup
        Mock::given(method("DELETE"))
            .and(path_regex(r"^/api/v1/groups/[^/]+/users/[^/]+$"))
            .respond_with(self.route(|state, _, _, seg| {
                if !state.users.contains_key(seg[5]) {
                    return not_found();
                }
                match state.groups.get_mut(seg[3]) {
                    None => error(404, "E0000007", "Not found: Resource not found: (Group)"),
                    Some(group) if group.kind == "BUILT_IN" => error(
                        403,
                        "E0000006",
                        "You do not have permission to perform the requested action",
                    ),
                    Some(group) => {
                        group.members.remove(seg[5]);
                        ResponseTemplate::new(204)
                    }
                }
            }))
            .mount(&self.server)
            .await;
    }
}
