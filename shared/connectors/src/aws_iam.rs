//! AWS IAM connector: a person's account is an IAM user of one AWS account.
//!
//! Entitlements are the user's group memberships (kind `group`, id the GroupId), attached
//! managed policies (`managed_policy`, id the policy ARN) and inline policies
//! (`inline_policy`, id the policy name). Credentials are the console password
//! (`console_password`, id `login_profile`), access keys (`access_key`), signing
//! certificates (`signing_certificate`), SSH public keys (`ssh_public_key`),
//! service-specific credentials (`service_specific_credential`) and MFA devices
//! (`mfa_device`, id the serial number).
//! - disable: `DeleteLoginProfile` and `UpdateAccessKey Status=Inactive` on every key;
//! - remove entitlement: `RemoveUserFromGroup` / `DetachUserPolicy` / `DeleteUserPolicy`;
//! - remove credential: `DeleteLoginProfile` / `DeleteAccessKey` / `DeleteSigningCertificate`
//!   / `DeleteSSHPublicKey` / `DeleteServiceSpecificCredential` / `DeactivateMFADevice`
//!   (then `DeleteVirtualMFADevice` for a virtual device);
//! - delete: what `DeleteUser` requires removed first, in the documented order (password,
//!   access keys, signing certificates, SSH keys, service-specific credentials, MFA devices,
//!   inline policies, attached policies, groups), then `DeleteUser`
//!   (<https://docs.aws.amazon.com/IAM/latest/APIReference/API_DeleteUser.html>).
//!
//! IAM has no API that revokes a user's live console session or the STS sessions made
//! from its keys, so there is no sessions stage: disable makes every key inactive (which
//! also stops STS session tokens minted from them) and removes the console password.
//!
//! Every change reads first; `NoSuchEntity` on the thing removed (or on the user) is
//! `AlreadyDone`. Every list call is paginated.
//!
//! Policy settings (`[systems.<name>]`, `kind = "aws_iam"`): `secret` (optional: fields
//! `access_key_id`, `secret_access_key` and optionally `session_token`; without it the
//! default credential chain is used, e.g. the Lambda's role), and `connection` keys
//! `endpoint_url` (an IAM endpoint override, for tests), `region` ("us-east-1"), `mode`
//! ("delete", or "disable_only": no delete stage), `protected_users` (glob patterns with
//! `*` and `?`, e.g. ["svc-*", "terraform"]: users this connector never lists nor touches,
//! a guard under the policy's exemptions), `timeout_secs` (30).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_iam::config::http::HttpResponse;
use aws_sdk_iam::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_iam::types::StatusType;
use aws_sdk_iam::Client;
use chrono::{DateTime, Utc};
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::{MatchBy, SystemConfig};
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Credential, Entitlement, Evidence, PersonQuery,
};
use serde_json::{json, Value};
use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::aws_sdk::{self, list_all, ACCESS_KEY_FIELD, SECRET_KEY_FIELD};
use crate::http;

const KEYS: &[&str] = &[
    "endpoint_url",
    "region",
    "mode",
    "protected_users",
    "timeout_secs",
];
const DEFAULT_REGION: &str = "us-east-1";
const LOGIN_PROFILE_ID: &str = "login_profile";

/// Entitlement kinds.
const GROUP: &str = "group";
const MANAGED_POLICY: &str = "managed_policy";
const INLINE_POLICY: &str = "inline_policy";
/// Credential kinds.
const CONSOLE_PASSWORD: &str = "console_password";
const ACCESS_KEY: &str = "access_key";
const SIGNING_CERTIFICATE: &str = "signing_certificate";
const SSH_PUBLIC_KEY: &str = "ssh_public_key";
const SERVICE_CREDENTIAL: &str = "service_specific_credential";
const MFA_DEVICE: &str = "mfa_device";

const SUPPORTS_DELETE: &[StageKind] = &[
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Credentials,
    StageKind::Delete,
];
const SUPPORTS_DISABLE_ONLY: &[StageKind] = &[
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Credentials,
];

