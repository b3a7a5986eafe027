//! The SCIM schemas this provider serves (RFC 7643 §4), as static tables.
//!
//! One table drives everything: input validation, PATCH path resolution, filter attribute
//! resolution (case-exactness) and the `/Schemas` discovery document, so they cannot drift.

use serde_json::{json, Map, Value};

use crate::error::ScimError;

pub(crate) const USER_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:User";
pub(crate) const GROUP_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Group";
pub(crate) const ENTERPRISE_SCHEMA: &str =
    "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User";
pub(crate) const LIST_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:ListResponse";
pub(crate) const ERROR_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:Error";
pub(crate) const PATCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:PatchOp";
pub(crate) const SEARCH_SCHEMA: &str = "urn:ietf:params:scim:api:messages:2.0:SearchRequest";
pub(crate) const SPC_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ServiceProviderConfig";
pub(crate) const RESOURCE_TYPE_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:ResourceType";
pub(crate) const SCHEMA_SCHEMA: &str = "urn:ietf:params:scim:schemas:core:2.0:Schema";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Ty {
    String,
    Boolean,
    DateTime,
    Reference,
    Complex,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mutability {
    ReadOnly,
    ReadWrite,
}

/// One attribute definition (RFC 7643 §2.2 characteristics we act on).
#[derive(Debug)]
pub(crate) struct Attr {
    pub name: &'static str,
    pub ty: Ty,
    pub multi: bool,
    pub required: bool,
    pub case_exact: bool,
    pub mutability: Mutability,
    pub unique: bool,
    pub sub: &'static [Attr],
    /// The extension schema URN when this "attribute" is a whole schema extension.
    pub extension: bool,
}

impl Attr {
    pub(crate) fn is_read_only(&self) -> bool {
        self.mutability == Mutability::ReadOnly
    }

    pub(crate) fn sub_attr(&self, name: &str) -> Option<&'static Attr> {
        find(self.sub, name)
    }
}

const fn attr(name: &'static str, ty: Ty) -> Attr {
    Attr {
        name,
        ty,
        multi: false,
        required: false,
        case_exact: false,
        mutability: Mutability::ReadWrite,
        unique: false,
        sub: &[],
        extension: false,
    }
}

const fn string(name: &'static str) -> Attr {
    attr(name, Ty::String)
}

const fn exact(mut a: Attr) -> Attr {
    a.case_exact = true;
    a
}

const fn required(mut a: Attr) -> Attr {
    a.required = true;
    a
}

const fn read_only(mut a: Attr) -> Attr {
    a.mutability = Mutability::ReadOnly;
    a
}

const fn complex(name: &'static str, sub: &'static [Attr]) -> Attr {
    let mut a = attr(name, Ty::Complex);
    a.sub = sub;
    a
}

const fn multi(mut a: Attr) -> Attr {
    a.multi = true;
    a
}

const META_SUB: &[Attr] = &[
    exact(read_only(string("resourceType"))),
    read_only(attr("created", Ty::DateTime)),
    read_only(attr("lastModified", Ty::DateTime)),
    exact(read_only(attr("location", Ty::Reference))),
    exact(read_only(string("version"))),
];

const ID: Attr = {
    let mut a = exact(read_only(string("id")));
    a.unique = true;
    a
};
const EXTERNAL_ID: Attr = exact(string("externalId"));
const META: Attr = read_only(complex("meta", META_SUB));

const NAME_SUB: &[Attr] = &[
    string("formatted"),
    string("familyName"),
    string("givenName"),
    string("middleName"),
    string("honorificPrefix"),
    string("honorificSuffix"),
];

const MULTI_SUB: &[Attr] = &[
    required(string("value")),
    string("display"),
    string("type"),
    attr("primary", Ty::Boolean),
];

const USER_GROUPS_SUB: &[Attr] = &[
    exact(read_only(string("value"))),
    exact(read_only(attr("$ref", Ty::Reference))),
    read_only(string("display")),
    read_only(string("type")),
];

const MANAGER_SUB: &[Attr] = &[
    exact(string("value")),
    exact(attr("$ref", Ty::Reference)),
    read_only(string("displayName")),
];

