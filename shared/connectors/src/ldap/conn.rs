//! Connection plumbing of the LDAP connector: a few bound connections per connector, one
//! per worker of the system (ldap3 multiplexes concurrent operations over each; a directory
//! serves one connection's operations through one reader and caps how many it queues, so a
//! batch's pipelined operations are spread over several), each re-established when it breaks or ages out
//! (so a rotated password is picked up), a timeout on every operation, and the mapping of
//! LDAP outcomes onto `ConnectorError`. The bind password is read through the
//! `SecretSource`, never logged and redacted from every message.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deprov_core::ports::{SecretError, SecretSource};
use deprov_core::ConnectorError;
use ldap3::adapters::PagedResults;
use ldap3::controls::{Assertion, MakeCritical};
use ldap3::{Ldap, LdapConnAsync, LdapConnSettings, LdapError, LdapResult, Scope, SearchEntry};

/// How long a bound connection (and so the password it was bound with) is reused.
const CONNECTION_TTL: Duration = Duration::from_secs(300);
/// The longest server diagnostic quoted in an error message.
const MAX_DETAIL_CHARS: usize = 300;
pub(crate) const BIND_DN_FIELD: &str = "bind_dn";
pub(crate) const PASSWORD_FIELD: &str = "password";

pub(crate) const UNAVAILABLE_CRITICAL_EXTENSION: u32 = 12;
pub(crate) const NO_SUCH_ATTRIBUTE: u32 = 16;
pub(crate) const UNDEFINED_ATTRIBUTE_TYPE: u32 = 17;
pub(crate) const ATTRIBUTE_OR_VALUE_EXISTS: u32 = 20;
pub(crate) const NO_SUCH_OBJECT: u32 = 32;
pub(crate) const OBJECT_CLASS_VIOLATION: u32 = 65;
pub(crate) const NOT_ALLOWED_ON_NON_LEAF: u32 = 66;
pub(crate) const ASSERTION_FAILED: u32 = 122;

struct Bound {
    ldap: Ldap,
    since: Instant,
    password: String,
}

pub(crate) struct Conn {
    system: String,
    url: String,
    timeout: Duration,
    secrets: Arc<dyn SecretSource>,
    secret_name: String,
    connections: Vec<tokio::sync::Mutex<Option<Bound>>>,
    /// Which connection the next operation takes (round robin).
    next: std::sync::atomic::AtomicUsize,
}

