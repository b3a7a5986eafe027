//! LDAP / Active Directory connector (RFC 4511 over `ldap3`), for OpenLDAP, Active
//! Directory and 389 Directory Server.
//!
//! Accounts are the entries the user filter finds under `base_dn` (id = DN); entitlements
//! are the groups under `group_base_dn` that list the account's DN in `member` (or
//! `uniqueMember`), or its uid in `memberUid` (posixGroup).
//! - disable: OpenLDAP `pwdAccountLockedTime: 000001010000Z` (the ppolicy overlay's
//!   permanent lock); Active Directory `userAccountControl |= ACCOUNTDISABLE (0x2)`, written
//!   as delete-old-value + add-new-value in one modify, so a concurrent change fails
//!   instead of being overwritten; 389 `nsAccountLock: TRUE`;
//! - remove entitlement: modify the group deleting the member value(s);
//! - delete: delete the entry (with AD's tree delete control for child objects).
//!
//! Each change reads first (an OpenLDAP disable instead asserts, in the modify itself, that
//! the account is not locked yet): a state already reached, or an entry already gone, is
//! `AlreadyDone`. `verify` reads the entry (or group) back. A batch's operations are
//! pipelined over the connections (one per worker).
//!
//! Policy settings (`[systems.<name>]`, `kind = "ldap"`): `secret` with fields `bind_dn`
//! and `password`, and `connection` keys `url` (`ldap://` or `ldaps://`, required),
//! `base_dn` (required), `dialect` (`openldap` | `ad` | `389`, required), `user_filter`
//! (placeholders `{username}` and `{email}`, values escaped per RFC 4515; default per
//! dialect), `group_base_dn` (default `base_dn`), `page_size` (500), `timeout_secs` (30).

mod conn;

use std::collections::{BTreeSet, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, TimeZone, Utc};
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::{MatchBy, SystemConfig};
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Entitlement, Evidence, PersonQuery,
};
use futures_util::{stream, StreamExt};
use ldap3::{Mod, Scope, SearchEntry};
use reqwest::Url;
use serde_json::{json, Map, Value};
use tracing::Instrument;

use self::conn::{
    Conn, ASSERTION_FAILED, ATTRIBUTE_OR_VALUE_EXISTS, NOT_ALLOWED_ON_NON_LEAF, NO_SUCH_ATTRIBUTE,
    NO_SUCH_OBJECT, OBJECT_CLASS_VIOLATION, UNAVAILABLE_CRITICAL_EXTENSION,
    UNDEFINED_ATTRIBUTE_TYPE,
};

const DEFAULT_PAGE_SIZE: u64 = 500;
/// Connections per system at most (one per worker).
const MAX_CONNECTIONS: u32 = 16;
const MAX_PAGE_SIZE: u64 = 10_000;
const DEFAULT_TIMEOUT_SECS: u64 = 30;
const MAX_TIMEOUT_SECS: u64 = 600;
/// How many tasks or people a batch takes. LDAP changes one entry per operation, so a
/// batch's operations are pipelined over the connections instead: enough to keep the
/// directory's worker threads busy (OpenLDAP runs 16 by default) without queueing so many
/// that the last ones reach the operation timeout.
const MAX_BATCH: usize = 64;
const CONNECTION_KEYS: &[&str] = &[
    "url",
    "base_dn",
    "dialect",
    "user_filter",
    "group_base_dn",
    "page_size",
    "timeout_secs",
];
const URL_EXAMPLE: &str = "ldaps://ldap.example.com";
const BASE_DN_EXAMPLE: &str = "ou=people,dc=example,dc=com";
/// ppolicy's "locked until an administrator unlocks it" value.
const PERMANENT_LOCK: &str = "000001010000Z";
/// Matches an OpenLDAP entry that is not permanently locked: no `pwdAccountLockedTime`, or
/// another time (a temporary lockout). The matching rule compares times, so it also turns
/// away the permanent lock spelled otherwise, which `is_disabled` (comparing strings) does
/// not count as disabled; `disable` reads such an entry.
const OPENLDAP_NOT_LOCKED: &str = "(!(pwdAccountLockedTime=000001010000Z))";
/// userAccountControl ACCOUNTDISABLE.
const UAC_ACCOUNTDISABLE: u64 = 0x2;
/// userAccountControl NORMAL_ACCOUNT, assumed when an AD-like entry has no value.
const UAC_NORMAL_ACCOUNT: u64 = 0x200;

/// Which directory server the connector speaks to: how an account is disabled and how its
/// state and last activity read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    OpenLdap,
    ActiveDirectory,
    Ds389,
}

impl Dialect {
    const NAMES: &'static str = "\"openldap\", \"ad\" or \"389\"";

    fn from_name(name: &str) -> Option<Dialect> {
        match name.trim().to_ascii_lowercase().as_str() {
            "openldap" => Some(Dialect::OpenLdap),
            "ad" => Some(Dialect::ActiveDirectory),
            "389" => Some(Dialect::Ds389),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Dialect::OpenLdap => "openldap",
            Dialect::ActiveDirectory => "ad",
            Dialect::Ds389 => "389",
        }
    }

