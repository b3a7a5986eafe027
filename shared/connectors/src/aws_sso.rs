//! AWS IAM Identity Center connector: a person's account is a user of the instance's
//! identity store (id the UserId).
//!
//! Entitlements are the user's account assignments (kind `account_assignment`, id
//! `<account_id>/<permission_set_arn>`) and group memberships (kind `group`, id the
//! GroupId).
//! - discover: identitystore `GetUserId` (unique attribute `userName`) and `DescribeUser`; sso-admin
//!   `ListPermissionSets` × `ListAccountsForProvisionedPermissionSet` ×
//!   `ListAccountAssignments` kept to `PrincipalType = USER` and this user; identitystore
//!   `ListGroupMembershipsForMember` (every list paginated);
//! - remove entitlement: `DeleteAccountAssignment`, then `DescribeAccountAssignmentDeletionStatus`
//!   polled (bounded, with backoff) until `SUCCEEDED`; `DeleteGroupMembership`;
//! - delete: `DeleteUser`;
//! - disable (only with `deny_policy = true`): the documented way to cut off a user's
//!   access, live role sessions included — an inline-policy statement on every permission
//!   set of the instance that denies everything to the user's `identitystore:userId`
//!   (`PutInlinePolicyToPermissionSet`, then `ProvisionPermissionSet` to every account it
//!   is provisioned to). One statement, `DeprovDeniedUsers`, lists every denied user; the
//!   rest of each inline policy is left as it was. A restore (rehire) takes the user out of
//!   it again. <https://docs.aws.amazon.com/singlesignon/latest/userguide/useraccess.html#revoke-user-permissions>
//!
//! Role sessions already issued from an assignment are not ended by removing it: they
//! last until they expire (documented AWS behaviour); the evidence says so.
//!
//! Every change reads first; `ResourceNotFoundException` on the thing removed (or on the
//! user) is `AlreadyDone`.
//!
//! Policy settings (`[systems.<name>]`, `kind = "aws_sso"`): `secret` (optional: fields
//! `access_key_id`, `secret_access_key` and optionally `session_token`; without it the
//! default credential chain is used), and `connection` keys `instance_arn` and
//! `identity_store_id` (required), `endpoint_url` (one endpoint for both APIs, for tests),
//! `region` ("us-east-1": the instance's region), `timeout_secs` (30), `deny_policy`
//! (false: see disable).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_ssoadmin::config::http::HttpResponse;
use aws_sdk_ssoadmin::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ssoadmin::types::{PrincipalType, StatusValues, TargetType};
use deprov_core::plan::{Action, StageKind, Task};
use deprov_core::policy::{MatchBy, SystemConfig};
use deprov_core::ports::SecretSource;
use deprov_core::{
    Account, Applied, Connector, ConnectorError, Entitlement, Evidence, PersonQuery,
};
use serde_json::json;
use tokio::sync::OnceCell;
use tracing::Instrument;

use crate::aws_sdk::{self, list_all, ACCESS_KEY_FIELD, SECRET_KEY_FIELD};
use crate::http;

const KEYS: &[&str] = &[
    "instance_arn",
    "identity_store_id",
    "endpoint_url",
    "region",
    "timeout_secs",
    "deny_policy",
];
const DEFAULT_REGION: &str = "us-east-1";

const ASSIGNMENT: &str = "account_assignment";
const GROUP: &str = "group";

const SUPPORTS: &[StageKind] = &[StageKind::Entitlements, StageKind::Delete];
/// With `deny_policy = true`: the deny statement disables, and a restore lifts it.
const SUPPORTS_WITH_DENY: &[StageKind] = &[
    StageKind::Disable,
    StageKind::Entitlements,
    StageKind::Delete,
    StageKind::Restore,
];

/// The `Sid` of the inline-policy statement that lists the users deprov denies.
const DENY_SID: &str = "DeprovDeniedUsers";
/// The condition key IAM Identity Center sets on its role sessions.
const USER_ID_KEY: &str = "identitystore:userId";

/// How often, and how long apart, a deletion's status is read before giving up for now.
const STATUS_POLLS: u32 = 8;
const FIRST_POLL: Duration = Duration::from_millis(250);
const MAX_POLL: Duration = Duration::from_secs(4);

const SESSIONS_NOTE: &str = "Role sessions already issued through IAM Identity Center are not ended by removing an assignment or the user: they last until they expire (the permission set's session duration). See https://docs.aws.amazon.com/singlesignon/latest/userguide/howtosessionduration.html";