#[derive(Clone, Debug, PartialEq)]
struct Settings {
    endpoint_url: Option<String>,
    region: String,
    disable_only: bool,
    protected_users: Vec<String>,
    timeout: Duration,
    secret: Option<String>,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "aws_iam", config, KEYS);
        let endpoint_url = if config.connection.contains_key("endpoint_url") {
            s.url("endpoint_url", None, "http://127.0.0.1:5000")
                .map(|url| url.as_str().trim_end_matches('/').to_string())
        } else {
            None
        };
        let region = s
            .text(
                "region",
                Some(DEFAULT_REGION),
                "an AWS region name, e.g. \"us-east-1\" (IAM is global; this only picks the signing region and STS endpoint)",
            )
            .unwrap_or_else(|| DEFAULT_REGION.into());
        let disable_only = s.choice("mode", &["delete", "disable_only"]) == "disable_only";
        let timeout = s.number("timeout_secs", 30, 600);
        let protected_users = match config.connection.get("protected_users") {
            None => Vec::new(),
            Some(Value::Array(items))
                if items
                    .iter()
                    .all(|item| item.as_str().is_some_and(|t| !t.trim().is_empty())) =>
            {
                items
                    .iter()
                    .filter_map(Value::as_str)
                    .map(|t| t.trim().to_string())
                    .collect()
            }
            Some(other) => {
                s.problems.push(format!(
                    "{} = {other} must be a list of IAM user name patterns (`*` and `?` wildcards), e.g. [\"svc-*\", \"terraform\"]",
                    s.key("protected_users")
                ));
                Vec::new()
            }
        };
        let secret = match config.secret.as_deref() {
            None => None,
            Some(name) if !name.trim().is_empty() => Some(name.to_string()),
            Some(_) => {
                s.problems.push(format!(
                    "systems.{system}.secret is empty: name the secret whose fields \"{ACCESS_KEY_FIELD}\" and \"{SECRET_KEY_FIELD}\" hold an IAM access key, or leave it out to use the default credential chain (e.g. the function's role)"
                ));
                None
            }
        };
        if s.problems.is_empty() {
            Ok(Settings {
                endpoint_url,
                region,
                disable_only,
                protected_users,
                timeout: Duration::from_secs(timeout),
                secret,
            })
        } else {
            Err(s.problems)
        }
    }

    fn is_protected(&self, user: &str) -> bool {
        self.protected_users
            .iter()
            .any(|pattern| glob(pattern.as_bytes(), user.as_bytes()))
    }
}

/// `*` (any run) and `?` (one character) matching, case-sensitive like IAM user names'
/// uniqueness is not: IAM names are case-insensitive, so both sides are compared lowercased.
fn glob(pattern: &[u8], text: &[u8]) -> bool {
    let lower = |b: &u8| b.to_ascii_lowercase();
    let (pattern, text): (Vec<u8>, Vec<u8>) = (
        pattern.iter().map(lower).collect(),
        text.iter().map(lower).collect(),
    );
    let (mut p, mut t, mut star, mut mark) = (0usize, 0usize, None, 0usize);
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some(p);
            mark = t;
            p += 1;
        } else if let Some(s) = star {
            p = s + 1;
            mark += 1;
            t = mark;
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|b| *b == b'*')
}

/// The name the person goes by on this system: the event's username, else the local part
/// of the email (as the other directory connectors resolve it).
fn person_username(person: &PersonQuery, match_by: MatchBy) -> Option<&str> {
    let by_username = match match_by {
        MatchBy::Username => person.username.as_deref().filter(|u| !u.is_empty()),
        MatchBy::Email => None,
    };
    by_username.or_else(|| {
        person
            .email
            .split('@')
            .next()
            .filter(|local| !local.is_empty())
    })
}

/// Whether `name` can be an IAM user name (`[\w+=,.@-]{1,64}`); anything else is not
/// looked up at all.
fn valid_user_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+=,.@-".contains(c))
}

fn time(value: Option<&aws_sdk_iam::primitives::DateTime>) -> Option<DateTime<Utc>> {
    value.and_then(|t| DateTime::from_timestamp(t.secs(), t.subsec_nanos()))
}

fn is_virtual_mfa(serial: &str) -> bool {
    serial.starts_with("arn:") && serial.contains(":mfa/")
}

const IAM: aws_sdk::Service = aws_sdk::Service {
    name: "IAM",
    not_found: &["NoSuchEntity", "NoSuchEntityException"],
    server_failure: &["ServiceFailure", "ServiceUnavailable", "InternalFailure"],
    conflict: &["ConcurrentModification", "ConcurrentModificationException"],
};

/// Everything about one user that deprov acts on.
#[derive(Debug, Default)]
struct UserState {
    user_name: String,
    password_last_used: Option<DateTime<Utc>>,
    login_profile: bool,
    /// (id, status, create date)
    access_keys: Vec<(String, String)>,
    signing_certificates: Vec<(String, String)>,
    ssh_public_keys: Vec<(String, String)>,
    /// (id, status, service name)
    service_credentials: Vec<(String, String, String)>,
    mfa_devices: Vec<String>,
    groups: Vec<(String, String)>,
    managed_policies: Vec<(String, String)>,
    inline_policies: Vec<String>,
}

impl UserState {
    fn active(&self) -> bool {
        self.login_profile || self.access_keys.iter().any(|(_, s)| s == "Active")
    }

    fn entitlements(&self) -> Vec<Entitlement> {
        let mut out: Vec<Entitlement> = Vec::new();
        out.extend(self.groups.iter().map(|(id, name)| Entitlement {
            id: id.clone(),
            name: name.clone(),
            kind: GROUP.into(),
        }));
        out.extend(self.managed_policies.iter().map(|(arn, name)| Entitlement {
            id: arn.clone(),
            name: name.clone(),
            kind: MANAGED_POLICY.into(),
        }));
        out.extend(self.inline_policies.iter().map(|name| Entitlement {
            id: name.clone(),
            name: name.clone(),
            kind: INLINE_POLICY.into(),
        }));
        out
    }