    /// The user filter when the policy sets none.
    pub fn default_user_filter(self) -> &'static str {
        match self {
            Dialect::OpenLdap | Dialect::Ds389 => {
                "(&(objectClass=inetOrgPerson)(|(uid={username})(mail={email})))"
            }
            Dialect::ActiveDirectory => "(&(objectClass=user)(|(sAMAccountName={username})(userPrincipalName={email})(mail={email})))",
        }
    }

    /// Every user account, for `list_accounts`.
    fn all_users_filter(self) -> &'static str {
        match self {
            Dialect::OpenLdap | Dialect::Ds389 => "(objectClass=inetOrgPerson)",
            Dialect::ActiveDirectory => "(&(objectClass=user)(!(objectClass=computer)))",
        }
    }

    fn username_attr(self) -> &'static str {
        match self {
            Dialect::ActiveDirectory => "sAMAccountName",
            Dialect::OpenLdap | Dialect::Ds389 => "uid",
        }
    }

    /// The attributes read from a user entry.
    fn user_attrs(self) -> &'static [&'static str] {
        match self {
            Dialect::OpenLdap => &["uid", "cn", "mail", "pwdAccountLockedTime", "authTimestamp"],
            Dialect::ActiveDirectory => &[
                "sAMAccountName",
                "cn",
                "mail",
                "userPrincipalName",
                "userAccountControl",
                "lastLogonTimestamp",
            ],
            Dialect::Ds389 => &["uid", "cn", "mail", "nsAccountLock", "lastLoginTime"],
        }
    }

    /// The attributes of a group that name its members, with what they hold.
    fn member_attrs(self) -> &'static [(&'static str, MemberValue)] {
        match self {
            Dialect::ActiveDirectory => &[("member", MemberValue::Dn)],
            Dialect::OpenLdap | Dialect::Ds389 => &[
                ("member", MemberValue::Dn),
                ("uniqueMember", MemberValue::Dn),
                ("memberUid", MemberValue::Uid),
            ],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum MemberValue {
    Dn,
    Uid,
}

/// The connection settings, validated.
#[derive(Clone, Debug, PartialEq)]
struct Settings {
    url: String,
    base_dn: String,
    dialect: Dialect,
    user_filter: String,
    group_base_dn: String,
    page_size: u64,
    timeout: Duration,
    secret: String,
}

impl Settings {
    /// Every problem of the system's settings, each saying what to fix.
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut problems = Vec::new();
        let key = |name: &str| format!("systems.{system}.connection.{name}");
        let connection = &config.connection;

        for name in connection.keys() {
            if !CONNECTION_KEYS.contains(&name.as_str()) {
                problems.push(format!(
                    "{} is not an LDAP setting; the LDAP settings are {}",
                    key(name),
                    CONNECTION_KEYS.join(", ")
                ));
            }
        }

        let url = match connection.get("url") {
            None => {
                problems.push(format!(
                    "{} is required: the directory's URL, e.g. {URL_EXAMPLE}",
                    key("url")
                ));
                None
            }
            Some(Value::String(text)) => match check_url(text) {
                Ok(url) => Some(url),
                Err(why) => {
                    problems.push(format!(
                        "{} = \"{text}\" {why}, e.g. {URL_EXAMPLE}",
                        key("url")
                    ));
                    None
                }
            },
            Some(other) => {
                problems.push(format!(
                    "{} must be a string (the directory's URL, e.g. \"{URL_EXAMPLE}\"), not {other}",
                    key("url")
                ));
                None
            }
        };

        let mut dn = |name: &str, required: bool| match connection.get(name) {
            None if required => {
                problems.push(format!(
                    "{} is required: the DN under which the accounts are, e.g. {BASE_DN_EXAMPLE}",
                    key(name)
                ));
                None
            }
            None => None,
            Some(Value::String(text)) if check_dn(text) => Some(text.trim().to_string()),
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be a distinguished name such as \"{BASE_DN_EXAMPLE}\"",
                    key(name)
                ));
                None
            }
        };
        let base_dn = dn("base_dn", true);
        let group_base_dn = dn("group_base_dn", false);

        let dialect = match connection.get("dialect") {
            None => {
                problems.push(format!(
                    "{} is required: the directory server, {}",
                    key("dialect"),
                    Dialect::NAMES
                ));
                None
            }
            Some(value) => match value.as_str().and_then(Dialect::from_name) {
                Some(dialect) => Some(dialect),
                None => {
                    problems.push(format!(
                        "{} = {value} must be {} (OpenLDAP, Active Directory, 389 Directory Server)",
                        key("dialect"),
                        Dialect::NAMES
                    ));
                    None
                }
            },
        };

        let user_filter = match connection.get("user_filter") {
            None => None,
            Some(Value::String(text)) => match check_filter(text) {
                Ok(()) => Some(text.trim().to_string()),
                Err(why) => {
                    problems.push(format!("{} = \"{text}\" {why}", key("user_filter")));
                    None
                }
            },
            Some(other) => {
                problems.push(format!(
                    "{} = {other} must be a string, an LDAP filter with {{username}} and/or {{email}}, e.g. \"(&(objectClass=inetOrgPerson)(uid={{username}}))\"",
                    key("user_filter")
                ));
                None
            }
        };

        let mut number = |name: &str, default: u64, max: u64| match connection.get(name) {
            None => default,
            Some(value) => match value.as_u64() {
                Some(n) if (1..=max).contains(&n) => n,
                _ => {
                    problems.push(format!(
                        "{} = {value} must be a whole number from 1 to {max} (default {default})",
                        key(name)
                    ));
                    default
                }
            },
        };
        let page_size = number("page_size", DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE);
        let timeout_secs = number("timeout_secs", DEFAULT_TIMEOUT_SECS, MAX_TIMEOUT_SECS);

        let secret = match config.secret.as_deref() {
            Some(name) if !name.trim().is_empty() => Some(name.to_string()),
            _ => {
                problems.push(format!(
                    "systems.{system}.secret is required for an ldap system: the name of the secret whose fields \"bind_dn\" and \"password\" hold the service account, e.g. secret = \"deprov/connector/{system}\""
                ));
                None
            }
        };

        match (url, base_dn, dialect, secret) {
            (Some(url), Some(base_dn), Some(dialect), Some(secret)) if problems.is_empty() => {
                Ok(Settings {
                    url,
                    group_base_dn: group_base_dn.unwrap_or_else(|| base_dn.clone()),
                    base_dn,
                    user_filter: user_filter
                        .unwrap_or_else(|| dialect.default_user_filter().to_string()),
                    dialect,
                    page_size,
                    timeout: Duration::from_secs(timeout_secs),
                    secret,
                })
            }
            _ => Err(problems),
        }
    }
}