const ENTERPRISE_SUB: &[Attr] = &[
    string("employeeNumber"),
    string("costCenter"),
    string("organization"),
    string("division"),
    string("department"),
    complex("manager", MANAGER_SUB),
];

const USER_NAME: Attr = {
    let mut a = required(string("userName"));
    a.unique = true;
    a
};

pub(crate) const USER_ATTRS: &[Attr] = &[
    ID,
    EXTERNAL_ID,
    META,
    USER_NAME,
    complex("name", NAME_SUB),
    string("displayName"),
    string("nickName"),
    attr("profileUrl", Ty::Reference),
    string("title"),
    string("userType"),
    string("preferredLanguage"),
    string("locale"),
    string("timezone"),
    attr("active", Ty::Boolean),
    multi(complex("emails", MULTI_SUB)),
    multi(complex("phoneNumbers", MULTI_SUB)),
    read_only(multi(complex("groups", USER_GROUPS_SUB))),
    Attr {
        extension: true,
        ..complex(ENTERPRISE_SCHEMA, ENTERPRISE_SUB)
    },
];

const MEMBER_SUB: &[Attr] = &[
    exact(required(string("value"))),
    exact(read_only(attr("$ref", Ty::Reference))),
    read_only(string("display")),
    string("type"),
];

pub(crate) const GROUP_ATTRS: &[Attr] = &[
    ID,
    EXTERNAL_ID,
    META,
    required(string("displayName")),
    multi(complex("members", MEMBER_SUB)),
];

/// The two resource types this provider serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Kind {
    User,
    Group,
}

impl Kind {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::User => "User",
            Kind::Group => "Group",
        }
    }

    pub(crate) fn endpoint(self) -> &'static str {
        match self {
            Kind::User => "Users",
            Kind::Group => "Groups",
        }
    }

    pub(crate) fn schema(self) -> &'static str {
        match self {
            Kind::User => USER_SCHEMA,
            Kind::Group => GROUP_SCHEMA,
        }
    }

    pub(crate) fn attrs(self) -> &'static [Attr] {
        match self {
            Kind::User => USER_ATTRS,
            Kind::Group => GROUP_ATTRS,
        }
    }
}