    fn credentials(&self) -> Vec<Credential> {
        let mut out = Vec::new();
        let cred = |id: &str, kind: &str, name: String| Credential {
            id: id.to_string(),
            kind: kind.to_string(),
            name: Some(name),
        };
        if self.login_profile {
            out.push(cred(
                LOGIN_PROFILE_ID,
                CONSOLE_PASSWORD,
                "console password".into(),
            ));
        }
        for (id, status) in &self.access_keys {
            out.push(cred(id, ACCESS_KEY, format!("access key {id} ({status})")));
        }
        for (id, status) in &self.signing_certificates {
            out.push(cred(
                id,
                SIGNING_CERTIFICATE,
                format!("signing certificate {id} ({status})"),
            ));
        }
        for (id, status) in &self.ssh_public_keys {
            out.push(cred(
                id,
                SSH_PUBLIC_KEY,
                format!("SSH public key {id} ({status})"),
            ));
        }
        for (id, status, service) in &self.service_credentials {
            out.push(cred(
                id,
                SERVICE_CREDENTIAL,
                format!("{service} credential {id} ({status})"),
            ));
        }
        for serial in &self.mfa_devices {
            out.push(cred(serial, MFA_DEVICE, format!("MFA device {serial}")));
        }
        out
    }
}

pub struct AwsIamConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    secrets: Arc<dyn SecretSource>,
    client: OnceCell<(Client, Vec<String>)>,
}