fn check_url(text: &str) -> Result<String, String> {
    let url = Url::parse(text.trim()).map_err(|err| format!("is not a URL ({err})"))?;
    if url.scheme() != "ldaps" && url.scheme() != "ldap" {
        return Err(format!(
            "must be an ldaps:// (or ldap://) URL, not {}://",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err("has no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(
            "must not carry a user name or password (the bind DN and password come from the secret)"
                .into(),
        );
    }
    if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
        return Err(
            "must be only scheme, host and port (the base DN is connection.base_dn)".into(),
        );
    }
    Ok(text.trim().trim_end_matches('/').to_string())
}

/// A rough RFC 4514 check: non-empty RDNs of `attribute=value`.
fn check_dn(text: &str) -> bool {
    let text = text.trim();
    !text.is_empty()
        && split_rdns(text).iter().all(|rdn| {
            rdn.split_once('=')
                .is_some_and(|(attr, value)| !attr.trim().is_empty() && !value.trim().is_empty())
        })
}

/// The RDNs of a DN, split on unescaped commas.
fn split_rdns(dn: &str) -> Vec<String> {
    let mut rdns = Vec::new();
    let mut current = String::new();
    let mut escaped = false;
    for c in dn.chars() {
        if escaped {
            current.push(c);
            escaped = false;
        } else if c == '\\' {
            current.push(c);
            escaped = true;
        } else if c == ',' {
            rdns.push(std::mem::take(&mut current));
        } else {
            current.push(c);
        }
    }
    rdns.push(current);
    rdns
}

/// The value of a DN's first RDN (`cn=eng,ou=groups,…` → `eng`).
fn first_rdn_value(dn: &str) -> String {
    split_rdns(dn)
        .first()
        .and_then(|rdn| rdn.split_once('=').map(|(_, v)| v.trim().to_string()))
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| dn.to_string())
}

fn check_filter(template: &str) -> Result<(), String> {
    let trimmed = template.trim();
    if !trimmed.starts_with('(') || !trimmed.ends_with(')') {
        return Err("must be an LDAP filter in parentheses (RFC 4515)".into());
    }
    let mut placeholders = BTreeSet::new();
    let mut rest = trimmed;
    while let Some(start) = rest.find('{') {
        let Some(len) = rest[start..].find('}') else {
            return Err("has a \"{\" without \"}\"".into());
        };
        placeholders.insert(rest[start + 1..start + len].to_string());
        rest = &rest[start + len + 1..];
    }
    if let Some(unknown) = placeholders
        .iter()
        .find(|p| p.as_str() != "username" && p.as_str() != "email")
    {
        return Err(format!(
            "has the placeholder {{{unknown}}}; the placeholders are {{username}} and {{email}}"
        ));
    }
    if placeholders.is_empty() {
        return Err("must contain {username} and/or {email}, or it would match the same entries for every person".into());
    }
    let sample = render_filter(trimmed, "sample", "sample@example.com");
    if ldap3::parse_filter(&sample).is_err() {
        return Err("is not a valid LDAP filter (RFC 4515)".into());
    }
    Ok(())
}

/// RFC 4515 §3: `*`, `(`, `)`, `\` and NUL in an assertion value as `\XX`.
pub fn escape_filter_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '*' => out.push_str("\\2a"),
            '(' => out.push_str("\\28"),
            ')' => out.push_str("\\29"),
            '\\' => out.push_str("\\5c"),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
    out
}

/// The filter with `{username}` and `{email}` replaced by escaped values, in one pass (a
/// value that itself reads `{email}` stays literal).
fn render_filter(template: &str, username: &str, email: &str) -> String {
    let mut out = String::with_capacity(template.len() + username.len() + email.len());
    let mut rest = template;
    loop {
        let next = [("{username}", username), ("{email}", email)]
            .into_iter()
            .filter_map(|(placeholder, value)| {
                rest.find(placeholder).map(|at| (at, placeholder, value))
            })
            .min_by_key(|(at, _, _)| *at);
        match next {
            Some((at, placeholder, value)) => {
                out.push_str(&rest[..at]);
                out.push_str(&escape_filter_value(value));
                rest = &rest[at + placeholder.len()..];
            }
            None => {
                out.push_str(rest);
                return out;
            }
        }
    }
}

/// An attribute's values, whatever case the server spells its name in.
fn values<'e>(entry: &'e SearchEntry, name: &str) -> &'e [String] {
    entry
        .attrs
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, values)| values.as_slice())
        .unwrap_or(&[])
}

fn first<'e>(entry: &'e SearchEntry, name: &str) -> Option<&'e str> {
    values(entry, name).first().map(String::as_str)
}

/// RFC 4517 GeneralizedTime (`20240102030405Z`, `20240102030405.5Z`, `…+0200`).
fn parse_generalized_time(text: &str) -> Option<DateTime<Utc>> {
    let text = text.trim();
    let digits: String = text.chars().take(14).collect();
    if digits.len() != 14 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let naive = NaiveDateTime::parse_from_str(&digits, "%Y%m%d%H%M%S").ok()?;
    let mut rest = &text[14..];
    if let Some(stripped) = rest.strip_prefix(['.', ',']) {
        rest = stripped.trim_start_matches(|c: char| c.is_ascii_digit());
    }
    let offset_secs = match rest {
        "Z" | "" => 0,
        _ => {
            let (sign, hhmm) = match rest.split_at_checked(1)? {
                ("+", hhmm) => (1, hhmm),
                ("-", hhmm) => (-1, hhmm),
                _ => return None,
            };
            let hours: i64 = hhmm.get(..2)?.parse().ok()?;
            let minutes: i64 = hhmm.get(2..4).unwrap_or("00").parse().ok()?;
            sign * (hours * 3600 + minutes * 60)
        }
    };
    Some(Utc.from_utc_datetime(&naive) - chrono::Duration::seconds(offset_secs))
}

/// Windows FILETIME (100 ns ticks since 1601-01-01 UTC), as in AD's `lastLogonTimestamp`;
/// 0 and the maximum mean "never".
fn parse_filetime(text: &str) -> Option<DateTime<Utc>> {
    let ticks: i64 = text.trim().parse().ok()?;
    if ticks <= 0 || ticks == i64::MAX {
        return None;
    }
    let secs = ticks / 10_000_000 - 11_644_473_600;
    let nanos = u32::try_from((ticks % 10_000_000) * 100).ok()?;
    DateTime::from_timestamp(secs, nanos)
}

fn uac(entry: &SearchEntry) -> Option<u64> {
    first(entry, "userAccountControl")
        .and_then(|v| v.trim().parse::<i64>().ok().map(|n| n as u32 as u64))
}

/// The attribute that holds whether an account is disabled.
fn state_attr(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::OpenLdap => "pwdAccountLockedTime",
        Dialect::ActiveDirectory => "userAccountControl",
        Dialect::Ds389 => "nsAccountLock",
    }
}

