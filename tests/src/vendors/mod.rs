//! Wiremock servers that follow each SaaS vendor's documented API to the letter (paths,
//! verbs, auth schemes, bodies, status codes, pagination, rate-limit headers), stateful
//! where the behaviour needs it. Every stub names the page of the vendor's documentation it
//! follows.
//!
//! Each mock can be told to throttle or fail its next requests, the way the vendor does
//! (`throttle_next`, `fail_next`), for the connector tests and the conformance suite.

pub mod github;
pub mod google;
pub mod msgraph;
pub mod okta;
pub mod slack;

use std::sync::atomic::{AtomicU32, Ordering};

/// Faults to inject into the next requests.
#[derive(Debug, Default)]
pub struct Faults {
    throttle: AtomicU32,
    fail: AtomicU32,
}

impl Faults {
    pub fn throttle_next(&self, n: u32) {
        self.throttle.store(n, Ordering::SeqCst);
    }

    pub fn fail_next(&self, n: u32) {
        self.fail.store(n, Ordering::SeqCst);
    }

    /// Whether this request is throttled (counts it down).
    pub fn take_throttle(&self) -> bool {
        take(&self.throttle)
    }

    /// Whether this request fails with a 5xx (counts it down).
    pub fn take_fail(&self) -> bool {
        take(&self.fail)
    }
}

fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
}

/// A fresh id with a vendor's prefix, e.g. `00u…` for Okta users.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}{:016x}", fastrand::u64(..))
}

/// The query parameter `name` of a request, decoded.
pub fn query(request: &wiremock::Request, name: &str) -> Option<String> {
    request
        .url
        .query_pairs()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

/// The value of a header of a request.
pub fn header(request: &wiremock::Request, name: &str) -> Option<String> {
    request
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}
