//! In-process SCIM 2.0 service providers (RFC 7643/7644) for `deprov demo`, integration tests
//! and benchmarks.
//!
//! Each [`ScimProvider`] serves one fictional app on `127.0.0.1:<random port>` so the real
//! SCIM connector can be exercised over HTTP with zero configuration. The implementation is
//! deliberately strict (ETags, preconditions, filter grammar, PATCH semantics, error bodies)
//! so that a connector that works here works against a real provider. Tests can inject
//! latency, 429s and 503s, and read request counters.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! let crm = deprov_demo::ScimProvider::start("crm", "demo-token").await?;
//! deprov_demo::seed(&crm, "crm");
//! let dorothy = crm.find_user_id("dvaughan");
//! // Point a SCIM client at crm.base_url() with "Authorization: Bearer demo-token".
//! # let _ = dorothy; Ok(()) }
//! ```

mod error;
mod filter;
mod http;
mod patch;
mod schema;
mod store;
mod workforce;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use serde_json::{Map, Value};
use tokio::sync::watch;

use crate::http::{lock, Shared};
use crate::schema::Kind;

pub use crate::workforce::{app_groups, seed, workforce, DemoPerson, APPS, SERVICE_ACCOUNT};

/// A running SCIM service provider. Cheap to clone; the server stops on [`shutdown`] or when
/// the last handle is dropped.
///
/// [`shutdown`]: ScimProvider::shutdown
#[derive(Clone)]
pub struct ScimProvider {
    inner: Arc<Handle>,
}

struct Handle {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.stop.send_replace(true);
    }
}

impl fmt::Debug for ScimProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScimProvider")
            .field("name", &self.name())
            .field("base_url", &self.base_url())
            .finish_non_exhaustive()
    }
}

impl ScimProvider {
    /// Binds 127.0.0.1:0 and serves in a tokio task. `token`: required bearer token.
    pub async fn start(name: &str, token: &str) -> std::io::Result<ScimProvider> {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::new(name, token, format!("http://{addr}/scim/v2")));
        let app = Router::new()
            .fallback(http::handle)
            .with_state(Arc::clone(&shared));
        let (stop, mut stopped) = watch::channel(false);
        let label = name.to_owned();
        tokio::spawn(async move {
            let signal = async move {
                // Also resolves when every handle (and so the sender) is gone.
                let _ = stopped.wait_for(|s| *s).await;
            };
            if let Err(e) = axum::serve(listener, app)
                .with_graceful_shutdown(signal)
                .await
            {
                tracing::warn!(provider = %label, error = %e, "demo SCIM server stopped with an error");
            }
        });
        tracing::debug!(provider = %name, %addr, "demo SCIM server listening");
        Ok(ScimProvider {
            inner: Arc::new(Handle { shared, stop }),
        })
    }

    fn shared(&self) -> &Shared {
        &self.inner.shared
    }

    /// e.g. `http://127.0.0.1:40123/scim/v2` (no trailing slash).
    pub fn base_url(&self) -> String {
        self.shared().base.clone()
    }

    pub fn name(&self) -> &str {
        &self.shared().name
    }

    pub(crate) fn insert(&self, kind: Kind, attrs: Map<String, Value>) -> Option<String> {
        let mut store = lock(&self.shared().store);
        match store.create(kind, attrs) {
            Ok(id) => Some(id),
            Err(e) => {
                tracing::warn!(provider = %self.name(), detail = %e.detail, "demo resource not created");
                None
            }
        }
    }

    /// Creates a user directly (no HTTP) and returns its id. If `user_name` is already taken
    /// the existing user's id is returned unchanged, so seeding code can be re-run.
    pub fn add_user(
        &self,
        user_name: &str,
        email: &str,
        display_name: &str,
        active: bool,
    ) -> String {
        if let Some(id) = self.find_user_id(user_name) {
            return id;
        }
        let attrs = workforce::new_user(user_name, email, display_name, active);
        self.insert(Kind::User, attrs).unwrap_or_default()
    }

    /// Creates a group directly (no HTTP) and returns its id. Ids that name no user or group
    /// here are left out (with a warning) rather than failing the whole group.
    pub fn add_group(&self, display_name: &str, member_ids: &[&str]) -> String {
        let mut store = lock(&self.shared().store);
        let members: Vec<Value> = member_ids
            .iter()
            .filter(|id| {
                let known = store.get(Kind::User, id).is_some() || store.get(Kind::Group, id).is_some();
                if !known {
                    tracing::warn!(provider = %self.name(), member = %id, "unknown member left out of demo group");
                }
                known
            })
            .map(|id| serde_json::json!({ "value": id }))
            .collect();
        let mut attrs = Map::new();
        attrs.insert("displayName".into(), Value::from(display_name));
        if !members.is_empty() {
            attrs.insert("members".into(), Value::Array(members));
        }
        match store.create(Kind::Group, attrs) {
            Ok(id) => id,
            Err(e) => {
                tracing::warn!(provider = %self.name(), detail = %e.detail, "demo group not created");
                String::new()
            }
        }
    }

    fn render(&self, kind: Kind, id: &str) -> Option<Value> {
        let store = lock(&self.shared().store);
        store.get(kind, id).map(|r| store.render(r))
    }

    /// The user as `GET /Users/{id}` would return it, `None` if absent.
    pub fn user(&self, id: &str) -> Option<Value> {
        self.render(Kind::User, id)
    }

    /// The group as `GET /Groups/{id}` would return it, `None` if absent.
    pub fn group(&self, id: &str) -> Option<Value> {
        self.render(Kind::Group, id)
    }

    /// Id of the user with this `userName` (case-insensitive, like the filter).
    pub fn find_user_id(&self, user_name: &str) -> Option<String> {
        lock(&self.shared().store)
            .find_user(user_name)
            .map(str::to_owned)
    }

    /// Id of the first group (in creation order) with this `displayName`.
    pub fn find_group_id(&self, display_name: &str) -> Option<String> {
        let store = lock(&self.shared().store);
        let found = store
            .list(Kind::Group, None)
            .into_iter()
            .find(|(_, r)| r.attrs.get("displayName").and_then(Value::as_str) == Some(display_name))
            .map(|(_, r)| r.id.clone());
        found
    }

    /// Requests received with this HTTP method (any case), counted on arrival — before
    /// latency, fault injection and authentication, so refused requests count too.
    pub fn requests(&self, method: &str) -> u64 {
        self.shared().requests(method)
    }

    /// PATCH requests received for `/Users/{id}`, counted like [`requests`](Self::requests).
    pub fn patches_of_user(&self, id: &str) -> u64 {
        self.shared().patches_of_user(id)
    }

    /// Every request waits this long before being handled (default zero).
    pub fn set_latency(&self, latency: Duration) {
        self.shared().set_latency(latency);
    }

    /// The next `n` requests get 429 Too Many Requests with `Retry-After: <secs>`.
    pub fn throttle_next(&self, n: u32, retry_after_secs: u64) {
        self.shared().throttle_next(n, retry_after_secs);
    }

    /// The next `n` requests (after any throttled ones) get 503 without `Retry-After`.
    pub fn fail_next(&self, n: u32) {
        self.shared().fail_next(n);
    }

    /// Every later change to this user (PATCH, PUT, DELETE) is refused with 403, as a
    /// target refuses to touch an account it protects.
    pub fn protect_user(&self, id: &str) {
        self.shared().protect_user(id);
    }

    /// Stops accepting connections; requests in flight are completed.
    pub fn shutdown(&self) {
        self.inner.stop.send_replace(true);
    }
}