#[derive(Clone, Debug, PartialEq)]
struct Settings {
    instance_arn: String,
    identity_store_id: String,
    endpoint_url: Option<String>,
    region: String,
    timeout: Duration,
    secret: Option<String>,
    deny_policy: bool,
}

impl Settings {
    fn parse(system: &str, config: &SystemConfig) -> Result<Settings, Vec<String>> {
        let mut s = http::Settings::new(system, "aws_sso", config, KEYS);
        let instance_arn = s.text(
            "instance_arn",
            None,
            "the IAM Identity Center instance ARN, e.g. \"arn:aws:sso:::instance/ssoins-1234567890abcdef\" (aws sso-admin list-instances)",
        );
        if let Some(arn) = &instance_arn {
            if !arn.starts_with("arn:") || !arn.contains(":instance/") {
                s.problems.push(format!(
                    "{} = \"{arn}\" must be an instance ARN, e.g. \"arn:aws:sso:::instance/ssoins-1234567890abcdef\"",
                    s.key("instance_arn")
                ));
            }
        }
        let identity_store_id = s.text(
            "identity_store_id",
            None,
            "the instance's identity store id, e.g. \"d-1234567890\" (aws sso-admin list-instances)",
        );
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
                "the AWS region of the Identity Center instance, e.g. \"eu-west-1\"",
            )
            .unwrap_or_else(|| DEFAULT_REGION.into());
        let timeout = s.number("timeout_secs", 30, 600);
        let deny_policy = s.flag("deny_policy");
        let secret = match config.secret.as_deref() {
            None => None,
            Some(name) if !name.trim().is_empty() => Some(name.to_string()),
            Some(_) => {
                s.problems.push(format!(
                    "systems.{system}.secret is empty: name the secret whose fields \"{ACCESS_KEY_FIELD}\" and \"{SECRET_KEY_FIELD}\" hold an AWS access key, or leave it out to use the default credential chain (e.g. the function's role)"
                ));
                None
            }
        };
        match (instance_arn, identity_store_id) {
            (Some(instance_arn), Some(identity_store_id)) if s.problems.is_empty() => {
                Ok(Settings {
                    instance_arn,
                    identity_store_id,
                    endpoint_url,
                    region,
                    timeout: Duration::from_secs(timeout),
                    secret,
                    deny_policy,
                })
            }
            _ => Err(s.problems),
        }
    }
}

fn statements(policy: &serde_json::Value) -> Vec<serde_json::Value> {
    match &policy["Statement"] {
        serde_json::Value::Array(list) => list.clone(),
        serde_json::Value::Object(_) => vec![policy["Statement"].clone()],
        _ => Vec::new(),
    }
}

/// The policy with `user_id` added to (or removed from) the `DeprovDeniedUsers` deny
/// statement; the statement goes when it lists nobody, every other statement stays.
fn with_denied_user(policy: &mut serde_json::Value, user_id: &str, deny: bool) {
    let mut list = statements(policy);
    let mut ids: Vec<String> = list
        .iter()
        .filter(|statement| statement["Sid"] == DENY_SID)
        .flat_map(
            |statement| match &statement["Condition"]["StringEquals"][USER_ID_KEY] {
                serde_json::Value::String(one) => vec![one.clone()],
                serde_json::Value::Array(ids) => ids
                    .iter()
                    .filter_map(|id| id.as_str().map(str::to_string))
                    .collect(),
                _ => Vec::new(),
            },
        )
        .collect();
    list.retain(|statement| statement["Sid"] != DENY_SID);
    ids.retain(|id| id != user_id);
    if deny {
        ids.push(user_id.to_string());
    }
    ids.sort();
    if !ids.is_empty() {
        list.push(json!({
            "Sid": DENY_SID,
            "Effect": "Deny",
            "Action": "*",
            "Resource": "*",
            "Condition": {"StringEquals": {USER_ID_KEY: ids}},
        }));
    }
    policy["Version"] = json!("2012-10-17");
    policy["Statement"] = json!(list);
}

/// The name the person goes by: the event's username, else the email (Identity Center
/// user names are often the email address).
fn person_username(person: &PersonQuery, match_by: MatchBy) -> Option<&str> {
    let by_username = match match_by {
        MatchBy::Username => person.username.as_deref().filter(|u| !u.is_empty()),
        MatchBy::Email => None,
    };
    by_username.or(Some(person.email.as_str()).filter(|e| !e.is_empty()))
}

/// `<account_id>/<permission_set_arn>` split apart.
fn split_assignment(id: &str) -> Option<(&str, &str)> {
    let (account, arn) = id.split_once('/')?;
    (account.len() == 12 && account.chars().all(|c| c.is_ascii_digit()) && arn.starts_with("arn:"))
        .then_some((account, arn))
}

