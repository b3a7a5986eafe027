//! The fictional Example Corp workforce and how it is spread over the two demo apps.

use serde_json::{json, Map, Value};

use crate::schema::{Kind, ENTERPRISE_SCHEMA};
use crate::ScimProvider;

/// One person of the demo workforce. `id` is the HR id; `apps` are the demo apps where the
/// person has an account, `groups` the demo groups (see [`app_groups`]) they belong to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DemoPerson {
    pub id: &'static str,
    pub display_name: &'static str,
    pub email: &'static str,
    pub username: &'static str,
    pub roles: &'static [&'static str],
    pub manager_email: Option<&'static str>,
    pub apps: &'static [&'static str],
    pub groups: &'static [&'static str],
}

/// The demo apps [`seed`] knows.
pub const APPS: &[&str] = &["crm", "wiki"];

/// The service account every app gets; the demo policy exempts it.
pub const SERVICE_ACCOUNT: &str = "svc-backup";

const CRM_GROUPS: &[&str] = &["Sales", "Sales Managers", "Support", "CRM Admins"];
const WIKI_GROUPS: &[&str] = &["Engineering", "Editors", "Leadership", "Wiki Admins"];

/// Groups that exist in demo app `app` (empty for an unknown app).
pub fn app_groups(app: &str) -> &'static [&'static str] {
    match app {
        "crm" => CRM_GROUPS,
        "wiki" => WIKI_GROUPS,
        _ => &[],
    }
}

/// Positional constructor for the table below (keeps one person per line readable).
macro_rules! person {
    ($id:expr, $name:expr, $email:expr, $user:expr, $roles:expr, $mgr:expr, $apps:expr, $groups:expr $(,)?) => {
        DemoPerson {
            id: $id,
            display_name: $name,
            email: $email,
            username: $user,
            roles: $roles,
            manager_email: $mgr,
            apps: $apps,
            groups: $groups,
        }
    };
}

const CEO: Option<&str> = Some("grace.hopper@example.com");
const VP_ENG: Option<&str> = Some("alan.turing@example.com");
const VP_SALES: Option<&str> = Some("dorothy.vaughan@example.com");
const SUPPORT_LEAD: Option<&str> = Some("claude.shannon@example.com");

const BOTH: &[&str] = &["crm", "wiki"];
const CRM: &[&str] = &["crm"];
const WIKI: &[&str] = &["wiki"];

static WORKFORCE: [DemoPerson; 12] = [
    person!(
        "E1001",
        "Grace Hopper",
        "grace.hopper@example.com",
        "ghopper",
        &["executive", "manager"],
        None,
        BOTH,
        &["Leadership", "Sales Managers"],
    ),
    person!(
        "E1002",
        "Alan Turing",
        "alan.turing@example.com",
        "aturing",
        &["engineering", "manager"],
        CEO,
        WIKI,
        &["Engineering", "Leadership", "Wiki Admins"],
    ),
    person!(
        "E1003",
        "Ada Lovelace",
        "ada.lovelace@example.com",
        "alovelace",
        &["engineering"],
        VP_ENG,
        WIKI,
        &["Engineering", "Editors"],
    ),
    person!(
        "E1004",
        "Katherine Johnson",
        "katherine.johnson@example.com",
        "kjohnson",
        &["engineering"],
        VP_ENG,
        BOTH,
        &["Engineering"],
    ),
    person!(
        "E1005",
        "Margaret Hamilton",
        "margaret.hamilton@example.com",
        "mhamilton",
        &["engineering", "it-admin"],
        VP_ENG,
        BOTH,
        &["Engineering", "Wiki Admins", "CRM Admins"],
    ),
    person!(
        "E1006",
        "Dorothy Vaughan",
        "dorothy.vaughan@example.com",
        "dvaughan",
        &["sales", "manager"],
        CEO,
        BOTH,
        &["Sales", "Sales Managers", "Leadership"],
    ),
    person!(
        "E1007",
        "Mary Jackson",
        "mary.jackson@example.com",
        "mjackson",
        &["sales"],
        VP_SALES,
        BOTH,
        &["Sales", "Editors"],
    ),
    person!(
        "E1008",
        "Hedy Lamarr",
        "hedy.lamarr@example.com",
        "hlamarr",
        &["sales"],
        VP_SALES,
        CRM,
        &["Sales"],
    ),
    person!(
        "E1009",
        "Claude Shannon",
        "claude.shannon@example.com",
        "cshannon",
        &["support", "manager"],
        CEO,
        BOTH,
        &["Support", "Editors", "Leadership"],
    ),
    person!(
        "E1010",
        "Radia Perlman",
        "radia.perlman@example.com",
        "rperlman",
        &["support"],
        SUPPORT_LEAD,
        BOTH,
        &["Support"],
    ),
    person!(
        "E1011",
        "John von Neumann",
        "john.vonneumann@example.com",
        "jvonneumann",
        &["finance"],
        CEO,
        CRM,
        &["CRM Admins"],
    ),
    person!(
        "E1012",
        "Barbara Liskov",
        "barbara.liskov@example.com",
        "bliskov",
        &["engineering", "contractor"],
        VP_ENG,
        WIKI,
        &["Engineering"],
    ),
];