impl std::fmt::Debug for AwsIamConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsIamConnector")
            .field("system", &self.system)
            .field("endpoint_url", &self.settings.endpoint_url)
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl AwsIamConnector {
    /// Builds the connector; the secret is read and the client made at first use.
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        Ok(AwsIamConnector {
            system: system.to_string(),
            settings,
            match_by: config.match_by,
            secrets,
            client: OnceCell::new(),
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    fn credential_source(&self) -> String {
        aws_sdk::credential_source(self.settings.secret.as_deref())
    }

    /// The IAM client and the secret values it signs with (to redact from messages).
    async fn client(&self) -> Result<&(Client, Vec<String>), ConnectorError> {
        self.client
            .get_or_try_init(|| async {
                let (config, values) = aws_sdk::load(
                    aws_sdk::Target {
                        system: &self.system,
                        region: &self.settings.region,
                        endpoint_url: self.settings.endpoint_url.as_deref(),
                        timeout: self.settings.timeout,
                        secret: self.settings.secret.as_deref(),
                        key_kind: "an IAM access key",
                    },
                    &self.secrets,
                )
                .await?;
                Ok((Client::new(&config), values))
            })
            .await
    }

    /// `Ok(None)` when IAM says `NoSuchEntity`.
    async fn absent<T, E>(
        &self,
        request: &str,
        user: &str,
        result: Result<T, SdkError<E, HttpResponse>>,
    ) -> Result<Option<T>, ConnectorError>
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        // The message parts are built only when the call failed.
        let err = match result {
            Ok(value) => return Ok(Some(value)),
            Err(err) => err,
        };
        let secrets = self
            .client
            .get()
            .map(|(_, values)| values.as_slice())
            .unwrap_or_default();
        let call = aws_sdk::Call {
            system: &self.system,
            request,
            user,
            credential_source: self.credential_source(),
            permission: format!("iam:{request}"),
            scope: "on the users deprov manages".into(),
            secrets,
        };
        aws_sdk::failure(&IAM, &call, err).map_or(Ok(None), Err)
    }

    /// Reads the whole user; `None` when it does not exist.
    async fn read_user(&self, name: &str) -> Result<Option<UserState>, ConnectorError> {
        let (client, _) = self.client().await?;
        let Some(user) = self
            .absent(
                "GetUser",
                name,
                client.get_user().user_name(name).send().await,
            )
            .await?
            .and_then(|out| out.user)
        else {
            return Ok(None);
        };
        let mut state = UserState {
            user_name: user.user_name().to_string(),
            password_last_used: time(user.password_last_used()),
            ..UserState::default()
        };
        let name = state.user_name.clone();
        let name = name.as_str();
        macro_rules! or_gone {
            ($value:expr) => {
                match $value {
                    Some(value) => value,
                    None => return Ok(None),
                }
            };
        }
        state.login_profile = self
            .absent(
                "GetLoginProfile",
                name,
                client.get_login_profile().user_name(name).send().await,
            )
            .await?
            .is_some();
        let keys: Vec<_> = or_gone!(
            self.absent(
                "ListAccessKeys",
                name,
                list_all!(client.list_access_keys().user_name(name))
            )
            .await?
        );
        state.access_keys = keys
            .iter()
            .filter_map(|k| {
                Some((
                    k.access_key_id()?.to_string(),
                    k.status()
                        .map(StatusType::as_str)
                        .unwrap_or("Active")
                        .to_string(),
                ))
            })
            .collect();
        let certs: Vec<_> = or_gone!(
            self.absent(
                "ListSigningCertificates",
                name,
                list_all!(client.list_signing_certificates().user_name(name))
            )
            .await?
        );
        state.signing_certificates = certs
            .iter()
            .map(|c| {
                (
                    c.certificate_id().to_string(),
                    c.status().as_str().to_string(),
                )
            })
            .collect();
        let ssh: Vec<_> = or_gone!(
            self.absent(
                "ListSSHPublicKeys",
                name,
                list_all!(client.list_ssh_public_keys().user_name(name))
            )
            .await?
        );
        state.ssh_public_keys = ssh
            .iter()
            .map(|k| {
                (
                    k.ssh_public_key_id().to_string(),
                    k.status().as_str().to_string(),
                )
            })
            .collect();
        state.service_credentials = or_gone!(self.service_credentials(client, name).await?);
        let mfa: Vec<_> = or_gone!(
            self.absent(
                "ListMFADevices",
                name,
                list_all!(client.list_mfa_devices().user_name(name))
            )
            .await?
        );
        state.mfa_devices = mfa.iter().map(|d| d.serial_number().to_string()).collect();
        let groups: Vec<_> = or_gone!(
            self.absent(
                "ListGroupsForUser",
                name,
                list_all!(client.list_groups_for_user().user_name(name))
            )
            .await?
        );
        state.groups = groups
            .iter()
            .map(|g| (g.group_id().to_string(), g.group_name().to_string()))
            .collect();
        let attached: Vec<_> = or_gone!(
            self.absent(
                "ListAttachedUserPolicies",
                name,
                list_all!(client.list_attached_user_policies().user_name(name))
            )
            .await?
        );
        state.managed_policies = attached
            .iter()
            .filter_map(|p| {
                let arn = p.policy_arn()?.to_string();
                let name = p.policy_name().unwrap_or(&arn).to_string();
                Some((arn, name))
            })
            .collect();
        state.inline_policies = or_gone!(
            self.absent(
                "ListUserPolicies",
                name,
                list_all!(client.list_user_policies().user_name(name))
            )
            .await?
        );
        Ok(Some(state))
    }

    /// `ListServiceSpecificCredentials` has no paginator: a marker loop.
    async fn service_credentials(
        &self,
        client: &Client,
        name: &str,
    ) -> Result<Option<Vec<(String, String, String)>>, ConnectorError> {
        let mut out = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let mut request = client.list_service_specific_credentials().user_name(name);
            if let Some(marker) = &marker {
                request = request.marker(marker);
            }
            let Some(page) = self
                .absent("ListServiceSpecificCredentials", name, request.send().await)
                .await?
            else {
                return Ok(None);
            };
            out.extend(page.service_specific_credentials().iter().map(|c| {
                (
                    c.service_specific_credential_id().to_string(),
                    c.status().as_str().to_string(),
                    c.service_name().to_string(),
                )
            }));
            match (page.is_truncated(), page.marker()) {
                (true, Some(next)) if marker.as_deref() != Some(next) => {
                    marker = Some(next.to_string())
                }
                _ => return Ok(Some(out)),
            }
        }
    }

    fn account(&self, state: &UserState) -> Account {
        Account {
            system: self.system.clone(),
            id: state.user_name.clone(),
            username: state.user_name.clone(),
            email: None,
            active: state.active(),
            entitlements: state.entitlements(),
            credentials: state.credentials(),
            last_activity: state.password_last_used,
        }
    }

    fn guard(&self, task: &Task) -> Result<(), ConnectorError> {
        let user = task.account.id.as_str();
        if self.settings.is_protected(user) {
            return Err(ConnectorError::Permanent(format!(
                "system \"{}\": IAM user \"{user}\" matches systems.{}.connection.protected_users; deprov never changes it (remove the pattern, or the user from the plan)",
                self.system, self.system
            )));
        }
        if !valid_user_name(user) {
            return Err(ConnectorError::Permanent(format!(
                "task {} names \"{user}\", which is not an IAM user name",
                task.task_id
            )));
        }
        Ok(())
    }

    fn target<'t>(
        &self,
        task: &'t Task,
        kinds: &[&str],
    ) -> Result<&'t deprov_core::plan::Target, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} ({}) names no target",
                task.task_id,
                task.action.as_str()
            ))
        })?;
        if kinds.contains(&target.kind.as_str()) {
            Ok(target)
        } else {
            Err(ConnectorError::Unsupported(format!(
                "{} a \"{}\" (the aws_iam connector knows {})",
                task.action.as_str().replace('_', " "),
                target.kind,
                kinds.join(", ")
            )))
        }
    }

    async fn disable(&self, user: &str) -> Result<Applied, ConnectorError> {
        let (client, _) = self.client().await?;
        let mut changed = false;
        if self
            .absent(
                "DeleteLoginProfile",
                user,
                client.delete_login_profile().user_name(user).send().await,
            )
            .await?
            .is_some()
        {
            changed = true;
        }
        let Some(keys) = self
            .absent(
                "ListAccessKeys",
                user,
                list_all!(client.list_access_keys().user_name(user)),
            )
            .await?
        else {
            return Ok(if changed {
                Applied::Changed
            } else {
                Applied::AlreadyDone
            });
        };
        let keys: Vec<aws_sdk_iam::types::AccessKeyMetadata> = keys;
        for key in keys {
            let Some(id) = key.access_key_id() else {
                continue;
            };
            if key.status() == Some(&StatusType::Inactive) {
                continue;
            }
            let done = self
                .absent(
                    "UpdateAccessKey",
                    user,
                    client
                        .update_access_key()
                        .user_name(user)
                        .access_key_id(id)
                        .status(StatusType::Inactive)
                        .send()
                        .await,
                )
                .await?;
            changed |= done.is_some();
        }
        Ok(if changed {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    async fn remove_entitlement(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let target = self.target(task, &[GROUP, MANAGED_POLICY, INLINE_POLICY])?;
        let user = task.account.id.as_str();
        let (client, _) = self.client().await?;
        let held = self.entitlement_held(user, target).await?;
        if !held {
            return Ok(Applied::AlreadyDone);
        }
        let done = match target.kind.as_str() {
            GROUP => self
                .absent(
                    "RemoveUserFromGroup",
                    user,
                    client
                        .remove_user_from_group()
                        .user_name(user)
                        .group_name(&target.name)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
            MANAGED_POLICY => self
                .absent(
                    "DetachUserPolicy",
                    user,
                    client
                        .detach_user_policy()
                        .user_name(user)
                        .policy_arn(&target.id)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
            _ => self
                .absent(
                    "DeleteUserPolicy",
                    user,
                    client
                        .delete_user_policy()
                        .user_name(user)
                        .policy_name(&target.name)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
        };
        Ok(if done {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    /// Whether the user still holds the entitlement (false when the user is gone).
    async fn entitlement_held(
        &self,
        user: &str,
        target: &deprov_core::plan::Target,
    ) -> Result<bool, ConnectorError> {
        let (client, _) = self.client().await?;
        Ok(match target.kind.as_str() {
            GROUP => {
                let groups: Option<Vec<aws_sdk_iam::types::Group>> = self
                    .absent(
                        "ListGroupsForUser",
                        user,
                        list_all!(client.list_groups_for_user().user_name(user)),
                    )
                    .await?;
                groups.unwrap_or_default().iter().any(|g| {
                    g.group_id() == target.id || g.group_name().eq_ignore_ascii_case(&target.name)
                })
            }
            MANAGED_POLICY => {
                let attached: Option<Vec<aws_sdk_iam::types::AttachedPolicy>> = self
                    .absent(
                        "ListAttachedUserPolicies",
                        user,
                        list_all!(client.list_attached_user_policies().user_name(user)),
                    )
                    .await?;
                attached
                    .unwrap_or_default()
                    .iter()
                    .any(|p| p.policy_arn() == Some(target.id.as_str()))
            }
            _ => {
                let names: Option<Vec<String>> = self
                    .absent(
                        "ListUserPolicies",
                        user,
                        list_all!(client.list_user_policies().user_name(user)),
                    )
                    .await?;
                names.unwrap_or_default().contains(&target.name)
            }
        })
    }

    /// Whether the credential still exists (false when the user is gone).
    async fn credential_held(
        &self,
        user: &str,
        target: &deprov_core::plan::Target,
    ) -> Result<(bool, Value), ConnectorError> {
        let (client, _) = self.client().await?;
        let id = target.id.as_str();
        Ok(match target.kind.as_str() {
            CONSOLE_PASSWORD => {
                let found = self
                    .absent(
                        "GetLoginProfile",
                        user,
                        client.get_login_profile().user_name(user).send().await,
                    )
                    .await?
                    .is_some();
                (
                    found,
                    json!({"GetLoginProfile": if found { "present" } else { "NoSuchEntity" }}),
                )
            }
            ACCESS_KEY => {
                let keys: Option<Vec<aws_sdk_iam::types::AccessKeyMetadata>> = self
                    .absent(
                        "ListAccessKeys",
                        user,
                        list_all!(client.list_access_keys().user_name(user)),
                    )
                    .await?;
                let ids: Vec<&str> = keys
                    .iter()
                    .flatten()
                    .filter_map(|k| k.access_key_id())
                    .collect();
                (ids.contains(&id), json!({"ListAccessKeys": ids}))
            }
            SIGNING_CERTIFICATE => {
                let certs: Option<Vec<aws_sdk_iam::types::SigningCertificate>> = self
                    .absent(
                        "ListSigningCertificates",
                        user,
                        list_all!(client.list_signing_certificates().user_name(user)),
                    )
                    .await?;
                let ids: Vec<&str> = certs.iter().flatten().map(|c| c.certificate_id()).collect();
                (ids.contains(&id), json!({"ListSigningCertificates": ids}))
            }
            SSH_PUBLIC_KEY => {
                let keys: Option<Vec<aws_sdk_iam::types::SshPublicKeyMetadata>> = self
                    .absent(
                        "ListSSHPublicKeys",
                        user,
                        list_all!(client.list_ssh_public_keys().user_name(user)),
                    )
                    .await?;
                let ids: Vec<&str> = keys
                    .iter()
                    .flatten()
                    .map(|k| k.ssh_public_key_id())
                    .collect();
                (ids.contains(&id), json!({"ListSSHPublicKeys": ids}))
            }
            SERVICE_CREDENTIAL => {
                let creds = self.service_credentials(client, user).await?;
                let ids: Vec<&str> = creds.iter().flatten().map(|c| c.0.as_str()).collect();
                (
                    ids.contains(&id),
                    json!({"ListServiceSpecificCredentials": ids}),
                )
            }
            _ => {
                let devices: Option<Vec<aws_sdk_iam::types::MfaDevice>> = self
                    .absent(
                        "ListMFADevices",
                        user,
                        list_all!(client.list_mfa_devices().user_name(user)),
                    )
                    .await?;
                let serials: Vec<&str> = devices
                    .iter()
                    .flatten()
                    .map(|d| d.serial_number())
                    .collect();
                (serials.contains(&id), json!({"ListMFADevices": serials}))
            }
        })
    }

    async fn remove_credential(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let target = self.target(
            task,
            &[
                CONSOLE_PASSWORD,
                ACCESS_KEY,
                SIGNING_CERTIFICATE,
                SSH_PUBLIC_KEY,
                SERVICE_CREDENTIAL,
                MFA_DEVICE,
            ],
        )?;
        let user = task.account.id.as_str();
        let (held, _) = self.credential_held(user, target).await?;
        let mut changed = held
            && self
                .delete_credential(user, &target.kind, &target.id)
                .await?;
        if target.kind == MFA_DEVICE && is_virtual_mfa(&target.id) {
            // The device outlives its deactivation; a retry after a failed delete finishes it.
            changed |= self.delete_virtual_mfa(&target.id, user).await?;
        }
        Ok(if changed {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    /// Deletes one credential; false when IAM says it no longer exists.
    async fn delete_credential(
        &self,
        user: &str,
        kind: &str,
        id: &str,
    ) -> Result<bool, ConnectorError> {
        let (client, _) = self.client().await?;
        Ok(match kind {
            CONSOLE_PASSWORD => self
                .absent(
                    "DeleteLoginProfile",
                    user,
                    client.delete_login_profile().user_name(user).send().await,
                )
                .await?
                .is_some(),
            ACCESS_KEY => self
                .absent(
                    "DeleteAccessKey",
                    user,
                    client
                        .delete_access_key()
                        .user_name(user)
                        .access_key_id(id)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
            SIGNING_CERTIFICATE => self
                .absent(
                    "DeleteSigningCertificate",
                    user,
                    client
                        .delete_signing_certificate()
                        .user_name(user)
                        .certificate_id(id)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
            SSH_PUBLIC_KEY => self
                .absent(
                    "DeleteSSHPublicKey",
                    user,
                    client
                        .delete_ssh_public_key()
                        .user_name(user)
                        .ssh_public_key_id(id)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
            SERVICE_CREDENTIAL => self
                .absent(
                    "DeleteServiceSpecificCredential",
                    user,
                    client
                        .delete_service_specific_credential()
                        .user_name(user)
                        .service_specific_credential_id(id)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
            _ => self
                .absent(
                    "DeactivateMFADevice",
                    user,
                    client
                        .deactivate_mfa_device()
                        .user_name(user)
                        .serial_number(id)
                        .send()
                        .await,
                )
                .await?
                .is_some(),
        })
    }

    async fn delete_virtual_mfa(&self, serial: &str, user: &str) -> Result<bool, ConnectorError> {
        let (client, _) = self.client().await?;
        Ok(self
            .absent(
                "DeleteVirtualMFADevice",
                user,
                client
                    .delete_virtual_mfa_device()
                    .serial_number(serial)
                    .send()
                    .await,
            )
            .await?
            .is_some())
    }

    /// Removes what `DeleteUser` requires gone, in the documented order, then the user.
    async fn delete(&self, user: &str) -> Result<Applied, ConnectorError> {
        if self.settings.disable_only {
            return Err(ConnectorError::Unsupported(format!(
                "delete IAM users: systems.{}.connection.mode is \"disable_only\"",
                self.system
            )));
        }
        let Some(state) = self.read_user(user).await? else {
            return Ok(Applied::AlreadyDone);
        };
        let user = state.user_name.as_str();
        if state.login_profile {
            self.delete_credential(user, CONSOLE_PASSWORD, LOGIN_PROFILE_ID)
                .await?;
        }
        for (id, _) in &state.access_keys {
            self.delete_credential(user, ACCESS_KEY, id).await?;
        }
        for (id, _) in &state.signing_certificates {
            self.delete_credential(user, SIGNING_CERTIFICATE, id)
                .await?;
        }
        for (id, _) in &state.ssh_public_keys {
            self.delete_credential(user, SSH_PUBLIC_KEY, id).await?;
        }
        for (id, _, _) in &state.service_credentials {
            self.delete_credential(user, SERVICE_CREDENTIAL, id).await?;
        }
        for serial in &state.mfa_devices {
            self.delete_credential(user, MFA_DEVICE, serial).await?;
            if is_virtual_mfa(serial) {
                self.delete_virtual_mfa(serial, user).await?;
            }
        }
        let (client, _) = self.client().await?;
        for name in &state.inline_policies {
            self.absent(
                "DeleteUserPolicy",
                user,
                client
                    .delete_user_policy()
                    .user_name(user)
                    .policy_name(name)
                    .send()
                    .await,
            )
            .await?;
        }
        for (arn, _) in &state.managed_policies {
            self.absent(
                "DetachUserPolicy",
                user,
                client
                    .detach_user_policy()
                    .user_name(user)
                    .policy_arn(arn)
                    .send()
                    .await,
            )
            .await?;
        }
        for (_, name) in &state.groups {
            self.absent(
                "RemoveUserFromGroup",
                user,
                client
                    .remove_user_from_group()
                    .user_name(user)
                    .group_name(name)
                    .send()
                    .await,
            )
            .await?;
        }
        let deleted = self
            .absent(
                "DeleteUser",
                user,
                client.delete_user().user_name(user).send().await,
            )
            .await?;
        Ok(if deleted.is_some() {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    async fn evidence(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let user = task.account.id.as_str();
        let (client, _) = self.client().await?;
        let exists = self
            .absent(
                "GetUser",
                user,
                client.get_user().user_name(user).send().await,
            )
            .await?
            .is_some();
        if !exists {
            return Ok(Evidence {
                verified: true,
                observed: json!({"GetUser": {"UserName": user, "error": "NoSuchEntity"}}),
            });
        }
        match task.action {
            Action::Disable => {
                let profile = self
                    .absent(
                        "GetLoginProfile",
                        user,
                        client.get_login_profile().user_name(user).send().await,
                    )
                    .await?
                    .is_some();
                let keys: Option<Vec<aws_sdk_iam::types::AccessKeyMetadata>> = self
                    .absent(
                        "ListAccessKeys",
                        user,
                        list_all!(client.list_access_keys().user_name(user)),
                    )
                    .await?;
                let keys: Vec<Value> = keys
                    .iter()
                    .flatten()
                    .map(|k| {
                        json!({
                            "AccessKeyId": k.access_key_id(),
                            "Status": k.status().map(StatusType::as_str),
                        })
                    })
                    .collect();
                let all_inactive = keys.iter().all(|k| k["Status"] == "Inactive");
                Ok(Evidence {
                    verified: !profile && all_inactive,
                    observed: json!({
                        "GetLoginProfile": if profile { "present" } else { "NoSuchEntity" },
                        "ListAccessKeys": keys,
                    }),
                })
            }
            Action::RemoveEntitlement => {
                let target = self.target(task, &[GROUP, MANAGED_POLICY, INLINE_POLICY])?;
                let held = self.entitlement_held(user, target).await?;
                let request = match target.kind.as_str() {
                    GROUP => "ListGroupsForUser",
                    MANAGED_POLICY => "ListAttachedUserPolicies",
                    _ => "ListUserPolicies",
                };
                Ok(Evidence {
                    verified: !held,
                    observed: json!({
                        "request": request,
                        "user": user,
                        "entitlement": {"kind": target.kind, "id": target.id, "name": target.name},
                        "held": held,
                    }),
                })
            }
            Action::RemoveCredential => {
                let target = self.target(
                    task,
                    &[
                        CONSOLE_PASSWORD,
                        ACCESS_KEY,
                        SIGNING_CERTIFICATE,
                        SSH_PUBLIC_KEY,
                        SERVICE_CREDENTIAL,
                        MFA_DEVICE,
                    ],
                )?;
                let (held, seen) = self.credential_held(user, target).await?;
                Ok(Evidence {
                    verified: !held,
                    observed: json!({
                        "user": user,
                        "credential": {"kind": target.kind, "id": target.id},
                        "read": seen,
                        "present": held,
                    }),
                })
            }
            Action::Delete => Ok(Evidence {
                verified: false,
                observed: json!({"GetUser": {"UserName": user, "found": true}}),
            }),
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the aws_iam connector has no such operation)",
                other.as_str().replace('_', " ")
            ))),
        }
    }

    /// The most recent use of the user's password or any of its access keys.
    async fn last_activity(
        &self,
        client: &Client,
        user: &aws_sdk_iam::types::User,
    ) -> Result<Option<(Option<DateTime<Utc>>, bool)>, ConnectorError> {
        let name = user.user_name();
        let mut last = time(user.password_last_used());
        let keys: Option<Vec<aws_sdk_iam::types::AccessKeyMetadata>> = self
            .absent(
                "ListAccessKeys",
                name,
                list_all!(client.list_access_keys().user_name(name)),
            )
            .await?;
        let Some(keys) = keys else {
            return Ok(None);
        };
        let mut active = keys.iter().any(|k| k.status() == Some(&StatusType::Active));
        for key in &keys {
            let Some(id) = key.access_key_id() else {
                continue;
            };
            let used = self
                .absent(
                    "GetAccessKeyLastUsed",
                    name,
                    client
                        .get_access_key_last_used()
                        .access_key_id(id)
                        .send()
                        .await,
                )
                .await?;
            let used = used
                .as_ref()
                .and_then(|out| out.access_key_last_used())
                .and_then(|u| time(u.last_used_date()));
            last = last.max(used);
        }
        if !active {
            active = self
                .absent(
                    "GetLoginProfile",
                    name,
                    client.get_login_profile().user_name(name).send().await,
                )
                .await?
                .is_some();
        }
        Ok(Some((last, active)))
    }
}

#[async_trait]
impl Connector for AwsIamConnector {
    fn supports(&self) -> &[StageKind] {
        if self.settings.disable_only {
            SUPPORTS_DISABLE_ONLY
        } else {
            SUPPORTS_DELETE
        }
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("aws_iam.discover", system = %self.system, person_id = %person.person_id);
        async {
            let Some(name) = person_username(person, self.match_by) else {
                return Ok(Vec::new());
            };
            if !valid_user_name(name) {
                return Ok(Vec::new());
            }
            if self.settings.is_protected(name) {
                tracing::warn!(user = %name, "IAM user matches protected_users; not listed");
                return Ok(Vec::new());
            }
            Ok(self
                .read_user(name)
                .await?
                .map(|state| self.account(&state))
                .into_iter()
                .collect())
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("aws_iam.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            self.guard(task)?;
            let user = task.account.id.as_str();
            let applied = match task.action {
                Action::Disable => self.disable(user).await,
                Action::RemoveEntitlement => self.remove_entitlement(task).await,
                Action::RemoveCredential => self.remove_credential(task).await,
                Action::Delete => self.delete(user).await,
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (the aws_iam connector has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "aws_iam apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("aws_iam.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            self.guard(task)?;
            self.evidence(task).await
        }
        .instrument(span)
        .await
    }

    /// `ListUsers` (paginated), each with `max(PasswordLastUsed, GetAccessKeyLastUsed of
    /// every key)`; protected users are left out.
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let (client, _) = self.client().await?;
        let users: Vec<aws_sdk_iam::types::User> = self
            .absent("ListUsers", "*", list_all!(client.list_users()))
            .await?
            .unwrap_or_default();
        let mut accounts = Vec::new();
        for user in &users {
            let name = user.user_name();
            if self.settings.is_protected(name) {
                continue;
            }
            let Some((last_activity, active)) = self.last_activity(client, user).await? else {
                continue;
            };
            accounts.push(Account {
                system: self.system.clone(),
                id: name.to_string(),
                username: name.to_string(),
                email: None,
                active,
                entitlements: Vec::new(),
                credentials: Vec::new(),
                last_activity,
            });
        }
        Ok(accounts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(connection: Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("aws_iam", connection, secret)
    }

    #[test]
    fn settings_are_checked() {
        let ok = config(json!({}), None);
        let settings = Settings::parse("aws", &ok).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(settings.region, "us-east-1");
        assert!(!settings.disable_only);
        assert_eq!(settings.secret, None);
        let problems = AwsIamConnector::check_config(
            "aws",
            &config(
                json!({"mode": "nuke", "protected_users": "svc-*", "endpoint_url": "ftp://x", "zone": 1}),
                Some(""),
            ),
        )
        .join("\n");
        for needle in [
            "systems.aws.connection.zone is not a aws_iam setting",
            "systems.aws.connection.mode = \"nuke\" must be one of \"delete\", \"disable_only\"",
            "systems.aws.connection.protected_users = \"svc-*\" must be a list",
            "systems.aws.connection.endpoint_url = \"ftp://x\"",
            "systems.aws.secret is empty",
        ] {
            assert!(problems.contains(needle), "{needle} missing in {problems}");
        }
    }

    #[test]
    fn globs_match_case_insensitively() {
        assert!(glob(b"svc-*", b"svc-backup"));
        assert!(glob(b"SVC-*", b"svc-backup"));
        assert!(glob(b"t?rraform", b"terraform"));
        assert!(glob(b"*", b""));
        assert!(!glob(b"svc-*", b"ada"));
        assert!(!glob(b"ada", b"adam"));
        assert!(glob(b"*-ci-*", b"deploy-ci-prod"));
    }

    #[test]
    fn user_names_are_checked_before_any_call() {
        assert!(valid_user_name("ada.lovelace+ops@example.com"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a b"));
        assert!(!valid_user_name(&"x".repeat(65)));
    }

    #[test]
    fn disable_only_has_no_delete_stage() {
        let secrets: Arc<dyn SecretSource> =
            Arc::new(deprov_core::testing::MemorySecrets::default());
        let connector = AwsIamConnector::from_config(
            "aws",
            &config(json!({"mode": "disable_only"}), None),
            secrets,
        )
        .unwrap_or_else(|err| panic!("{err}"));
        assert!(!connector.supports().contains(&StageKind::Delete));
        assert!(connector.supports().contains(&StageKind::Credentials));
    }
}