fn assignment_id(account: &str, permission_set_arn: &str) -> String {
    format!("{account}/{permission_set_arn}")
}

const IDENTITY_CENTER: aws_sdk::Service = aws_sdk::Service {
    name: "IAM Identity Center",
    not_found: &["ResourceNotFoundException", "ResourceNotFound"],
    server_failure: &[
        "InternalServerException",
        "InternalFailure",
        "ServiceUnavailable",
    ],
    conflict: &["ConflictException"],
};

type Clients = (
    aws_sdk_identitystore::Client,
    aws_sdk_ssoadmin::Client,
    Vec<String>,
);

pub struct AwsSsoConnector {
    system: String,
    settings: Settings,
    match_by: MatchBy,
    secrets: Arc<dyn SecretSource>,
    clients: OnceCell<Clients>,
}

impl std::fmt::Debug for AwsSsoConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsSsoConnector")
            .field("system", &self.system)
            .field("instance_arn", &self.settings.instance_arn)
            .field("endpoint_url", &self.settings.endpoint_url)
            .field("secret", &self.settings.secret)
            .finish_non_exhaustive()
    }
}

impl AwsSsoConnector {
    /// Builds the connector; the secret is read and the clients made at first use.
    pub fn from_config(
        system: &str,
        config: &SystemConfig,
        secrets: Arc<dyn SecretSource>,
    ) -> Result<Self, ConnectorError> {
        let settings = Settings::parse(system, config)
            .map_err(|problems| ConnectorError::InvalidConfig(problems.join("; ")))?;
        Ok(AwsSsoConnector {
            system: system.to_string(),
            settings,
            match_by: config.match_by,
            secrets,
            clients: OnceCell::new(),
        })
    }

    /// Problems in `config.connection` / `config.secret`, each phrased as what to fix.
    pub fn check_config(system: &str, config: &SystemConfig) -> Vec<String> {
        Settings::parse(system, config).err().unwrap_or_default()
    }

    fn credential_source(&self) -> String {
        aws_sdk::credential_source(self.settings.secret.as_deref())
    }

    /// The identity store and sso-admin clients and the secret values they sign with.
    async fn clients(&self) -> Result<&Clients, ConnectorError> {
        self.clients
            .get_or_try_init(|| async {
                let (config, values) = aws_sdk::load(
                    aws_sdk::Target {
                        system: &self.system,
                        region: &self.settings.region,
                        endpoint_url: self.settings.endpoint_url.as_deref(),
                        timeout: self.settings.timeout,
                        secret: self.settings.secret.as_deref(),
                        key_kind: "an AWS access key",
                    },
                    &self.secrets,
                )
                .await?;
                Ok((
                    aws_sdk_identitystore::Client::new(&config),
                    aws_sdk_ssoadmin::Client::new(&config),
                    values,
                ))
            })
            .await
    }