impl Conn {
    pub(crate) fn new(
        system: &str,
        url: &str,
        timeout: Duration,
        secrets: Arc<dyn SecretSource>,
        secret_name: &str,
        connections: usize,
    ) -> Conn {
        Conn {
            system: system.to_string(),
            url: url.to_string(),
            timeout,
            secrets,
            secret_name: secret_name.to_string(),
            connections: (0..connections.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// A bound handle, from the live connection in the next slot or a new one. Also returns
    /// the slot (to reset it on a transport failure) and the password in use, so messages
    /// can be redacted.
    async fn handle(&self) -> Result<(usize, Ldap, String), ConnectorError> {
        let slot =
            self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.connections.len();
        let (ldap, password) = self.handle_in(slot).await?;
        Ok((slot, ldap, password))
    }

    async fn handle_in(&self, slot: usize) -> Result<(Ldap, String), ConnectorError> {
        let mut current = self.connections[slot].lock().await;
        if let Some(bound) = current.as_mut() {
            if !bound.ldap.is_closed() && bound.since.elapsed() < CONNECTION_TTL {
                return Ok((bound.ldap.clone(), bound.password.clone()));
            }
        }
        if let Some(mut old) = current.take() {
            let _ = tokio::time::timeout(Duration::from_secs(1), old.ldap.unbind()).await;
        }
        let bound = self.connect().await?;
        let handle = (bound.ldap.clone(), bound.password.clone());
        *current = Some(bound);
        Ok(handle)
    }

    async fn connect(&self) -> Result<Bound, ConnectorError> {
        let secret = self
            .secrets
            .secret(&self.secret_name)
            .await
            .map_err(|err| secret_error(&self.system, &err))?;
        let field = |name: &str| -> Result<String, ConnectorError> {
            let value = secret
                .field(name)
                .map_err(|err| secret_error(&self.system, &err))?;
            if value.trim().is_empty() {
                return Err(ConnectorError::InvalidConfig(format!(
                    "system \"{}\": field \"{name}\" of secret \"{}\" is empty; store the service account's {} there",
                    self.system,
                    self.secret_name,
                    if name == PASSWORD_FIELD { "password (an empty password would make an unauthenticated bind)" } else { "bind DN" }
                )));
            }
            Ok(value.to_string())
        };
        let bind_dn = field(BIND_DN_FIELD)?;
        let password = field(PASSWORD_FIELD)?;
        let what = format!("connect to {}", self.url);
        tracing::debug!(system = %self.system, url = %self.url, "ldap connect");
        let settings = LdapConnSettings::new().set_conn_timeout(self.timeout);
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.url)
            .await
            .map_err(|err| self.ldap_error(&what, err, &password))?;
        ldap3::drive!(conn);
        let what = format!("bind to {}", self.url);
        let result =
            match tokio::time::timeout(self.timeout, ldap.simple_bind(&bind_dn, &password)).await {
                Err(_) => return Err(self.timed_out(&what)),
                Ok(Err(err)) => return Err(self.ldap_error(&what, err, &password)),
                Ok(Ok(result)) => result,
            };
        if result.rc == 49 {
            return Err(redact(
                ConnectorError::Unauthorized(format!(
                    "system \"{}\": the directory at {} refused the service bind (invalidCredentials{}); fix fields \"{BIND_DN_FIELD}\" and \"{PASSWORD_FIELD}\" of secret \"{}\"",
                    self.system,
                    self.url,
                    detail(&result.text).map(|d| format!(": {d}")).unwrap_or_default(),
                    self.secret_name
                )),
                &password,
            ));
        }
        if result.rc != 0 {
            return Err(self.rc_error(&what, &result, &password));
        }
        Ok(Bound {
            ldap,
            since: Instant::now(),
            password,
        })
    }

    async fn reset(&self, slot: usize) {
        if let Some(mut old) = self.connections[slot].lock().await.take() {
            let _ = tokio::time::timeout(Duration::from_millis(500), old.ldap.unbind()).await;
        }
    }

    /// Runs one operation on the bound connection, bounded by the timeout. A transport
    /// failure drops the connection so the next operation reconnects.
    async fn run<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ConnectorError>
    where
        F: FnOnce(Ldap) -> Fut,
        Fut: Future<Output = Result<T, LdapError>>,
    {
        let (slot, ldap, password) = self.handle().await?;
        tracing::debug!(system = %self.system, operation = %what, "ldap request");
        match tokio::time::timeout(self.timeout, op(ldap)).await {
            Err(_) => {
                self.reset(slot).await;
                Err(self.timed_out(what))
            }
            Ok(Err(err)) => {
                if is_transport(&err) {
                    self.reset(slot).await;
                }
                Err(self.ldap_error(what, err, &password))
            }
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// An operation's result code: success and the codes in `pass` come back, every other
    /// code is mapped onto a `ConnectorError`.
    async fn check(
        &self,
        what: &str,
        result: LdapResult,
        pass: &[u32],
    ) -> Result<u32, ConnectorError> {
        if result.rc == 0 || pass.contains(&result.rc) {
            tracing::debug!(system = %self.system, operation = %what, rc = result.rc, "ldap result");
            return Ok(result.rc);
        }
        let mut password = String::new();
        for connection in &self.connections {
            if let Some(bound) = connection.lock().await.as_ref() {
                password.clone_from(&bound.password);
                break;
            }
        }
        Err(self.rc_error(what, &result, &password))
    }

    /// Every entry a search finds, page by page with the paged results control
    /// (RFC 2696). `None` when the base does not exist.
    pub(crate) async fn search(
        &self,
        base: &str,
        scope: Scope,
        filter: &str,
        attrs: &[&str],
        page_size: Option<i32>,
    ) -> Result<Option<Vec<SearchEntry>>, ConnectorError> {
        let what = format!("search {base} for {filter}");
        let attrs: Vec<String> = attrs.iter().map(|a| a.to_string()).collect();
        let timeout = self.timeout;
        let (entries, result) = self
            .run_search(&what, move |mut ldap| async move {
                ldap.with_timeout(timeout);
                let mut stream = match page_size {
                    Some(size) => {
                        ldap.streaming_search_with(
                            PagedResults::new(size),
                            base,
                            scope,
                            filter,
                            attrs,
                        )
                        .await?
                    }
                    None => ldap.streaming_search(base, scope, filter, attrs).await?,
                };
                let mut entries = Vec::new();
                while let Some(entry) = stream.next().await? {
                    if entry.is_ref() || entry.is_intermediate() {
                        continue;
                    }
                    entries.push(SearchEntry::construct(entry));
                }
                let result = stream.finish().await;
                Ok((entries, result))
            })
            .await?;
        match self.check(&what, result, &[NO_SUCH_OBJECT]).await? {
            NO_SUCH_OBJECT => Ok(None),
            _ => Ok(Some(entries)),
        }
    }

    /// Like `run`, for searches: their own per-message timeout bounds each page, and the
    /// whole listing is bounded by a generous multiple of it.
    async fn run_search<T, F, Fut>(&self, what: &str, op: F) -> Result<T, ConnectorError>
    where
        F: FnOnce(Ldap) -> Fut,
        Fut: Future<Output = Result<T, LdapError>>,
    {
        let (slot, ldap, password) = self.handle().await?;
        tracing::debug!(system = %self.system, operation = %what, "ldap request");
        match tokio::time::timeout(self.timeout * 20, op(ldap)).await {
            Err(_) => {
                self.reset(slot).await;
                Err(self.timed_out(what))
            }
            Ok(Err(err)) => {
                if is_transport(&err) {
                    self.reset(slot).await;
                }
                Err(self.ldap_error(what, err, &password))
            }
            Ok(Ok(value)) => Ok(value),
        }
    }

    /// The entry at `dn` with these attributes, `None` when it does not exist.
    pub(crate) async fn read(
        &self,
        dn: &str,
        attrs: &[&str],
    ) -> Result<Option<SearchEntry>, ConnectorError> {
        Ok(self
            .search(dn, Scope::Base, "(objectClass=*)", attrs, None)
            .await?
            .and_then(|entries| entries.into_iter().next()))
    }

    /// Whether the entry at `dn` matches `filter` (a base-scoped search). `None` when the
    /// entry does not exist.
    pub(crate) async fn matches(
        &self,
        dn: &str,
        filter: &str,
    ) -> Result<Option<bool>, ConnectorError> {
        Ok(self
            .search(dn, Scope::Base, filter, &["1.1"], None)
            .await?
            .map(|entries| !entries.is_empty()))
    }

    pub(crate) async fn modify(
        &self,
        dn: &str,
        mods: Vec<ldap3::Mod<String>>,
        pass: &[u32],
    ) -> Result<u32, ConnectorError> {
        self.modify_asserting(dn, mods, None, pass).await
    }

    /// `modify`, carried out only if the entry matches `assertion` (an RFC 4515 filter,
    /// sent as a critical RFC 4528 assertion control): otherwise the server changes nothing
    /// and answers assertionFailed, or unavailableCriticalExtension if it lacks the control.
    /// Test and change are one operation, so nothing can change the entry in between.
    pub(crate) async fn modify_if(
        &self,
        dn: &str,
        mods: Vec<ldap3::Mod<String>>,
        assertion: &'static str,
        pass: &[u32],
    ) -> Result<u32, ConnectorError> {
        self.modify_asserting(dn, mods, Some(assertion), pass).await
    }

    async fn modify_asserting(
        &self,
        dn: &str,
        mods: Vec<ldap3::Mod<String>>,
        assertion: Option<&'static str>,
        pass: &[u32],
    ) -> Result<u32, ConnectorError> {
        let what = match assertion {
            Some(filter) => format!("modify {dn} if {filter}"),
            None => format!("modify {dn}"),
        };
        let result = self
            .run(&what, |mut ldap| async move {
                if let Some(filter) = assertion {
                    ldap.with_controls(Assertion { filter }.critical());
                }
                ldap.modify(dn, mods).await
            })
            .await?;
        self.check(&what, result, pass).await
    }

    pub(crate) async fn delete(
        &self,
        dn: &str,
        tree_delete: bool,
        pass: &[u32],
    ) -> Result<u32, ConnectorError> {
        let what = format!("delete {dn}");
        let result = self
            .run(&what, |mut ldap| async move {
                if tree_delete {
                    // Active Directory's tree delete (LDAP_SERVER_TREE_DELETE_OID), so a
                    // user with child objects (devices, …) goes too; not critical, so a
                    // server without it ignores it.
                    ldap.with_controls(ldap3::controls::RawControl {
                        ctype: "1.2.840.113556.1.4.805".into(),
                        crit: false,
                        val: None,
                    });
                }
                ldap.delete(dn).await
            })
            .await?;
        self.check(&what, result, pass).await
    }

    fn timed_out(&self, what: &str) -> ConnectorError {
        ConnectorError::Transient(format!(
            "system \"{}\": {what} did not finish within {}s",
            self.system,
            self.timeout.as_secs()
        ))
    }

    fn ldap_error(&self, what: &str, err: LdapError, password: &str) -> ConnectorError {
        let system = &self.system;
        let err = match err {
            LdapError::LdapResult { result } => return self.rc_error(what, &result, password),
            LdapError::Timeout { .. } => self.timed_out(what),
            err if is_transport(&err) => ConnectorError::Transient(format!(
                "system \"{system}\": {what} failed: {err}"
            )),
            LdapError::Rustls { .. } | LdapError::DNSName { .. } => {
                ConnectorError::Permanent(format!(
                    "system \"{system}\": {what} failed in TLS: {err}; check that the directory's certificate is valid for the host in connection.url and trusted by this machine"
                ))
            }
            LdapError::UrlParsing { .. } | LdapError::UnknownScheme(_) => {
                ConnectorError::InvalidConfig(format!(
                    "system \"{system}\": connection.url = \"{}\" is not usable: {err}",
                    self.url
                ))
            }
            LdapError::FilterParsing => ConnectorError::InvalidConfig(format!(
                "system \"{system}\": {what}: the filter is not a valid LDAP filter (RFC 4515); fix connection.user_filter"
            )),
            other => ConnectorError::Permanent(format!("system \"{system}\": {what} failed: {other}")),
        };
        redact(err, password)
    }

    fn rc_error(&self, what: &str, result: &LdapResult, password: &str) -> ConnectorError {
        let system = &self.system;
        let code = format!(
            "{} ({}){}",
            rc_name(result.rc),
            result.rc,
            detail(&result.text)
                .map(|d| format!(": {d}"))
                .unwrap_or_default()
        );
        let err = match result.rc {
            51 => ConnectorError::Throttled {
                retry_after: None,
                message: format!("system \"{system}\": {what}: the directory is busy, {code}"),
            },
            3 | 52 | 53 => ConnectorError::Transient(format!(
                "system \"{system}\": {what}: {code}"
            )),
            49 => ConnectorError::Unauthorized(format!(
                "system \"{system}\": {what}: {code}; fix fields \"{BIND_DN_FIELD}\" and \"{PASSWORD_FIELD}\" of secret \"{}\"",
                self.secret_name
            )),
            50 => ConnectorError::Permanent(format!(
                "system \"{system}\": {what}: {code}; the bind DN of secret \"{}\" lacks the rights for this: grant it (ACL / delegated permission) or use another service account",
                self.secret_name
            )),
            8 | 13 => ConnectorError::Permanent(format!(
                "system \"{system}\": {what}: {code}; the directory wants an encrypted connection: use an ldaps:// connection.url"
            )),
            10 => ConnectorError::Permanent(format!(
                "system \"{system}\": {what}: the directory answered with a referral to {}; point connection.url at the server holding this naming context",
                result.refs.join(", ")
            )),
            _ => ConnectorError::Permanent(format!("system \"{system}\": {what}: {code}")),
        };
        redact(err, password)
    }
}

fn is_transport(err: &LdapError) -> bool {
    matches!(
        err,
        LdapError::Io { .. }
            | LdapError::OpSend { .. }
            | LdapError::ResultRecv { .. }
            | LdapError::IdScrubSend { .. }
            | LdapError::MiscSend { .. }
            | LdapError::Timeout { .. }
            | LdapError::EndOfStream
    )
}

/// The RFC 4511 name of a result code.
pub(crate) fn rc_name(rc: u32) -> &'static str {
    match rc {
        0 => "success",
        1 => "operationsError",
        2 => "protocolError",
        3 => "timeLimitExceeded",
        4 => "sizeLimitExceeded",
        7 => "authMethodNotSupported",
        8 => "strongerAuthRequired",
        10 => "referral",
        11 => "adminLimitExceeded",
        12 => "unavailableCriticalExtension",
        13 => "confidentialityRequired",
        16 => "noSuchAttribute",
        17 => "undefinedAttributeType",
        18 => "inappropriateMatching",
        19 => "constraintViolation",
        20 => "attributeOrValueExists",
        21 => "invalidAttributeSyntax",
        32 => "noSuchObject",
        34 => "invalidDNSyntax",
        48 => "inappropriateAuthentication",
        49 => "invalidCredentials",
        50 => "insufficientAccessRights",
        51 => "busy",
        52 => "unavailable",
        53 => "unwillingToPerform",
        64 => "namingViolation",
        65 => "objectClassViolation",
        66 => "notAllowedOnNonLeaf",
        67 => "notAllowedOnRDN",
        68 => "entryAlreadyExists",
        80 => "other",
        122 => "assertionFailed",
        _ => "LDAP error",
    }
}

fn detail(text: &str) -> Option<String> {
    let text = text.trim().trim_end_matches('\0').trim();
    if text.is_empty() {
        return None;
    }
    let mut short: String = text.chars().take(MAX_DETAIL_CHARS).collect();
    if short.len() < text.len() {
        short.push('…');
    }
    Some(short)
}

fn secret_error(system: &str, err: &SecretError) -> ConnectorError {
    match err {
        SecretError::Unreadable { .. } => {
            ConnectorError::Transient(format!("system \"{system}\": {err}"))
        }
        _ => ConnectorError::InvalidConfig(format!(
            "system \"{system}\": {err}; the secret needs fields \"{BIND_DN_FIELD}\" and \"{PASSWORD_FIELD}\""
        )),
    }
}

/// The error with every occurrence of the password replaced: a server may echo input.
pub(crate) fn redact(err: ConnectorError, password: &str) -> ConnectorError {
    if password.len() < 2 {
        return err;
    }
    let clean = |text: String| text.replace(password, "***");
    match err {
        ConnectorError::Throttled {
            retry_after,
            message,
        } => ConnectorError::Throttled {
            retry_after,
            message: clean(message),
        },
        ConnectorError::Transient(m) => ConnectorError::Transient(clean(m)),
        ConnectorError::Permanent(m) => ConnectorError::Permanent(clean(m)),
        ConnectorError::Unauthorized(m) => ConnectorError::Unauthorized(clean(m)),
        ConnectorError::NotFound(m) => ConnectorError::NotFound(clean(m)),
        ConnectorError::Unsupported(m) => ConnectorError::Unsupported(clean(m)),
        ConnectorError::InvalidConfig(m) => ConnectorError::InvalidConfig(clean(m)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_details() {
        let err = redact(
            ConnectorError::Permanent("bad value s3cret-pw in s3cret-pw".into()),
            "s3cret-pw",
        );
        assert_eq!(err.to_string(), "permanent failure: bad value *** in ***");
        assert_eq!(detail("  \0"), None);
        assert_eq!(
            detail("x".repeat(400).as_str()).map(|d| d.chars().count()),
            Some(301)
        );
        assert_eq!(rc_name(51), "busy");
    }
}