/// The demo workforce, always the same people in the same order.
pub fn workforce() -> &'static [DemoPerson] {
    &WORKFORCE
}

fn user_attrs(
    user_name: &str,
    email: &str,
    display_name: &str,
    active: bool,
) -> Map<String, Value> {
    let (given, family) = display_name.split_once(' ').unwrap_or((display_name, ""));
    let mut name = json!({"formatted": display_name, "givenName": given});
    if !family.is_empty() {
        name["familyName"] = Value::from(family);
    }
    let v = json!({
        "userName": user_name,
        "displayName": display_name,
        "name": name,
        "emails": [{"value": email, "type": "work", "primary": true}],
        "active": active,
    });
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

pub(crate) fn new_user(
    user_name: &str,
    email: &str,
    display_name: &str,
    active: bool,
) -> Map<String, Value> {
    user_attrs(user_name, email, display_name, active)
}

/// Seeds demo app `app` ("crm" or "wiki"): the people who have an account there (userName =
/// [`DemoPerson::username`], with employee number and manager in the enterprise extension),
/// the app's groups, and the `svc-backup` service account (member of the app's admin group).
/// Any other app name gets every person and no groups. Seeding twice changes nothing.
pub fn seed(provider: &ScimProvider, app: &str) {
    let known = APPS.contains(&app);
    let people: Vec<&DemoPerson> = WORKFORCE
        .iter()
        .filter(|p| !known || p.apps.contains(&app))
        .collect();
    for p in &people {
        if provider.find_user_id(p.username).is_some() {
            continue;
        }
        let mut attrs = user_attrs(p.username, p.email, p.display_name, true);
        attrs.insert("externalId".into(), Value::from(p.id));
        attrs.insert(
            "userType".into(),
            Value::from(if p.roles.contains(&"contractor") {
                "Contractor"
            } else {
                "Employee"
            }),
        );
        let mut ext = json!({"employeeNumber": p.id, "organization": "Example Corp"});
        let manager = p
            .manager_email
            .and_then(|m| people.iter().find(|q| q.email == m))
            .and_then(|m| provider.find_user_id(m.username));
        if let Some(mid) = manager {
            ext["manager"] = json!({"value": mid});
        }
        attrs.insert(ENTERPRISE_SCHEMA.into(), ext);
        provider.insert(Kind::User, attrs);
    }
    if provider.find_user_id(SERVICE_ACCOUNT).is_none() {
        let mut attrs = user_attrs(
            SERVICE_ACCOUNT,
            "svc-backup@example.com",
            "Backup Service Account",
            true,
        );
        attrs.insert("userType".into(), Value::from("Service"));
        provider.insert(Kind::User, attrs);
    }
    for group in app_groups(app) {
        if provider.find_group_id(group).is_some() {
            continue;
        }
        let mut ids: Vec<String> = people
            .iter()
            .filter(|p| p.groups.contains(group))
            .filter_map(|p| provider.find_user_id(p.username))
            .collect();
        if group.ends_with("Admins") {
            ids.extend(provider.find_user_id(SERVICE_ACCOUNT));
        }
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        provider.add_group(group, &refs);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workforce_is_consistent() {
        let w = workforce();
        assert!((10..=14).contains(&w.len()));
        for p in w {
            assert!(p.email.ends_with("@example.com"));
            if let Some(m) = p.manager_email {
                assert!(
                    w.iter().any(|q| q.email == m),
                    "{} has unknown manager {m}",
                    p.id
                );
            }
            for g in p.groups {
                assert!(
                    p.apps.iter().any(|a| app_groups(a).contains(g)),
                    "{} is in {g} without an account in its app",
                    p.id
                );
            }
        }
    }
}
