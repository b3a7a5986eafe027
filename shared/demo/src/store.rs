//! The provider's resources: storage in creation order, versioning, rendering, and the
//! create/replace/patch/delete operations with their invariants (unique `userName`,
//! members must exist, a deleted resource leaves every group it was in).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use crate::error::ScimError;
use crate::filter::Filter;
use crate::patch;
use crate::schema::{self, Kind};

#[derive(Debug, Clone)]
pub(crate) struct Resource {
    pub kind: Kind,
    pub id: String,
    /// Writable attributes only, in canonical form (see `schema::canonical`).
    pub attrs: Map<String, Value>,
    pub created: String,
    pub modified: String,
    pub version: u64,
}

impl Resource {
    pub(crate) fn etag(&self) -> String {
        etag(self.version)
    }
}

fn etag(version: u64) -> String {
    format!("W/\"{version}\"")
}

/// A parsed precondition header value (`If-Match` / `If-None-Match`).
pub(crate) fn etag_matches(header: &str, version: u64) -> bool {
    let ours = format!("\"{version}\"");
    header
        .split(',')
        .map(str::trim)
        .any(|tag| tag == "*" || tag.strip_prefix("W/").unwrap_or(tag) == ours)
}

#[derive(Debug)]
pub(crate) struct Store {
    base: String,
    seq: u64,
    version: u64,
    rng: u64,
    items: BTreeMap<u64, Resource>,
    ids: HashMap<String, u64>,
    user_names: HashMap<String, String>,
}