/// Attribute names are case-insensitive (RFC 7643 §2.1).
pub(crate) fn find(attrs: &'static [Attr], name: &str) -> Option<&'static Attr> {
    attrs.iter().find(|a| a.name.eq_ignore_ascii_case(name))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    if s.len() >= prefix.len()
        && s.is_char_boundary(prefix.len())
        && s[..prefix.len()].eq_ignore_ascii_case(prefix)
    {
        Some(&s[prefix.len()..])
    } else {
        None
    }
}

/// Resolves an attribute path (`userName`, `name.givenName`, `emails.value`, fully qualified
/// `urn:…:User:userName`, `urn:…:enterprise:2.0:User:manager.value`) to its chain of
/// definitions. `None` when any segment is unknown.
pub(crate) fn resolve(kind: Kind, path: &str) -> Option<Vec<&'static Attr>> {
    let attrs = kind.attrs();
    let (mut chain, rest): (Vec<&'static Attr>, &str) = if let Some(rest) =
        strip_prefix_ci(path, kind.schema()).and_then(|r| r.strip_prefix(':'))
    {
        (Vec::new(), rest)
    } else if let Some(ext) = attrs
        .iter()
        .find(|a| a.extension && path.eq_ignore_ascii_case(a.name))
    {
        return Some(vec![ext]);
    } else if let Some((ext, rest)) = attrs.iter().filter(|a| a.extension).find_map(|a| {
        strip_prefix_ci(path, a.name)
            .and_then(|r| r.strip_prefix(':'))
            .map(|r| (a, r))
    }) {
        (vec![ext], rest)
    } else {
        (Vec::new(), path)
    };
    if rest.is_empty() {
        return None;
    }
    let mut scope: &'static [Attr] = chain.last().map_or(attrs, |a| a.sub);
    for seg in rest.split('.') {
        let a = find(scope, seg)?;
        if a.extension {
            return None;
        }
        chain.push(a);
        scope = a.sub;
    }
    Some(chain)
}

/// Validates a value for `attr` and rewrites it into canonical form (canonical attribute
/// names, read-only sub-attributes dropped, unknown sub-attributes ignored). `None` means
/// "unassigned" (null, empty array, empty object).
pub(crate) fn canonical(
    attr: &'static Attr,
    v: &Value,
    whole: bool,
) -> Result<Option<Value>, ScimError> {
    if v.is_null() {
        return Ok(None);
    }
    if attr.multi && whole {
        let Value::Array(items) = v else {
            return Err(ScimError::invalid_value(format!(
                "attribute \"{}\" is multi-valued and needs an array",
                attr.name
            )));
        };
        let mut out = Vec::with_capacity(items.len());
        for item in items {
            if let Some(c) = canonical(attr, item, false)? {
                out.push(c);
            }
        }
        return Ok((!out.is_empty()).then_some(Value::Array(out)));
    }
    let wrong = |want: &str| {
        ScimError::invalid_value(format!("attribute \"{}\" must be {want}", attr.name))
    };
    match attr.ty {
        Ty::String | Ty::Reference | Ty::DateTime => match v {
            Value::String(_) => Ok(Some(v.clone())),
            _ => Err(wrong("a string")),
        },
        Ty::Boolean => match v {
            Value::Bool(_) => Ok(Some(v.clone())),
            _ => Err(wrong("a boolean")),
        },
        Ty::Complex => {
            let Value::Object(obj) = v else {
                return Err(wrong("an object"));
            };
            let mut out = Map::new();
            for (k, sv) in obj {
                let Some(sub) = attr.sub_attr(k) else {
                    continue;
                };
                if sub.is_read_only() {
                    continue;
                }
                if let Some(c) = canonical(sub, sv, true)? {
                    out.insert(sub.name.to_owned(), c);
                }
            }
            Ok((!out.is_empty()).then_some(Value::Object(out)))
        }
    }
}

/// Builds the stored attributes of a resource from a POST/PUT body: `schemas` must name the
/// core schema; read-only attributes are ignored (RFC 7644 §3.3); unknown ones too.
pub(crate) fn from_body(kind: Kind, body: &Value) -> Result<Map<String, Value>, ScimError> {
    let Value::Object(obj) = body else {
        return Err(ScimError::invalid_syntax(
            "the request body must be a JSON object",
        ));
    };
    let schemas_ok = obj
        .get("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter().any(|u| {
                u.as_str()
                    .is_some_and(|u| u.eq_ignore_ascii_case(kind.schema()))
            })
        });
    if !schemas_ok {
        return Err(ScimError::invalid_syntax(format!(
            "\"schemas\" must contain \"{}\"",
            kind.schema()
        )));
    }
    let mut out = Map::new();
    for (k, v) in obj {
        if k.eq_ignore_ascii_case("schemas") {
            continue;
        }
        let Some(a) = find(kind.attrs(), k) else {
            continue;
        };
        if a.is_read_only() {
            continue;
        }
        if let Some(c) = canonical(a, v, true)? {
            out.insert(a.name.to_owned(), c);
        }
    }
    validate(kind, &out)?;
    Ok(out)
}

/// Whole-resource checks that single values cannot make: required attributes present, at
/// most one `primary` per multi-valued attribute.
pub(crate) fn validate(kind: Kind, attrs: &Map<String, Value>) -> Result<(), ScimError> {
    for a in kind.attrs() {
        if a.is_read_only() {
            continue;
        }
        let v = attrs.get(a.name);
        if a.required && v.is_none() {
            return Err(ScimError::invalid_value(format!(
                "attribute \"{}\" is required",
                a.name
            )));
        }
        if let (true, Some(Value::Array(items))) = (a.multi, v) {
            for item in items {
                for s in a.sub.iter().filter(|s| s.required) {
                    if item.get(s.name).is_none() {
                        return Err(ScimError::invalid_value(format!(
                            "sub-attribute \"{}.{}\" is required",
                            a.name, s.name
                        )));
                    }
                }
            }
            let primaries = items
                .iter()
                .filter(|i| i.get("primary") == Some(&Value::Bool(true)))
                .count();
            if primaries > 1 {
                return Err(ScimError::invalid_value(format!(
                    "at most one of \"{}\" may be primary",
                    a.name
                )));
            }
        }
    }
    Ok(())
}