    /// `Ok(None)` when the service says `ResourceNotFoundException`.
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
            .clients
            .get()
            .map(|(_, _, values)| values.as_slice())
            .unwrap_or_default();
        let call = aws_sdk::Call {
            system: &self.system,
            request,
            user,
            credential_source: self.credential_source(),
            permission: request.to_string(),
            scope: format!(
                "on instance {} and identity store {}",
                self.settings.instance_arn, self.settings.identity_store_id
            ),
            secrets,
        };
        aws_sdk::failure(&IDENTITY_CENTER, &call, err).map_or(Ok(None), Err)
    }

    /// The user's id, user name and primary (or first) email; `None` when absent.
    async fn find_user(
        &self,
        user_name: &str,
    ) -> Result<Option<(String, String, Option<String>)>, ConnectorError> {
        let (store, _, _) = self.clients().await?;
        let store_id = self.settings.identity_store_id.as_str();
        let unique = aws_sdk_identitystore::types::UniqueAttribute::builder()
            .attribute_path("userName")
            .attribute_value(user_name.to_string().into())
            .build()
            .map_err(|err| {
                ConnectorError::Permanent(format!("GetUserId for \"{user_name}\": {err}"))
            })?;
        let Some(found) = self
            .absent(
                "GetUserId",
                user_name,
                store
                    .get_user_id()
                    .identity_store_id(store_id)
                    .alternate_identifier(
                        aws_sdk_identitystore::types::AlternateIdentifier::UniqueAttribute(unique),
                    )
                    .send()
                    .await,
            )
            .await?
        else {
            return Ok(None);
        };
        let user_id = found.user_id().to_string();
        let Some(user) = self
            .absent(
                "DescribeUser",
                &user_id,
                store
                    .describe_user()
                    .identity_store_id(store_id)
                    .user_id(&user_id)
                    .send()
                    .await,
            )
            .await?
        else {
            return Ok(None);
        };
        let email = user
            .emails()
            .iter()
            .find(|e| e.primary())
            .or_else(|| user.emails().first())
            .and_then(|e| e.value().map(str::to_string));
        let name = user.user_name().unwrap_or(user_name).to_string();
        Ok(Some((user_id, name, email)))
    }

    /// Every (account id, permission set ARN) the user is assigned directly.
    async fn assignments(&self, user_id: &str) -> Result<Vec<(String, String)>, ConnectorError> {
        let (_, admin, _) = self.clients().await?;
        let instance = self.settings.instance_arn.as_str();
        let sets: Vec<String> = self
            .absent(
                "ListPermissionSets",
                user_id,
                list_all!(admin.list_permission_sets().instance_arn(instance)),
            )
            .await?
            .unwrap_or_default();
        let mut out = Vec::new();
        for set in &sets {
            let accounts: Vec<String> = self
                .absent(
                    "ListAccountsForProvisionedPermissionSet",
                    user_id,
                    list_all!(admin
                        .list_accounts_for_provisioned_permission_set()
                        .instance_arn(instance)
                        .permission_set_arn(set)),
                )
                .await?
                .unwrap_or_default();
            for account in &accounts {
                if self.assigned(user_id, account, set).await? {
                    out.push((account.clone(), set.clone()));
                }
            }
        }
        Ok(out)
    }

    /// Whether `ListAccountAssignments` of (account, permission set) names the user.
    async fn assigned(
        &self,
        user_id: &str,
        account: &str,
        permission_set_arn: &str,
    ) -> Result<bool, ConnectorError> {
        let (_, admin, _) = self.clients().await?;
        let assignments: Vec<aws_sdk_ssoadmin::types::AccountAssignment> = self
            .absent(
                "ListAccountAssignments",
                user_id,
                list_all!(admin
                    .list_account_assignments()
                    .instance_arn(&self.settings.instance_arn)
                    .account_id(account)
                    .permission_set_arn(permission_set_arn)),
            )
            .await?
            .unwrap_or_default();
        Ok(assignments.iter().any(|a| {
            a.principal_type() == Some(&PrincipalType::User) && a.principal_id() == Some(user_id)
        }))
    }

    async fn permission_set_name(
        &self,
        user_id: &str,
        arn: &str,
    ) -> Result<String, ConnectorError> {
        let (_, admin, _) = self.clients().await?;
        let name = self
            .absent(
                "DescribePermissionSet",
                user_id,
                admin
                    .describe_permission_set()
                    .instance_arn(&self.settings.instance_arn)
                    .permission_set_arn(arn)
                    .send()
                    .await,
            )
            .await?
            .and_then(|out| out.permission_set)
            .and_then(|set| set.name)
            .unwrap_or_else(|| arn.to_string());
        Ok(name)
    }

    /// The user's group memberships: (membership id, group id).
    async fn memberships(&self, user_id: &str) -> Result<Vec<(String, String)>, ConnectorError> {
        let (store, _, _) = self.clients().await?;
        let member = aws_sdk_identitystore::types::MemberId::UserId(user_id.to_string());
        let memberships: Vec<aws_sdk_identitystore::types::GroupMembership> = self
            .absent(
                "ListGroupMembershipsForMember",
                user_id,
                list_all!(store
                    .list_group_memberships_for_member()
                    .identity_store_id(&self.settings.identity_store_id)
                    .member_id(member)),
            )
            .await?
            .unwrap_or_default();
        Ok(memberships
            .iter()
            .filter_map(|m| Some((m.membership_id().to_string(), m.group_id()?.to_string())))
            .collect())
    }

    async fn group_name(&self, user_id: &str, group_id: &str) -> Result<String, ConnectorError> {
        let (store, _, _) = self.clients().await?;
        Ok(self
            .absent(
                "DescribeGroup",
                user_id,
                store
                    .describe_group()
                    .identity_store_id(&self.settings.identity_store_id)
                    .group_id(group_id)
                    .send()
                    .await,
            )
            .await?
            .and_then(|out| out.display_name)
            .unwrap_or_else(|| group_id.to_string()))
    }

    async fn user_exists(&self, user_id: &str) -> Result<bool, ConnectorError> {
        let (store, _, _) = self.clients().await?;
        Ok(self
            .absent(
                "DescribeUser",
                user_id,
                store
                    .describe_user()
                    .identity_store_id(&self.settings.identity_store_id)
                    .user_id(user_id)
                    .send()
                    .await,
            )
            .await?
            .is_some())
    }

    fn target<'t>(&self, task: &'t Task) -> Result<&'t deprov_core::plan::Target, ConnectorError> {
        let target = task.target.as_ref().ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} ({}) names no target",
                task.task_id,
                task.action.as_str()
            ))
        })?;
        match target.kind.as_str() {
            ASSIGNMENT | GROUP => Ok(target),
            other => Err(ConnectorError::Unsupported(format!(
                "{} a \"{other}\" (the aws_sso connector knows {ASSIGNMENT}, {GROUP})",
                task.action.as_str().replace('_', " "),
            ))),
        }
    }

    fn assignment_parts<'t>(
        &self,
        task: &Task,
        id: &'t str,
    ) -> Result<(&'t str, &'t str), ConnectorError> {
        split_assignment(id).ok_or_else(|| {
            ConnectorError::Permanent(format!(
                "task {} names account assignment \"{id}\", which is not \"<12-digit account id>/<permission set ARN>\"",
                task.task_id
            ))
        })
    }

    async fn remove_assignment(
        &self,
        task: &Task,
        user_id: &str,
        id: &str,
    ) -> Result<Applied, ConnectorError> {
        let (account, set) = self.assignment_parts(task, id)?;
        if !self.assigned(user_id, account, set).await? {
            return Ok(Applied::AlreadyDone);
        }
        let (_, admin, _) = self.clients().await?;
        let instance = self.settings.instance_arn.as_str();
        let Some(out) = self
            .absent(
                "DeleteAccountAssignment",
                user_id,
                admin
                    .delete_account_assignment()
                    .instance_arn(instance)
                    .target_id(account)
                    .target_type(TargetType::AwsAccount)
                    .permission_set_arn(set)
                    .principal_type(PrincipalType::User)
                    .principal_id(user_id)
                    .send()
                    .await,
            )
            .await?
        else {
            return Ok(Applied::AlreadyDone);
        };
        let mut status = out.account_assignment_deletion_status;
        let mut delay = FIRST_POLL;
        for _ in 0..STATUS_POLLS {
            let Some(current) = &status else {
                break;
            };
            match current.status() {
                Some(StatusValues::Succeeded) => return Ok(Applied::Changed),
                Some(StatusValues::Failed) => {
                    return Err(ConnectorError::Permanent(format!(
                        "system \"{}\": IAM Identity Center failed to delete assignment of {set} in account {account} for user \"{user_id}\": {}",
                        self.system,
                        current.failure_reason().unwrap_or("no reason given")
                    )))
                }
                _ => {}
            }
            let Some(request_id) = current.request_id().map(str::to_string) else {
                break;
            };
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(MAX_POLL);
            status = self
                .absent(
                    "DescribeAccountAssignmentDeletionStatus",
                    user_id,
                    admin
                        .describe_account_assignment_deletion_status()
                        .instance_arn(instance)
                        .account_assignment_deletion_request_id(request_id)
                        .send()
                        .await,
                )
                .await?
                .and_then(|out| out.account_assignment_deletion_status);
        }
        // No status to read, or still in progress: the assignment list decides.
        if self.assigned(user_id, account, set).await? {
            Err(ConnectorError::Transient(format!(
                "system \"{}\": deleting the assignment of {set} in account {account} for user \"{user_id}\" is still in progress; retry",
                self.system
            )))
        } else {
            Ok(Applied::Changed)
        }
    }

    async fn remove_group(&self, user_id: &str, group_id: &str) -> Result<Applied, ConnectorError> {
        let memberships = self.memberships(user_id).await?;
        let Some((membership, _)) = memberships.iter().find(|(_, g)| g == group_id) else {
            return Ok(Applied::AlreadyDone);
        };
        let (store, _, _) = self.clients().await?;
        let removed = self
            .absent(
                "DeleteGroupMembership",
                user_id,
                store
                    .delete_group_membership()
                    .identity_store_id(&self.settings.identity_store_id)
                    .membership_id(membership)
                    .send()
                    .await,
            )
            .await?;
        Ok(if removed.is_some() {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    async fn delete(&self, user_id: &str) -> Result<Applied, ConnectorError> {
        if !self.user_exists(user_id).await? {
            return Ok(Applied::AlreadyDone);
        }
        let (store, _, _) = self.clients().await?;
        let deleted = self
            .absent(
                "DeleteUser",
                user_id,
                store
                    .delete_user()
                    .identity_store_id(&self.settings.identity_store_id)
                    .user_id(user_id)
                    .send()
                    .await,
            )
            .await?;
        Ok(if deleted.is_some() {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    /// Every permission set ARN of the instance.
    async fn permission_sets(&self, user_id: &str) -> Result<Vec<String>, ConnectorError> {
        let (_, admin, _) = self.clients().await?;
        let listed: Result<Vec<String>, _> = list_all!(admin
            .list_permission_sets()
            .instance_arn(&self.settings.instance_arn));
        Ok(self
            .absent("ListPermissionSets", user_id, listed)
            .await?
            .unwrap_or_default())
    }

    /// The permission set's inline policy as JSON (`{}`-less sets read as no statements).
    async fn inline_policy(
        &self,
        user_id: &str,
        set: &str,
    ) -> Result<serde_json::Value, ConnectorError> {
        let (_, admin, _) = self.clients().await?;
        let read = self
            .absent(
                "GetInlinePolicyForPermissionSet",
                user_id,
                admin
                    .get_inline_policy_for_permission_set()
                    .instance_arn(&self.settings.instance_arn)
                    .permission_set_arn(set)
                    .send()
                    .await,
            )
            .await?;
        let text = read
            .and_then(|out| out.inline_policy().map(str::to_string))
            .unwrap_or_default();
        if text.trim().is_empty() {
            return Ok(json!({"Version": "2012-10-17", "Statement": []}));
        }
        serde_json::from_str(&text).map_err(|err| {
            ConnectorError::Permanent(format!(
                "system \"{}\": the inline policy of permission set {set} is not JSON ({err}); fix it in IAM Identity Center",
                self.system
            ))
        })
    }

    /// Whether the policy's deny statement lists the user.
    fn denies(policy: &serde_json::Value, user_id: &str) -> bool {
        statements(policy).iter().any(|statement| {
            statement["Sid"] == DENY_SID
                && match &statement["Condition"]["StringEquals"][USER_ID_KEY] {
                    serde_json::Value::String(one) => one == user_id,
                    serde_json::Value::Array(ids) => ids.iter().any(|id| id == user_id),
                    _ => false,
                }
        })
    }

    /// Adds the user to (`deny`) or takes them out of the deny statement of every
    /// permission set, and provisions each changed set to its accounts.
    async fn set_denied(&self, user_id: &str, deny: bool) -> Result<Applied, ConnectorError> {
        if !self.user_exists(user_id).await? {
            // A user that is gone signs in no more; deny statements are kept for users
            // that exist, so the inline policies do not fill up with the departed.
            return if deny {
                Ok(Applied::AlreadyDone)
            } else {
                Err(ConnectorError::NotFound(format!(
                    "system \"{}\": user {user_id} no longer exists, so there is nothing to enable",
                    self.system
                )))
            };
        }
        let (_, admin, _) = self.clients().await?;
        let mut changed = false;
        for set in self.permission_sets(user_id).await? {
            let mut policy = self.inline_policy(user_id, &set).await?;
            if Self::denies(&policy, user_id) == deny {
                continue;
            }
            with_denied_user(&mut policy, user_id, deny);
            let put = admin
                .put_inline_policy_to_permission_set()
                .instance_arn(&self.settings.instance_arn)
                .permission_set_arn(&set)
                .inline_policy(policy.to_string())
                .send()
                .await;
            self.absent("PutInlinePolicyToPermissionSet", user_id, put)
                .await?;
            // An inline policy reaches the accounts' roles only when provisioned.
            let provisioned = admin
                .provision_permission_set()
                .instance_arn(&self.settings.instance_arn)
                .permission_set_arn(&set)
                .target_type(aws_sdk_ssoadmin::types::ProvisionTargetType::AllProvisionedAccounts)
                .send()
                .await;
            self.absent("ProvisionPermissionSet", user_id, provisioned)
                .await?;
            changed = true;
        }
        Ok(if changed {
            Applied::Changed
        } else {
            Applied::AlreadyDone
        })
    }

    /// Reads every permission set's inline policy back: the user is denied (or no longer
    /// denied) in each.
    async fn deny_evidence(&self, user_id: &str, deny: bool) -> Result<Evidence, ConnectorError> {
        let mut read = Vec::new();
        let mut verified = true;
        for set in self.permission_sets(user_id).await? {
            let denied = Self::denies(&self.inline_policy(user_id, &set).await?, user_id);
            verified &= denied == deny;
            read.push(json!({"permission_set": set, "denies_user": denied}));
        }
        Ok(Evidence {
            verified,
            observed: json!({
                "request": "GetInlinePolicyForPermissionSet",
                "user": user_id,
                "statement": DENY_SID,
                "permission_sets": read,
                "note": if deny {
                    "Every permission set denies all actions to this identitystore:userId, live role sessions included, once provisioned."
                } else {
                    "No permission set denies this identitystore:userId any more."
                },
            }),
        })
    }

    async fn evidence(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let user_id = task.account.id.as_str();
        let exists = self.user_exists(user_id).await?;
        match task.action {
            Action::Disable if exists => return self.deny_evidence(user_id, true).await,
            Action::Enable if exists => return self.deny_evidence(user_id, false).await,
            _ => {}
        }
        if !exists {
            return Ok(Evidence {
                verified: task.action != Action::Enable,
                observed: json!({
                    "DescribeUser": {"UserId": user_id, "error": "ResourceNotFoundException"},
                    "note": SESSIONS_NOTE,
                }),
            });
        }
        match task.action {
            Action::RemoveEntitlement => {
                let target = self.target(task)?;
                let (request, held) = if target.kind == ASSIGNMENT {
                    let (account, set) = self.assignment_parts(task, &target.id)?;
                    (
                        "ListAccountAssignments",
                        self.assigned(user_id, account, set).await?,
                    )
                } else {
                    let held = self
                        .memberships(user_id)
                        .await?
                        .iter()
                        .any(|(_, g)| *g == target.id);
                    ("ListGroupMembershipsForMember", held)
                };
                Ok(Evidence {
                    verified: !held,
                    observed: json!({
                        "request": request,
                        "user": user_id,
                        "entitlement": {"kind": target.kind, "id": target.id, "name": target.name},
                        "held": held,
                        "note": SESSIONS_NOTE,
                    }),
                })
            }
            Action::Delete => Ok(Evidence {
                verified: false,
                observed: json!({"DescribeUser": {"UserId": user_id, "found": true}, "note": SESSIONS_NOTE}),
            }),
            other => Err(ConnectorError::Unsupported(format!(
                "verify {} (the aws_sso connector has no such operation)",
                other.as_str().replace('_', " ")
            ))),
        }
    }
}

#[async_trait]
impl Connector for AwsSsoConnector {
    fn supports(&self) -> &[StageKind] {
        if self.settings.deny_policy {
            SUPPORTS_WITH_DENY
        } else {
            SUPPORTS
        }
    }

    async fn discover(&self, person: &PersonQuery) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("aws_sso.discover", system = %self.system, person_id = %person.person_id);
        async {
            let Some(name) = person_username(person, self.match_by) else {
                return Ok(Vec::new());
            };
            let Some((user_id, user_name, email)) = self.find_user(name).await? else {
                return Ok(Vec::new());
            };
            let mut entitlements = Vec::new();
            for (account, set) in self.assignments(&user_id).await? {
                let set_name = self.permission_set_name(&user_id, &set).await?;
                entitlements.push(Entitlement {
                    id: assignment_id(&account, &set),
                    name: format!("{set_name} in account {account}"),
                    kind: ASSIGNMENT.into(),
                });
            }
            for (_, group) in self.memberships(&user_id).await? {
                let name = self.group_name(&user_id, &group).await?;
                entitlements.push(Entitlement {
                    id: group,
                    name,
                    kind: GROUP.into(),
                });
            }
            Ok(vec![Account {
                system: self.system.clone(),
                id: user_id,
                username: user_name,
                email,
                active: true,
                entitlements,
                credentials: Vec::new(),
                last_activity: None,
            }])
        }
        .instrument(span)
        .await
    }

    async fn apply(&self, task: &Task) -> Result<Applied, ConnectorError> {
        let span = tracing::debug_span!("aws_sso.apply", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        async {
            let user_id = task.account.id.as_str();
            let applied = match task.action {
                // A user that is gone holds nothing any more (assignments left behind for
                // a deleted principal grant nobody anything).
                Action::RemoveEntitlement if !self.user_exists(user_id).await? => {
                    Ok(Applied::AlreadyDone)
                }
                Action::RemoveEntitlement => {
                    let target = self.target(task)?;
                    if target.kind == ASSIGNMENT {
                        self.remove_assignment(task, user_id, &target.id).await
                    } else {
                        self.remove_group(user_id, &target.id).await
                    }
                }
                Action::Delete => self.delete(user_id).await,
                Action::Disable | Action::Enable if self.settings.deny_policy => {
                    self.set_denied(user_id, task.action == Action::Disable)
                        .await
                }
                other => Err(ConnectorError::Unsupported(format!(
                    "{} (the aws_sso connector has no such operation)",
                    other.as_str().replace('_', " ")
                ))),
            };
            tracing::debug!(outcome = ?applied.as_ref().map_err(ConnectorError::kind), "aws_sso apply done");
            applied
        }
        .instrument(span)
        .await
    }

    async fn verify(&self, task: &Task) -> Result<Evidence, ConnectorError> {
        let span = tracing::debug_span!("aws_sso.verify", system = %self.system, task_id = %task.task_id, action = task.action.as_str());
        self.evidence(task).instrument(span).await
    }

    /// Every user of the identity store (`ListUsers`, paginated), for orphan sweeps. The
    /// identity store keeps no sign-in time, so `last_activity` is unknown and inactivity
    /// sweeps find nobody here.
    async fn list_accounts(&self) -> Result<Vec<Account>, ConnectorError> {
        let span = tracing::debug_span!("aws_sso.list_accounts", system = %self.system);
        async {
            let (store, _, _) = self.clients().await?;
            let listed: Result<Vec<aws_sdk_identitystore::types::User>, _> = list_all!(store
                .list_users()
                .identity_store_id(&self.settings.identity_store_id));
            let users = self
                .absent("ListUsers", "*", listed)
                .await?
                .unwrap_or_default();
            Ok(users
                .iter()
                .map(|user| Account {
                    system: self.system.clone(),
                    id: user.user_id().to_string(),
                    username: user.user_name().unwrap_or_default().to_string(),
                    email: user
                        .emails()
                        .iter()
                        .find(|e| e.primary())
                        .or_else(|| user.emails().first())
                        .and_then(|e| e.value().map(str::to_string)),
                    active: true,
                    entitlements: Vec::new(),
                    credentials: Vec::new(),
                    last_activity: None,
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

    fn config(connection: serde_json::Value, secret: Option<&str>) -> SystemConfig {
        crate::test_config("aws_sso", connection, secret)
    }

    #[test]
    fn settings_are_checked() {
        let ok = config(
            json!({"instance_arn": "arn:aws:sso:::instance/ssoins-1", "identity_store_id": "d-1"}),
            None,
        );
        let settings = Settings::parse("sso", &ok).unwrap_or_else(|p| panic!("{p:?}"));
        assert_eq!(settings.region, "us-east-1");
        let problems = AwsSsoConnector::check_config(
            "sso",
            &config(json!({"instance_arn": "ssoins-1", "zone": 1}), Some("")),
        )
        .join("\n");
        for needle in [
            "systems.sso.connection.zone is not a aws_sso setting",
            "systems.sso.connection.instance_arn = \"ssoins-1\" must be an instance ARN",
            "systems.sso.connection.identity_store_id is required",
            "systems.sso.secret is empty",
        ] {
            assert!(problems.contains(needle), "{needle} missing in {problems}");
        }
    }

    #[test]
    fn assignment_ids_round_trip() {
        let id = assignment_id("123456789012", "arn:aws:sso:::permissionSet/ssoins-1/ps-1");
        assert_eq!(
            split_assignment(&id),
            Some(("123456789012", "arn:aws:sso:::permissionSet/ssoins-1/ps-1"))
        );
        assert_eq!(split_assignment("12/arn:x"), None);
        assert_eq!(split_assignment("nope"), None);
    }

    #[test]
    fn the_deny_statement_gains_and_loses_users_and_keeps_the_rest() {
        let mut policy = json!({"Version": "2012-10-17", "Statement": [
            {"Sid": "ReadOnly", "Effect": "Allow", "Action": "s3:Get*", "Resource": "*"}
        ]});
        with_denied_user(&mut policy, "u-1", true);
        with_denied_user(&mut policy, "u-2", true);
        assert!(AwsSsoConnector::denies(&policy, "u-1"));
        assert!(AwsSsoConnector::denies(&policy, "u-2"));
        assert_eq!(statements(&policy).len(), 2);
        with_denied_user(&mut policy, "u-1", false);
        assert!(!AwsSsoConnector::denies(&policy, "u-1"));
        assert!(AwsSsoConnector::denies(&policy, "u-2"));
        with_denied_user(&mut policy, "u-2", false);
        assert_eq!(
            statements(&policy),
            [json!({"Sid": "ReadOnly", "Effect": "Allow", "Action": "s3:Get*", "Resource": "*"})]
        );
    }
}