/// The user-visible timestamp format: RFC 3339 UTC with milliseconds, so that string
/// comparison in filters (`meta.lastModified gt "…"`) orders correctly.
pub(crate) fn now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs();
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    // Civil-from-days (H. Hinnant), proleptic Gregorian.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        d.subsec_millis()
    )
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Store {
    pub(crate) fn new(base: String) -> Self {
        let seed = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (&base as *const String as u64);
        Store {
            base,
            seq: 0,
            version: 0,
            rng: seed,
            items: BTreeMap::new(),
            ids: HashMap::new(),
            user_names: HashMap::new(),
        }
    }

    /// Opaque, unguessable, uuid-shaped ids: clients must not infer anything from them.
    fn new_id(&mut self) -> String {
        let hi = splitmix(&mut self.rng);
        let lo = splitmix(&mut self.rng);
        format!(
            "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
            hi >> 32,
            (hi >> 16) & 0xffff,
            hi & 0x0fff,
            (lo >> 48 & 0x3fff) | 0x8000,
            lo & 0xffff_ffff_ffff
        )
    }

    fn next_version(&mut self) -> u64 {
        self.version += 1;
        self.version
    }

    pub(crate) fn get(&self, kind: Kind, id: &str) -> Option<&Resource> {
        self.ids
            .get(id)
            .and_then(|seq| self.items.get(seq))
            .filter(|r| r.kind == kind)
    }

    fn get_any(&self, id: &str) -> Option<&Resource> {
        self.ids.get(id).and_then(|seq| self.items.get(seq))
    }

    pub(crate) fn find_user(&self, user_name: &str) -> Option<&str> {
        self.user_names
            .get(&user_name.to_lowercase())
            .map(String::as_str)
    }

    fn not_found(kind: Kind, id: &str) -> ScimError {
        ScimError::not_found(format!("{} \"{id}\" not found", kind.name()))
    }

    fn user_name_of(attrs: &Map<String, Value>) -> Option<String> {
        attrs
            .get("userName")
            .and_then(Value::as_str)
            .map(str::to_lowercase)
    }

    /// Invariants that need the whole store: unique userName, members that exist.
    fn check(
        &self,
        kind: Kind,
        id: Option<&str>,
        attrs: &mut Map<String, Value>,
    ) -> Result<(), ScimError> {
        schema::validate(kind, attrs)?;
        match kind {
            Kind::User => {
                if let Some(name) = Self::user_name_of(attrs) {
                    if self
                        .user_names
                        .get(&name)
                        .is_some_and(|owner| Some(owner.as_str()) != id)
                    {
                        return Err(ScimError::uniqueness(format!(
                            "userName \"{name}\" is already taken"
                        )));
                    }
                }
            }
            Kind::Group => {
                if let Some(Value::Array(members)) = attrs.get_mut("members") {
                    let mut seen = HashSet::new();
                    let mut kept = Vec::with_capacity(members.len());
                    for m in members.drain(..) {
                        let value = m
                            .get("value")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        if Some(value.as_str()) == id {
                            return Err(ScimError::invalid_value(
                                "a group cannot be a member of itself",
                            ));
                        }
                        if self.get_any(&value).is_none() {
                            return Err(ScimError::invalid_value(format!(
                                "member \"{value}\" is neither a User nor a Group here"
                            )));
                        }
                        if seen.insert(value) {
                            let mut m = m;
                            if let Value::Object(o) = &mut m {
                                o.remove("type");
                            }
                            kept.push(m);
                        }
                    }
                    *members = kept;
                }
            }
        }
        Ok(())
    }

    pub(crate) fn create(
        &mut self,
        kind: Kind,
        mut attrs: Map<String, Value>,
    ) -> Result<String, ScimError> {
        self.check(kind, None, &mut attrs)?;
        let id = self.new_id();
        if let Some(name) = Self::user_name_of(&attrs).filter(|_| kind == Kind::User) {
            self.user_names.insert(name, id.clone());
        }
        let ts = now();
        let version = self.next_version();
        self.seq += 1;
        self.ids.insert(id.clone(), self.seq);
        self.items.insert(
            self.seq,
            Resource {
                kind,
                id: id.clone(),
                attrs,
                created: ts.clone(),
                modified: ts,
                version,
            },
        );
        Ok(id)
    }

    fn precondition(res: &Resource, if_match: Option<&str>) -> Result<(), ScimError> {
        match if_match {
            Some(h) if !etag_matches(h, res.version) => Err(ScimError::new(
                412,
                None,
                format!(
                    "{} \"{}\" is at version {}, not {h}",
                    res.kind.name(),
                    res.id,
                    res.etag()
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Stores new attributes for an existing resource; bumps the version only if something
    /// actually changed, so an idempotent retry does not look like a modification.
    fn commit(
        &mut self,
        kind: Kind,
        id: &str,
        mut attrs: Map<String, Value>,
    ) -> Result<(), ScimError> {
        self.check(kind, Some(id), &mut attrs)?;
        let Some(seq) = self.ids.get(id).copied() else {
            return Err(Self::not_found(kind, id));
        };
        let old_name = self
            .items
            .get(&seq)
            .and_then(|r| Self::user_name_of(&r.attrs));
        if self.items.get(&seq).is_some_and(|r| r.attrs == attrs) {
            return Ok(());
        }
        if kind == Kind::User {
            if let Some(old) = old_name {
                self.user_names.remove(&old);
            }
            if let Some(name) = Self::user_name_of(&attrs) {
                self.user_names.insert(name, id.to_owned());
            }
        }
        let version = self.next_version();
        if let Some(r) = self.items.get_mut(&seq) {
            r.attrs = attrs;
            r.version = version;
            r.modified = now();
        }
        Ok(())
    }

    pub(crate) fn replace(
        &mut self,
        kind: Kind,
        id: &str,
        attrs: Map<String, Value>,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        let res = self
            .get(kind, id)
            .ok_or_else(|| Self::not_found(kind, id))?;
        Self::precondition(res, if_match)?;
        self.commit(kind, id, attrs)
    }

    pub(crate) fn patch(
        &mut self,
        kind: Kind,
        id: &str,
        body: &Value,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        let res = self
            .get(kind, id)
            .ok_or_else(|| Self::not_found(kind, id))?;
        Self::precondition(res, if_match)?;
        let mut attrs = res.attrs.clone();
        let template = res.clone();
        patch::apply(kind, &mut attrs, body, &|a: &Map<String, Value>| {
            let r = Resource {
                attrs: a.clone(),
                ..template.clone()
            };
            self.render(&r)
        })?;
        self.commit(kind, id, attrs)
    }

    pub(crate) fn delete(
        &mut self,
        kind: Kind,
        id: &str,
        if_match: Option<&str>,
    ) -> Result<(), ScimError> {
        let res = self
            .get(kind, id)
            .ok_or_else(|| Self::not_found(kind, id))?;
        Self::precondition(res, if_match)?;
        if let Some(name) = Self::user_name_of(&res.attrs).filter(|_| kind == Kind::User) {
            self.user_names.remove(&name);
        }
        if let Some(seq) = self.ids.remove(id) {
            self.items.remove(&seq);
        }
        // Leave every group it was a member of; those groups change version.
        let holders: Vec<u64> = self
            .items
            .iter()
            .filter(|(_, r)| r.kind == Kind::Group && member_values(r).any(|v| v == id))
            .map(|(seq, _)| *seq)
            .collect();
        for seq in holders {
            let version = self.next_version();
            if let Some(g) = self.items.get_mut(&seq) {
                if let Some(Value::Array(ms)) = g.attrs.get_mut("members") {
                    ms.retain(|m| m.get("value").and_then(Value::as_str) != Some(id));
                    if ms.is_empty() {
                        g.attrs.remove("members");
                    }
                }
                g.version = version;
                g.modified = now();
            }
        }
        Ok(())
    }

    /// member id → groups (seqs) that list it directly.
    fn memberships(&self) -> HashMap<&str, Vec<&Resource>> {
        let mut idx: HashMap<&str, Vec<&Resource>> = HashMap::new();
        for g in self.items.values().filter(|r| r.kind == Kind::Group) {
            for v in member_values(g) {
                idx.entry(v).or_default().push(g);
            }
        }
        idx
    }

    pub(crate) fn location(&self, kind: Kind, id: &str) -> String {
        format!("{}/{}/{id}", self.base, kind.endpoint())
    }

    pub(crate) fn render(&self, r: &Resource) -> Value {
        self.render_with(r, None)
    }

    fn render_with(&self, r: &Resource, idx: Option<&HashMap<&str, Vec<&Resource>>>) -> Value {
        let mut out = r.attrs.clone();
        let mut schemas = vec![Value::from(r.kind.schema())];
        if out.contains_key(schema::ENTERPRISE_SCHEMA) {
            schemas.push(Value::from(schema::ENTERPRISE_SCHEMA));
        }
        out.insert("schemas".into(), Value::Array(schemas));
        out.insert("id".into(), Value::from(r.id.clone()));
        match r.kind {
            Kind::Group => {
                if let Some(Value::Array(ms)) = out.get_mut("members") {
                    for m in ms.iter_mut() {
                        let value = m
                            .get("value")
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        if let (Some(target), Value::Object(o)) = (self.get_any(&value), m) {
                            o.insert(
                                "$ref".into(),
                                Value::from(self.location(target.kind, &value)),
                            );
                            o.insert("type".into(), Value::from(target.kind.name()));
                            if let Some(d) = display_of(target) {
                                o.insert("display".into(), Value::from(d));
                            }
                        }
                    }
                }
            }
            Kind::User => {
                let owned;
                let idx = match idx {
                    Some(i) => i,
                    None => {
                        owned = self.memberships();
                        &owned
                    }
                };
                let groups = self.groups_of(&r.id, idx);
                if !groups.is_empty() {
                    out.insert("groups".into(), Value::Array(groups));
                }
                if let Some(Value::Object(ext)) = out.get_mut(schema::ENTERPRISE_SCHEMA) {
                    if let Some(Value::Object(mgr)) = ext.get_mut("manager") {
                        let mid = mgr.get("value").and_then(Value::as_str).map(str::to_owned);
                        if let Some(m) = mid.and_then(|id| self.get(Kind::User, &id)) {
                            if let Some(d) = display_of(m) {
                                mgr.insert("displayName".into(), Value::from(d));
                            }
                        }
                    }
                }
            }
        }
        out.insert(
            "meta".into(),
            json!({
                "resourceType": r.kind.name(),
                "created": r.created,
                "lastModified": r.modified,
                "location": self.location(r.kind, &r.id),
                "version": r.etag(),
            }),
        );
        Value::Object(out)
    }

    /// Direct groups, then groups reached through nested groups ("indirect", RFC 7643 §4.1.2).
    fn groups_of(&self, id: &str, idx: &HashMap<&str, Vec<&Resource>>) -> Vec<Value> {
        let mut out = Vec::new();
        let mut seen = HashSet::new();
        let mut frontier: Vec<(&str, &str)> = vec![(id, "direct")];
        while let Some((member, kind)) = frontier.pop() {
            for g in idx.get(member).into_iter().flatten() {
                if !seen.insert(g.id.as_str()) {
                    continue;
                }
                let mut v = json!({
                    "value": g.id,
                    "$ref": self.location(Kind::Group, &g.id),
                    "type": kind,
                });
                if let Some(d) = display_of(g) {
                    v["display"] = Value::from(d);
                }
                out.push(v);
                frontier.insert(0, (g.id.as_str(), "indirect"));
            }
        }
        out
    }

    /// Rendered resources of `kind` matching `filter`, in creation order.
    pub(crate) fn list(&self, kind: Kind, filter: Option<&Filter>) -> Vec<(Value, &Resource)> {
        let idx = (kind == Kind::User).then(|| self.memberships());
        // `userName eq "x"` is how connectors look accounts up: answer it from the index.
        let candidates: Box<dyn Iterator<Item = &Resource>> =
            match filter.and_then(Filter::user_name_eq) {
                Some(name) if kind == Kind::User => Box::new(
                    self.find_user(name)
                        .and_then(|id| self.get(Kind::User, id))
                        .into_iter(),
                ),
                _ => Box::new(self.items.values().filter(|r| r.kind == kind)),
            };
        candidates
            .map(|r| (self.render_with(r, idx.as_ref()), r))
            .filter(|(v, _)| filter.is_none_or(|f| f.matches(v)))
            .collect()
    }
}

fn member_values(g: &Resource) -> impl Iterator<Item = &str> {
    g.attrs
        .get("members")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("value").and_then(Value::as_str))
}

fn display_of(r: &Resource) -> Option<String> {
    let s = |k: &str| r.attrs.get(k).and_then(Value::as_str).map(str::to_owned);
    match r.kind {
        Kind::User => s("displayName").or_else(|| s("userName")),
        Kind::Group => s("displayName"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_and_ids_have_the_documented_shape() {
        let t = now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
        let mut s = Store::new("http://x".into());
        let id = s.new_id();
        assert_eq!(id.len(), 36);
        assert_ne!(id, s.new_id());
    }

    #[test]
    fn etags_compare_weakly() {
        assert!(etag_matches("W/\"3\"", 3));
        assert!(etag_matches("\"3\"", 3));
        assert!(etag_matches("W/\"1\", W/\"3\"", 3));
        assert!(etag_matches("*", 3));
        assert!(!etag_matches("W/\"2\"", 3));
    }
}