fn attr_json(a: &Attr) -> Value {
    let ty = match a.ty {
        Ty::String => "string",
        Ty::Boolean => "boolean",
        Ty::DateTime => "dateTime",
        Ty::Reference => "reference",
        Ty::Complex => "complex",
    };
    let mut v = json!({
        "name": a.name,
        "type": ty,
        "multiValued": a.multi,
        "description": "",
        "required": a.required,
        "caseExact": a.case_exact,
        "mutability": if a.is_read_only() { "readOnly" } else { "readWrite" },
        "returned": "default",
        "uniqueness": if a.unique { "server" } else { "none" },
    });
    if a.ty == Ty::Reference {
        v["referenceTypes"] = json!(["external"]);
    }
    if a.ty == Ty::Complex {
        v["subAttributes"] = Value::Array(a.sub.iter().map(attr_json).collect());
    }
    v
}

fn schema_json(id: &str, name: &str, attrs: &[Attr], base: &str) -> Value {
    json!({
        "schemas": [SCHEMA_SCHEMA],
        "id": id,
        "name": name,
        "description": format!("{name} schema"),
        "attributes": attrs.iter().filter(|a| !a.extension && a.name != "id" && a.name != "externalId" && a.name != "meta").map(attr_json).collect::<Vec<_>>(),
        "meta": {"resourceType": "Schema", "location": format!("{base}/Schemas/{id}")},
    })
}

/// The `/Schemas` resources (RFC 7643 §7).
pub(crate) fn schemas(base: &str) -> Vec<Value> {
    vec![
        schema_json(USER_SCHEMA, "User", USER_ATTRS, base),
        schema_json(GROUP_SCHEMA, "Group", GROUP_ATTRS, base),
        schema_json(ENTERPRISE_SCHEMA, "EnterpriseUser", ENTERPRISE_SUB, base),
    ]
}

/// The `/ResourceTypes` resources (RFC 7643 §6).
pub(crate) fn resource_types(base: &str) -> Vec<Value> {
    vec![
        json!({
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "User", "name": "User", "endpoint": "/Users",
            "description": "User Account", "schema": USER_SCHEMA,
            "schemaExtensions": [{"schema": ENTERPRISE_SCHEMA, "required": false}],
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/User")},
        }),
        json!({
            "schemas": [RESOURCE_TYPE_SCHEMA],
            "id": "Group", "name": "Group", "endpoint": "/Groups",
            "description": "Group", "schema": GROUP_SCHEMA,
            "meta": {"resourceType": "ResourceType", "location": format!("{base}/ResourceTypes/Group")},
        }),
    ]
}

/// `/ServiceProviderConfig` (RFC 7643 §5): what a client may rely on.
pub(crate) fn service_provider_config(base: &str, max_results: usize) -> Value {
    json!({
        "schemas": [SPC_SCHEMA],
        "documentationUri": "https://datatracker.ietf.org/doc/html/rfc7644",
        "patch": {"supported": true},
        "bulk": {"supported": false, "maxOperations": 0, "maxPayloadSize": 0},
        "filter": {"supported": true, "maxResults": max_results},
        "changePassword": {"supported": false},
        "sort": {"supported": false},
        "etag": {"supported": true},
        "authenticationSchemes": [{
            "type": "oauthbearertoken",
            "name": "OAuth Bearer Token",
            "description": "Authentication with a bearer token (RFC 6750)",
            "specUri": "https://www.rfc-editor.org/info/rfc6750",
            "primary": true,
        }],
        "meta": {"resourceType": "ServiceProviderConfig", "location": format!("{base}/ServiceProviderConfig")},
    })
}