/// The modification that disables an account whatever it held, for the dialects whose
/// lock is one attribute value; Active Directory's is one flag among others, so its
/// modification depends on the value read.
fn lock_mods(dialect: Dialect) -> Option<Vec<Mod<String>>> {
    let value = match dialect {
        Dialect::OpenLdap => PERMANENT_LOCK,
        Dialect::Ds389 => "TRUE",
        Dialect::ActiveDirectory => return None,
    };
    Some(vec![Mod::Replace(
        state_attr(dialect).to_string(),
        HashSet::from([value.to_string()]),
    )])
}

/// Whether the entry is disabled the way this dialect disables it.
fn is_disabled(dialect: Dialect, entry: &SearchEntry) -> bool {
    match dialect {
        Dialect::OpenLdap => first(entry, "pwdAccountLockedTime") == Some(PERMANENT_LOCK),
        Dialect::ActiveDirectory => uac(entry).is_some_and(|v| v & UAC_ACCOUNTDISABLE != 0),
        Dialect::Ds389 => {
            first(entry, "nsAccountLock").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
        }
    }
}

fn last_activity(dialect: Dialect, entry: &SearchEntry) -> Option<DateTime<Utc>> {
    match dialect {
        Dialect::OpenLdap => first(entry, "authTimestamp").and_then(parse_generalized_time),
        Dialect::ActiveDirectory => first(entry, "lastLogonTimestamp").and_then(parse_filetime),
        Dialect::Ds389 => first(entry, "lastLoginTime").and_then(parse_generalized_time),
    }
}

/// Compares DNs loosely (case, spaces around separators), enough to tell a member value
/// from another.
fn same_dn(a: &str, b: &str) -> bool {
    let norm = |dn: &str| -> Vec<String> {
        split_rdns(dn)
            .iter()
            .map(|rdn| {
                rdn.split('=')
                    .map(|part| part.trim().to_ascii_lowercase())
                    .collect::<Vec<_>>()
                    .join("=")
            })
            .collect()
    };
    norm(a) == norm(b)
}

pub struct LdapConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    conn: Conn,
}

impl std::fmt::Debug for LdapConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LdapConnector")
            .field("system", &self.system)
            .field("url", &self.settings.url)
            .field("dialect", &self.settings.dialect)
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl LdapConnector {
    /// Builds the connector of one policy system. Nothing is fetched or connected yet: the
    /// bind DN and password are read from `secrets` on first use.
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        let conn = Conn::new(
            system,
            &settings.url,
            settings.timeout,
            secrets,
            &settings.secret,
            usize::try_from(config.concurrency.clamp(1, MAX_CONNECTIONS)).unwrap_or(1),
        );
        Ok(LdapConnector {
            system: system.to_string(),
            settings,
            match_by: config.match_by,
            conn,
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    pub fn dialect(&self) -> Dialect {
        self.settings.dialect
    }

    fn page_size(&self) -> Option<i32> {
        i32::try_from(self.settings.page_size).ok()
    }

    /// The filter that finds a person, and whether its username was only derived from the
    /// email (then a match must not contradict the email).
    fn person_filter(&self, person: &PersonQuery) -> (String, bool) {
        let given = match self.match_by {
            MatchBy::Username => person.username.as_deref().filter(|u| !u.trim().is_empty()),
            MatchBy::Email => None,
        };
        let (username, derived) = match given {
            Some(username) => (username.trim().to_string(), false),
            None => {
                let local = person.email.split('@').next().unwrap_or_default();
                let username = if local.is_empty() {
                    person.email.clone()
                } else {
                    local.to_string()
                };
                (username, true)
            }
        };
        (
            render_filter(&self.settings.user_filter, &username, person.email.trim()),
            derived,
        )
    }

    /// The groups listing the account as a member.
    async fn groups_of(&self, dn: &str, uid: &str) -> Result<Vec<Entitlement>, ConnectorError> {
        let clauses: Vec<String> = self
            .settings
            .dialect
            .member_attrs()
            .iter()
            .filter_map(|(attr, kind)| match kind {
                MemberValue::Dn => Some(format!("({attr}={})", escape_filter_value(dn))),
                MemberValue::Uid if !uid.is_empty() => {
                    Some(format!("({attr}={})", escape_filter_value(uid)))
                }
                MemberValue::Uid => None,
            })
            .collect();
        let filter = if clauses.len() == 1 {
            clauses.concat()
        } else {
            format!("(|{})", clauses.concat())
        };
        let groups = self
            .conn
            .search(
                &self.settings.group_base_dn,
                Scope::Subtree,
                &filter,
                &["cn"],
                self.page_size(),
            )
            .await?
            .unwrap_or_default();
        Ok(groups.iter().map(group_entitlement).collect())
    }

    fn account(&self, entry: &SearchEntry, mut entitlements: Vec<Entitlement>) -> Account {
        let dialect = self.settings.dialect;
        entitlements.sort();
        entitlements.dedup();
        let email = first(entry, "mail").or_else(|| match dialect {
            Dialect::ActiveDirectory => first(entry, "userPrincipalName"),
            _ => None,
        });
        Account {
            system: self.system.clone(),
            id: entry.dn.clone(),
            username: first(entry, dialect.username_attr())
                .map(str::to_string)
                .unwrap_or_else(|| first_rdn_value(&entry.dn)),
            email: email.map(str::to_string),
            active: !is_disabled(dialect, entry),
            entitlements,
            credentials: Vec::new(),
            last_activity: last_activity(dialect, entry),
        }
    }

    fn target_group<'t>(&self, task: &'t Task) -> Result<&'t str, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} acts on an entitlement but names no target group",
                task.task_id
            ))
        })?;
        if target.kind != "group" {
            return Err(ConnectorError::Unsupported(format!(
                "act on a \"{}\" entitlement (LDAP manages groups only)",
                target.kind
            )));
        }
        Ok(&target.id)
    }

    async fn read_user(&self, dn: &str) -> Result<Option<SearchEntry>, ConnectorError> {
        self.conn.read(dn, self.settings.dialect.user_attrs()).await
    }

    /// Disables the account. OpenLDAP: one modify that locks it only if it is not locked
    /// already (assertion control); the other dialects, and an OpenLDAP entry the assertion
    /// turned away, read the entry first.
    async fn disable(&self, dn: &str) -> Result<Applied, ConnectorError> {
        let dialect = self.settings.dialect;
        if let (Dialect::OpenLdap, Some(mods)) = (dialect, lock_mods(dialect)) {
            let rc = self
                .conn
                .modify_if(
                    dn,
                    mods,
                    OPENLDAP_NOT_LOCKED,
                    &[
                        NO_SUCH_OBJECT,
                        UNDEFINED_ATTRIBUTE_TYPE,
                        ASSERTION_FAILED,
                        UNAVAILABLE_CRITICAL_EXTENSION,
                    ],
                )
                .await?;
            // assertionFailed: locked already as far as the matching rule can tell, which
            // can differ from `is_disabled` (another spelling of the same time, or a value
            // the bind DN may not compare); the read below decides. A server without the
            // control is read too.
            if rc != ASSERTION_FAILED && rc != UNAVAILABLE_CRITICAL_EXTENSION {
                return self.disable_outcome(dn, rc);
            }
        }
        let Some(entry) = self.read_user(dn).await? else {
            return Ok(Applied::AlreadyDone);
        };
        if is_disabled(dialect, &entry) {
            return Ok(Applied::AlreadyDone);
        }
        let mods = match lock_mods(dialect) {
            Some(mods) => mods,
            None => {
                let one = |value: String| HashSet::from([value]);
                let current = first(&entry, "userAccountControl").map(str::to_string);
                let old = uac(&entry).unwrap_or(UAC_NORMAL_ACCOUNT);
                let new = (old | UAC_ACCOUNTDISABLE).to_string();
                let mut mods = Vec::new();
                if let Some(current) = current {
                    // Delete the value read, add the new one: a concurrent change makes the
                    // delete fail (noSuchAttribute) instead of being overwritten.
                    mods.push(Mod::Delete("userAccountControl".to_string(), one(current)));
                }
                mods.push(Mod::Add("userAccountControl".to_string(), one(new)));
                mods
            }
        };
        let rc = self
            .conn
            .modify(
                dn,
                mods,
                &[NO_SUCH_OBJECT, NO_SUCH_ATTRIBUTE, UNDEFINED_ATTRIBUTE_TYPE],
            )
            .await?;
        self.disable_outcome(dn, rc)
    }

    /// What a disabling modify's result code means.
    fn disable_outcome(&self, dn: &str, rc: u32) -> Result<Applied, ConnectorError> {
        let dialect = self.settings.dialect;
        let attr = state_attr(dialect);
        match rc {
            NO_SUCH_OBJECT => Ok(Applied::AlreadyDone),
            NO_SUCH_ATTRIBUTE => Err(ConnectorError::Transient(format!(
                "system \"{}\": {attr} of {dn} changed while it was being disabled; it is read again on the next attempt",
                self.system
            ))),
            UNDEFINED_ATTRIBUTE_TYPE => Err(ConnectorError::Permanent(format!(
                "system \"{}\": the directory does not know the attribute {attr}, so {dn} cannot be disabled the {} way{}; fix connection.dialect",
                self.system,
                dialect.as_str(),
                if dialect == Dialect::OpenLdap { " (load the ppolicy overlay with a default policy)" } else { "" }
            ))),
            _ => Ok(Applied::Changed),
        }
    }

    /// Lifts the dialect's disable: the restore of a rehire. An entry that is gone cannot
    /// be enabled.
    async fn enable(&self, dn: &str) -> Result<Applied, ConnectorError> {
        let gone = || {
            ConnectorError::NotFound(format!(
                "system \"{}\": {dn} no longer exists, so it cannot be enabled again",
                self.system
            ))
        };
        let entry = self.read_user(dn).await?.ok_or_else(gone)?;
        let dialect = self.settings.dialect;
        if !is_disabled(dialect, &entry) {
            return Ok(Applied::AlreadyDone);
        }
        let one = |value: String| HashSet::from([value]);
        let mods = match dialect {
            Dialect::OpenLdap => vec![Mod::Delete(
                "pwdAccountLockedTime".to_string(),
                HashSet::new(),
            )],
            Dialect::Ds389 => vec![Mod::Delete("nsAccountLock".to_string(), HashSet::new())],
            Dialect::ActiveDirectory => {
                let old = uac(&entry).unwrap_or(UAC_NORMAL_ACCOUNT | UAC_ACCOUNTDISABLE);
                let mut mods = Vec::new();
                if let Some(current) = first(&entry, "userAccountControl") {
                    mods.push(Mod::Delete(
                        "userAccountControl".to_string(),
                        one(current.to_string()),
                    ));
                }
                mods.push(Mod::Add(
                    "userAccountControl".to_string(),
                    one((old & !UAC_ACCOUNTDISABLE).to_string()),
                ));
                mods
            }
        };
        match self
            .conn
            .modify(dn, mods, &[NO_SUCH_OBJECT, NO_SUCH_ATTRIBUTE])
            .await?
        {
            NO_SUCH_OBJECT => Err(gone()),
            // The lock attribute went away meanwhile: enabled already.
            NO_SUCH_ATTRIBUTE if dialect != Dialect::ActiveDirectory => Ok(Applied::AlreadyDone),
            NO_SUCH_ATTRIBUTE => Err(ConnectorError::Transient(format!(
                "system \"{}\": userAccountControl of {dn} changed while it was being enabled; it is read again on the next attempt",
                self.system
            ))),
            _ => Ok(Applied::Changed),
        }
    }

    /// Adds the account back to `group` (restore), in the member attribute the group's
    /// object class uses: `memberUid` for a posixGroup, `uniqueMember` for a
    /// groupOfUniqueNames, `member` otherwise.
    async fn add_member(
        &self,
        group: &str,
        dn: &str,
        uid: &str,
    ) -> Result<Applied, ConnectorError> {
        let gone = || {
            ConnectorError::NotFound(format!(
                "system \"{}\": group {group} no longer exists, so {dn} cannot be added back",
                self.system
            ))
        };
        match self.memberships_in(group, dn, uid).await? {
            None => return Err(gone()),
            Some(found) if !found.is_empty() => return Ok(Applied::AlreadyDone),
            Some(_) => {}
        }
        let entry = self
            .conn
            .read(group, &["objectClass"])
            .await?
            .ok_or_else(gone)?;
        let is = |class: &str| {
            values(&entry, "objectClass")
                .iter()
                .any(|value| value.eq_ignore_ascii_case(class))
        };
        let (attr, value) = if self.settings.dialect != Dialect::ActiveDirectory
            && is("posixGroup")
            && !is("groupOfNames")
            && !uid.is_empty()
        {
            ("memberUid", uid)
        } else if self.settings.dialect != Dialect::ActiveDirectory && is("groupOfUniqueNames") {
            ("uniqueMember", dn)
        } else {
            ("member", dn)
        };
        match self
            .conn
            .modify(
                group,
                vec![Mod::Add(
                    attr.to_string(),
                    HashSet::from([value.to_string()]),
                )],
                &[NO_SUCH_OBJECT, ATTRIBUTE_OR_VALUE_EXISTS],
            )
            .await?
        {
            NO_SUCH_OBJECT => Err(gone()),
            ATTRIBUTE_OR_VALUE_EXISTS => Ok(Applied::AlreadyDone),
            _ => Ok(Applied::Changed),
        }
    }

    /// The member attributes of `group` that list the account, each with the value to
    /// delete. `None` when the group does not exist.
    async fn memberships_in(
        &self,
        group: &str,
        dn: &str,
        uid: &str,
    ) -> Result<Option<Vec<(&'static str, String)>>, ConnectorError> {
        let mut found = Vec::new();
        for (attr, kind) in self.settings.dialect.member_attrs() {
            let value = match kind {
                MemberValue::Dn => dn,
                MemberValue::Uid if !uid.is_empty() => uid,
                MemberValue::Uid => continue,
            };
            let filter = format!("({attr}={})", escape_filter_value(value));
            match self.conn.matches(group, &filter).await? {
                None => return Ok(None),
                Some(true) => found.push((*attr, value.to_string())),
                Some(false) => {}
            }
        }
        Ok(Some(found))
    }

    async fn remove_member(
        &self,
        group: &str,
        dn: &str,
        uid: &str,
    ) -> Result<Applied, ConnectorError> {
        let found = match self.memberships_in(group, dn, uid).await? {
            None => return Ok(Applied::AlreadyDone),
            Some(found) if found.is_empty() => return Ok(Applied::AlreadyDone),
            Some(found) => found,
        };
        let mods = found
            .into_iter()
            .map(|(attr, value)| Mod::Delete(attr.to_string(), HashSet::from([value])))
            .collect();
        match self
            .conn
            .modify(
                group,
                mods,
                &[NO_SUCH_OBJECT, NO_SUCH_ATTRIBUTE, OBJECT_CLASS_VIOLATION],
            )
            .await?
        {
            NO_SUCH_OBJECT | NO_SUCH_ATTRIBUTE => Ok(Applied::AlreadyDone),
            OBJECT_CLASS_VIOLATION => Err(ConnectorError::Permanent(format!(
                "system \"{}\": removing {dn} from {group} would leave the group without the members its object class requires (groupOfNames needs at least one member); add another member to the group, or delete the group",
                self.system
            ))),
            _ => Ok(Applied::Changed),
        }
    }

    async fn delete(&self, dn: &str) -> Result<Applied, ConnectorError> {
        let tree = self.settings.dialect == Dialect::ActiveDirectory;
        match self
            .conn
            .delete(dn, tree, &[NO_SUCH_OBJECT, NOT_ALLOWED_ON_NON_LEAF])
            .await?
        {
            NO_SUCH_OBJECT => Ok(Applied::AlreadyDone),
            NOT_ALLOWED_ON_NON_LEAF => Err(ConnectorError::Permanent(format!(
                "system \"{}\": {dn} has entries below it and the directory does not delete subtrees; remove them first",
                self.system
            ))),
            _ => Ok(Applied::Changed),
        }
    }

    async fn verify_account(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let dn = task.account.id.as_str();
        let mut seen = Map::new();
        seen.insert("read".into(), json!(dn));
        let Some(entry) = self.read_user(dn).await? else {
            seen.insert("exists".into(), json!(false));
            return Ok(Evidence {
                verified: task.action != Action::Enable,
                observed: Value::Object(seen),
            });
        };
        seen.insert("exists".into(), json!(true));
        let dialect = self.settings.dialect;
        let disabled = is_disabled(dialect, &entry);
        let attr = state_attr(dialect);
        seen.insert(
            attr.into(),
            first(&entry, attr).map_or(Value::Null, |v| json!(v)),
        );
        seen.insert("disabled".into(), json!(disabled));
        Ok(Evidence {
            verified: match task.action {
                Action::Disable => disabled,
                Action::Enable => !disabled,
                _ => false,
            },
            observed: Value::Object(seen),
        })
    }

    async fn verify_membership(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let group = self.target_group(task)?;
        let dn = task.account.id.as_str();
        let mut seen = Map::new();
        seen.insert("read".into(), json!(group));
        seen.insert("account".into(), json!(dn));
        let verified = match self
            .memberships_in(group, dn, &task.account.username)
            .await?
        {
            None => {
                seen.insert("exists".into(), json!(false));
                task.action == Action::RemoveEntitlement
            }
            Some(found) => {
                seen.insert("member".into(), json!(!found.is_empty()));
                if !found.is_empty() {
                    let attrs: Vec<&str> = found.iter().map(|(a, _)| *a).collect();
                    seen.insert("listed_in".into(), json!(attrs));
                }
                found.is_empty() == (task.action == Action::RemoveEntitlement)
            }
        };
        Ok(Evidence {
            verified,
            observed: Value::Object(seen),
        })
    }
}

fn group_entitlement(group: &SearchEntry) -> Entitlement {
    Entitlement {
        id: group.dn.clone(),
        name: first(group, "cn")
            .map(str::to_string)
            .unwrap_or_else(|| first_rdn_value(&group.dn)),
        kind: "group".into(),
    }
}

/// Whether an account found through a username derived from the email is someone else:
/// it has email attributes, and none of them is the person's email.
fn contradicts_email(entry: &SearchEntry, email: &str) -> bool {
    let emails: Vec<&String> = ["mail", "userPrincipalName"]
        .iter()
        .flat_map(|attr| values(entry, attr))
        .collect();
    !emails.is_empty()
        && !emails
            .iter()
            .any(|value| value.trim().eq_ignore_ascii_case(email.trim()))
}

const SUPPORTS: &[StageKind] = &[
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Delete,
    StageKind::Restore,
];

/// Runs the calls with up to `MAX_BATCH` of them in flight at once; the
/// results in the calls' order.
async fn pipelined<F: Future>(calls: Vec<F>) -> Vec<F::Output> {
    // The calls come built, not as a closure over the items: a closure in the stream makes
    // the future too general for the compiler to prove it `Send`.
    stream::iter(calls).buffered(MAX_BATCH).collect().await
}

#[async_trait]
impl Connector for LdapConnector {
    fn supports(&self) -> &[StageKind] {
        SUPPORTS
    }

    fn max_batch(&self) -> usize {
        MAX_BATCH
    }

    async fn discover_batch(
        &self,
        people: &[PersonQuery],
    ) -> Vec<Result<Vec<Account>, ConnectorError>> {
        pipelined(people.iter().map(|person| self.discover(person)).collect()).await
    }

    async fn apply_batch(&self, tasks: &[Task]) -> Vec<Result<Applied, ConnectorError>> {
        pipelined(tasks.iter().map(|task| self.apply(task)).collect()).await
    }

    async fn verify_batch(&self, tasks: &[Task]) -> Vec<Result<Evidence, ConnectorError>> {
        pipelined(tasks.iter().map(|task| self.verify(task)).collect()).await
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("ldap.discover", system = %self.system, person_id = %person.person_id);
        async {
            let (filter, derived) = self.person_filter(person);
            let entries = self
                .conn
                .search(
                    &self.settings.base_dn,
                    Scope::Subtree,
                    &filter,
                    self.settings.dialect.user_attrs(),
                    self.page_size(),
                )
                .await?
                .ok_or_else(|| {
                    ConnectorError::Permanent(format!(
                        "system \"{}\": connection.base_dn = \"{}\" does not exist on the directory",
                        self.system, self.settings.base_dn
                    ))
                })?;
            let mut seen = BTreeSet::new();
            let mut accounts = Vec::new();
            for entry in entries {
                if !seen.insert(entry.dn.to_ascii_lowercase()) {
                    continue;
                }
                if derived && contradicts_email(&entry, &person.email) {
                    tracing::debug!(dn = %entry.dn, "skipped: username matched, email differs");
                    continue;
                }
                let uid = first(&entry, self.settings.dialect.username_attr()).unwrap_or_default();
                let groups = self.groups_of(&entry.dn, uid).await?;
                accounts.push(self.account(&entry, groups));
            }
            tracing::debug!(accounts = accounts.len(), "ldap discovery done");
            Ok(accounts)
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("ldap.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let dn = task.account.id.as_str();
            let applied = match task.action {
                Action::Disable => self.disable(dn).await,
                Action::Enable => self.enable(dn).await,
                Action::RemoveEntitlement => {
                    let group = self.target_group(task)?;
                    self.remove_member(group, dn, &task.account.username).await
                }
                Action::RestoreEntitlement => {
                    let group = self.target_group(task)?;
                    self.add_member(group, dn, &task.account.username).await
                }
                Action::Delete => self.delete(dn).await,
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (LDAP has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "ldap apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("ldap.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let evidence = match task.action {
                Action::Disable | Action::Delete | Action::Enable => {
                    self.verify_account(task).await?
                }
                Action::RemoveEntitlement | Action::RestoreEntitlement => {
                    self.verify_membership(task).await?
                }
                other => {
                    return Err(ConnectorError::Unsupported(format!(
                        "verify {} (LDAP has no such operation)",
                        other.as_str().replace('_', " ")
                    )))
                }
            };
            tracing::debug!(verified = evidence.verified, "ldap verify done");
            Ok(evidence)
        }
        .instrument(span)
        .await
    }

    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("ldap.list_accounts", system = %self.system);
        async {
            let dialect = self.settings.dialect;
            let users = self
                .conn
                .search(
                    &self.settings.base_dn,
                    Scope::Subtree,
                    dialect.all_users_filter(),
                    dialect.user_attrs(),
                    self.page_size(),
                )
                .await?
                .unwrap_or_default();
            // One pass over the groups instead of a search per user.
            let member_attrs: Vec<&str> = dialect.member_attrs().iter().map(|(a, _)| *a).collect();
            let presence: String = member_attrs.iter().map(|a| format!("({a}=*)")).collect();
            let mut wanted = member_attrs.clone();
            wanted.push("cn");
            let groups = self
                .conn
                .search(
                    &self.settings.group_base_dn,
                    Scope::Subtree,
                    &format!("(|{presence})"),
                    &wanted,
                    self.page_size(),
                )
                .await?
                .unwrap_or_default();
            Ok(users
                .iter()
                .map(|user| {
                    let uid = first(user, dialect.username_attr()).unwrap_or_default();
                    let entitlements = groups
                        .iter()
                        .filter(|group| {
                            dialect.member_attrs().iter().any(|(attr, kind)| {
                                values(group, attr).iter().any(|value| match kind {
                                    MemberValue::Dn => same_dn(value, &user.dn),
                                    MemberValue::Uid => !uid.is_empty() && value == uid,
                                })
                            })
                        })
                        .map(group_entitlement)
                        .collect();
                    self.account(user, entitlements)
                })
                .collect())
        }
        .instrument(span)
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use deprov_core::testing::MemorySecrets;
    use std::collections::HashMap;

    fn config(connection: Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("ldap", connection, secret)
    }

    fn entry(dn: &str, attrs: &[(&str, &[&str])]) -> SearchEntry {
        SearchEntry {
            dn: dn.into(),
            attrs: attrs
                .iter()
                .map(|(k, v)| (k.to_string(), v.iter().map(|s| s.to_string()).collect()))
                .collect::<HashMap<_, _>>(),
            bin_attrs: HashMap::new(),
        }
    }

    #[test]
    fn filter_values_are_escaped_per_rfc_4515() {
        assert_eq!(escape_filter_value("ada"), "ada");
        assert_eq!(escape_filter_value("*)(uid=*"), "\\2a\\29\\28uid=\\2a");
        assert_eq!(escape_filter_value("a\\b\0"), "a\\5cb\\00");
        assert_eq!(
            render_filter("(|(uid={username})(mail={email}))", "{email}", "x*@y"),
            "(|(uid={email})(mail=x\\2a@y))"
        );
        let rendered = render_filter(
            Dialect::OpenLdap.default_user_filter(),
            "*)(uid=*",
            "a@example.com",
        );
        assert!(ldap3::parse_filter(&rendered).is_ok(), "{rendered}");
        assert!(!rendered.contains("(uid=*)"));
    }

    #[test]
    fn settings_defaults_and_problems() {
        let ok = config(
            json!({"url": "ldaps://ldap.example.com:636", "base_dn": "dc=example,dc=com", "dialect": "ad"}),
            Some("deprov/connector/dir"),
        );
        let settings = Settings::parse("dir", &ok).expect("valid settings");
        assert_eq!(settings.page_size, 500);
        assert_eq!(settings.timeout, Duration::from_secs(30));
        assert_eq!(settings.group_base_dn, "dc=example,dc=com");
        assert_eq!(settings.dialect, Dialect::ActiveDirectory);
        assert!(settings.user_filter.contains("sAMAccountName={username}"));
        assert!(LdapConnector::check_config("dir", &ok).is_empty());

        let problems = LdapConnector::check_config("dir", &config(json!({}), None));
        assert_eq!(problems.len(), 4, "{problems:#?}");
        let all = problems.join("\n");
        for needle in [
            "systems.dir.connection.url is required",
            "systems.dir.connection.base_dn is required",
            "systems.dir.connection.dialect is required",
            "systems.dir.secret is required",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }

        let bad = config(
            json!({"url": "https://x", "base_dn": "example.com", "dialect": "novell",
                   "user_filter": "uid={username}", "page_size": 0, "timeout_secs": "9",
                   "group_base": "x", "group_base_dn": ""}),
            Some("s"),
        );
        let problems = LdapConnector::check_config("dir", &bad);
        assert_eq!(problems.len(), 8, "{problems:#?}");
        let all = problems.join("\n");
        for needle in [
            "systems.dir.connection.group_base is not an LDAP setting",
            "systems.dir.connection.url = \"https://x\" must be an ldaps://",
            "systems.dir.connection.base_dn = \"example.com\" must be a distinguished name",
            "systems.dir.connection.group_base_dn",
            "systems.dir.connection.dialect = \"novell\" must be",
            "systems.dir.connection.user_filter = \"uid={username}\" must be an LDAP filter",
            "systems.dir.connection.page_size = 0 must be a whole number from 1 to 10000",
            "systems.dir.connection.timeout_secs = \"9\"",
        ] {
            assert!(all.contains(needle), "{needle} missing in {all}");
        }

        for (filter, why) in [
            ("(uid=x)", "must contain {username}"),
            ("(uid={user})", "placeholder {user}"),
            ("(&(uid={username})", "not a valid LDAP filter"),
        ] {
            let problems = LdapConnector::check_config(
                "dir",
                &config(
                    json!({"url": "ldap://h", "base_dn": "dc=x", "dialect": "openldap", "user_filter": filter}),
                    Some("s"),
                ),
            );
            assert!(
                problems.len() == 1 && problems[0].contains(why),
                "{filter}: {problems:?}"
            );
        }
        for (url, why) in [
            ("ldap://u:p@h", "user name or password"),
            ("ldap://h/dc=x", "only scheme, host and port"),
            ("nope", "is not a URL"),
        ] {
            let problems = LdapConnector::check_config(
                "dir",
                &config(
                    json!({"url": url, "base_dn": "dc=x", "dialect": "389"}),
                    Some("s"),
                ),
            );
            assert!(
                problems.len() == 1 && problems[0].contains(why),
                "{url}: {problems:?}"
            );
        }
    }

    #[test]
    fn from_config_reports_every_problem() {
        let secrets: Arc<dyn SecretSource> = Arc::new(MemorySecrets::default());
        let err = LdapConnector::from_config("dir", &config(json!({}), None), secrets)
            .expect_err("invalid config");
        assert!(matches!(err, ConnectorError::InvalidConfig(_)));
        assert!(err.to_string().contains("url is required"));
        assert!(err.to_string().contains("secret is required"));
    }

    #[test]
    fn times_parse() {
        let t = parse_generalized_time("20240102030405Z").expect("time");
        assert_eq!(t.to_rfc3339(), "2024-01-02T03:04:05+00:00");
        let t = parse_generalized_time("20240102030405.25+0200").expect("time");
        assert_eq!(t.to_rfc3339(), "2024-01-02T01:04:05+00:00");
        assert!(parse_generalized_time("2024").is_none());
        // 2024-01-01T00:00:00Z as FILETIME.
        let t = parse_filetime("133485408000000000").expect("filetime");
        assert_eq!(t.to_rfc3339(), "2024-01-01T00:00:00+00:00");
        assert!(parse_filetime("0").is_none());
        assert!(parse_filetime("9223372036854775807").is_none());
    }

    #[test]
    fn the_openldap_assertion_is_a_filter_on_the_permanent_lock() {
        // ldap3 panics on an assertion filter it cannot parse.
        assert!(ldap3::parse_filter(OPENLDAP_NOT_LOCKED).is_ok());
        assert!(OPENLDAP_NOT_LOCKED.contains(&format!("pwdAccountLockedTime={PERMANENT_LOCK}")));
    }

    #[test]
    fn entries_map_to_state() {
        let locked = entry("uid=a,dc=x", &[("pwdAccountLockedTime", &[PERMANENT_LOCK])]);
        assert!(is_disabled(Dialect::OpenLdap, &locked));
        let temp = entry(
            "uid=a,dc=x",
            &[("pwdAccountLockedTime", &["20240101000000Z"])],
        );
        assert!(!is_disabled(Dialect::OpenLdap, &temp));
        let ad = entry("cn=a,dc=x", &[("userAccountControl", &["514"])]);
        assert!(is_disabled(Dialect::ActiveDirectory, &ad));
        let ad = entry("cn=a,dc=x", &[("useraccountcontrol", &["66048"])]);
        assert!(!is_disabled(Dialect::ActiveDirectory, &ad));
        let ds = entry("uid=a,dc=x", &[("nsAccountLock", &["true"])]);
        assert!(is_disabled(Dialect::Ds389, &ds));
        assert!(same_dn(
            "UID=Ada, ou=People,dc=example,dc=com",
            "uid=ada,ou=people,dc=example,dc=com"
        ));
        assert_eq!(first_rdn_value("cn=eng\\,ops,ou=groups"), "eng\\,ops");
        let other = entry("uid=bob,dc=x", &[("mail", &["bob@other.example"])]);
        assert!(contradicts_email(&other, "bob@example.com"));
        assert!(!contradicts_email(&other, "BOB@other.example"));
        assert!(!contradicts_email(
            &entry("uid=bob,dc=x", &[]),
            "bob@example.com"
        ));
    }
}
