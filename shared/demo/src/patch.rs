//! PATCH operations (RFC 7644 §3.5.2) applied to a resource's stored attributes.
//!
//! Operations apply to a working copy; the caller commits only when every operation
//! succeeded and the result still validates, so a PATCH is atomic.

use serde_json::{Map, Value};

use crate::error::ScimError;
use crate::filter::{self, Filter, Scope};
use crate::schema::{self, Attr, Kind, Ty, PATCH_SCHEMA};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Add,
    Replace,
    Remove,
}

#[derive(Debug)]
enum Target {
    /// `active`, `name.givenName`, `urn:…:enterprise:2.0:User:manager.value`.
    Plain(Vec<&'static Attr>),
    /// `members[value eq "x"]`, `emails[type eq "work"].value`; `emails.value` (filter None).
    Elements {
        attr: &'static Attr,
        filter: Option<Filter>,
        sub: Option<&'static Attr>,
    },
}

fn read_only_check(chain: &[&Attr], path: &str) -> Result<(), ScimError> {
    if chain.iter().any(|a| a.is_read_only()) {
        return Err(ScimError::mutability(format!("\"{path}\" is read-only")));
    }
    Ok(())
}

fn parse_path(kind: Kind, path: &str) -> Result<Target, ScimError> {
    let unknown = || ScimError::invalid_path(format!("unknown attribute path \"{path}\""));
    if let Some((attr_path, rest)) = path.split_once('[') {
        let close = rest
            .rfind(']')
            .ok_or_else(|| ScimError::invalid_path(format!("missing \"]\" in \"{path}\"")))?;
        let (inner, after) = (&rest[..close], &rest[close + 1..]);
        let chain = schema::resolve(kind, attr_path).ok_or_else(unknown)?;
        let [attr] = chain[..] else {
            return Err(unknown());
        };
        if !(attr.multi && attr.ty == Ty::Complex) {
            return Err(ScimError::invalid_path(format!(
                "\"{attr_path}\" is not a multi-valued complex attribute"
            )));
        }
        let sub = match after {
            "" => None,
            s => Some(
                s.strip_prefix('.')
                    .and_then(|s| attr.sub_attr(s))
                    .ok_or_else(unknown)?,
            ),
        };
        read_only_check(&[attr], path)?;
        if let Some(s) = sub {
            read_only_check(&[s], path)?;
        }
        let filter = filter::parse(inner, Scope::Element(attr)).map_err(|e| {
            ScimError::invalid_path(format!("bad value filter in \"{path}\": {}", e.detail))
        })?;
        return Ok(Target::Elements {
            attr,
            filter: Some(filter),
            sub,
        });
    }
    let chain = schema::resolve(kind, path).ok_or_else(unknown)?;
    read_only_check(&chain, path)?;
    match chain[..] {
        [attr, sub] if attr.multi => Ok(Target::Elements {
            attr,
            filter: None,
            sub: Some(sub),
        }),
        _ => Ok(Target::Plain(chain)),
    }
}

fn needs_value(value: Option<&Value>, op: Op) -> Result<&Value, ScimError> {
    value.ok_or_else(|| ScimError::invalid_value(format!("\"{op:?}\" needs a \"value\"")))
}

fn same_element(a: &Value, b: &Value) -> bool {
    match (a.get("value"), b.get("value")) {
        (Some(x), Some(y)) => x == y,
        _ => a == b,
    }
}

fn is_primary(v: &Value) -> bool {
    v.get("primary") == Some(&Value::Bool(true))
}

/// A new primary value demotes the old one (RFC 7643 §2.4: "primary" true at most once).
fn clear_primary<'a>(items: impl Iterator<Item = &'a mut Value>) {
    for item in items {
        if let Value::Object(o) = item {
            o.remove("primary");
        }
    }
}

fn merge(into: &mut Value, from: Value) {
    match (into, from) {
        (Value::Object(dst), Value::Object(src)) => {
            for (k, v) in src {
                dst.insert(k, v);
            }
        }
        (dst, src) => *dst = src,
    }
}

fn plain(
    op: Op,
    attrs: &mut Map<String, Value>,
    chain: &[&'static Attr],
    value: Option<&Value>,
) -> Result<(), ScimError> {
    let Some((last, parents)) = chain.split_last() else {
        return Err(ScimError::invalid_path("empty path"));
    };
    let mut obj = attrs;
    for p in parents {
        if op == Op::Remove && !obj.contains_key(p.name) {
            return Ok(());
        }
        let entry = obj
            .entry(p.name)
            .or_insert_with(|| Value::Object(Map::new()));
        obj = entry
            .as_object_mut()
            .ok_or_else(|| ScimError::invalid_path(format!("\"{}\" is not complex", p.name)))?;
    }
    match op {
        Op::Remove => {
            if let (true, Some(v)) = (last.multi, value) {
                // Non-standard but widespread (Azure AD): remove the listed values.
                let gone = schema::canonical(last, v, true)?;
                let gone = gone
                    .as_ref()
                    .and_then(Value::as_array)
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                if let Some(Value::Array(items)) = obj.get_mut(last.name) {
                    items.retain(|i| !gone.iter().any(|g| same_element(i, g)));
                }
            } else {
                obj.remove(last.name);
            }
        }
        Op::Add | Op::Replace => {
            let v = needs_value(value, op)?;
            let c = schema::canonical(last, v, true)?;
            match (c, last.multi, last.ty) {
                (None, _, _) => {
                    obj.remove(last.name);
                }
                (Some(Value::Array(new)), true, _) if op == Op::Add => {
                    let items = obj
                        .entry(last.name)
                        .or_insert_with(|| Value::Array(Vec::new()));
                    if let Value::Array(items) = items {
                        if new.iter().any(is_primary) {
                            clear_primary(items.iter_mut());
                        }
                        for n in new {
                            match items.iter_mut().find(|i| same_element(i, &n)) {
                                Some(existing) => merge(existing, n),
                                None => items.push(n),
                            }
                        }
                    }
                }
                (Some(c), false, Ty::Complex) => {
                    let slot = obj
                        .entry(last.name)
                        .or_insert_with(|| Value::Object(Map::new()));
                    merge(slot, c);
                }
                (Some(c), _, _) => {
                    obj.insert(last.name.to_owned(), c);
                }
            }
        }
    }
    Ok(())
}

fn elements(
    op: Op,
    attrs: &mut Map<String, Value>,
    (attr, filter, sub): (&'static Attr, Option<&Filter>, Option<&'static Attr>),
    value: Option<&Value>,
    rendered: &Value,
) -> Result<(), ScimError> {
    let hits: Vec<usize> = rendered
        .get(attr.name)
        .and_then(Value::as_array)
        .map(|els| {
            els.iter()
                .enumerate()
                .filter(|(_, e)| filter.is_none_or(|f| f.matches(e)))
                .map(|(i, _)| i)
                .collect()
        })
        .unwrap_or_default();
    let Some(Value::Array(items)) = attrs.get_mut(attr.name) else {
        return match op {
            Op::Remove => Ok(()),
            _ => Err(ScimError::no_target(format!(
                "\"{}\" has no values",
                attr.name
            ))),
        };
    };
    match op {
        Op::Remove => {
            // Removing what is already gone is a no-op, so retries stay idempotent.
            for &i in hits.iter().rev() {
                match (sub, items.get_mut(i)) {
                    (Some(s), Some(Value::Object(o))) => {
                        o.remove(s.name);
                    }
                    (None, Some(_)) => {
                        items.remove(i);
                    }
                    _ => {}
                }
            }
        }
        Op::Add | Op::Replace => {
            if hits.is_empty() {
                return Err(ScimError::no_target(format!(
                    "no value of \"{}\" matches the filter",
                    attr.name
                )));
            }
            let v = needs_value(value, op)?;
            let new = match sub {
                Some(s) => schema::canonical(s, v, true)?,
                None => schema::canonical(attr, v, false)?,
            };
            let makes_primary = match (sub, &new) {
                (Some(s), Some(v)) => s.name == "primary" && v == &Value::Bool(true),
                (None, Some(v)) => is_primary(v),
                _ => false,
            };
            if makes_primary {
                let others = items
                    .iter_mut()
                    .enumerate()
                    .filter(|(i, _)| !hits.contains(i));
                clear_primary(others.map(|(_, v)| v));
            }
            for &i in &hits {
                let Some(Value::Object(o)) = items.get_mut(i) else {
                    continue;
                };
                match (sub, &new) {
                    (Some(s), None) => {
                        o.remove(s.name);
                    }
                    (Some(s), Some(n)) => {
                        o.insert(s.name.to_owned(), n.clone());
                    }
                    (None, Some(Value::Object(n))) => {
                        for (k, v) in n {
                            o.insert(k.clone(), v.clone());
                        }
                    }
                    (None, _) => {}
                }
            }
        }
    }
    Ok(())
}

/// Drops attributes left empty by the operations (an empty `name` or `members`).
fn prune(attrs: &mut Map<String, Value>) {
    attrs.retain(|_, v| match v {
        Value::Null => false,
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => {
            prune(o);
            !o.is_empty()
        }
        _ => true,
    });
}

/// Applies a PatchOp request body to `attrs`. `render` gives the resource as a client sees
/// it, so value filters can use computed sub-attributes (`members[type eq "User"]`).
pub(crate) fn apply(
    kind: Kind,
    attrs: &mut Map<String, Value>,
    body: &Value,
    render: &dyn Fn(&Map<String, Value>) -> Value,
) -> Result<(), ScimError> {
    let Value::Object(body) = body else {
        return Err(ScimError::invalid_syntax(
            "the request body must be a JSON object",
        ));
    };
    let field = |name: &str| {
        body.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let schema_ok = field("schemas")
        .and_then(Value::as_array)
        .is_some_and(|s| s.iter().any(|u| u.as_str() == Some(PATCH_SCHEMA)));
    if !schema_ok {
        return Err(ScimError::invalid_syntax(format!(
            "\"schemas\" must be [\"{PATCH_SCHEMA}\"]"
        )));
    }
    let ops = match field("Operations") {
        Some(Value::Array(ops)) if !ops.is_empty() => ops,
        _ => {
            return Err(ScimError::invalid_syntax(
                "\"Operations\" must be a non-empty array",
            ))
        }
    };
    for (n, raw) in ops.iter().enumerate() {
        let Value::Object(raw) = raw else {
            return Err(ScimError::invalid_syntax(format!(
                "operation {n} is not an object"
            )));
        };
        let get = |name: &str| {
            raw.iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v)
        };
        let op = match get("op")
            .and_then(Value::as_str)
            .map(str::to_ascii_lowercase)
            .as_deref()
        {
            Some("add") => Op::Add,
            Some("replace") => Op::Replace,
            Some("remove") => Op::Remove,
            other => {
                return Err(ScimError::invalid_value(format!(
                    "operation {n}: \"op\" must be add, replace or remove, not {other:?}"
                )))
            }
        };
        let value = get("value");
        match get("path") {
            Some(Value::String(path)) => match parse_path(kind, path)? {
                Target::Plain(chain) => plain(op, attrs, &chain, value)?,
                Target::Elements { attr, filter, sub } => {
                    let rendered = render(attrs);
                    elements(op, attrs, (attr, filter.as_ref(), sub), value, &rendered)?
                }
            },
            Some(other) => {
                return Err(ScimError::invalid_path(format!(
                    "operation {n}: \"path\" must be a string, not {other}"
                )))
            }
            None if op == Op::Remove => {
                return Err(ScimError::no_target(format!(
                    "operation {n}: remove needs a \"path\""
                )))
            }
            None => {
                let Some(Value::Object(values)) = value else {
                    return Err(ScimError::invalid_value(format!(
                        "operation {n}: without a \"path\", \"value\" must be an object of attributes"
                    )));
                };
                for (k, v) in values {
                    if ["schemas", "id", "meta"]
                        .iter()
                        .any(|s| k.eq_ignore_ascii_case(s))
                    {
                        continue;
                    }
                    match parse_path(kind, k)? {
                        Target::Plain(chain) => plain(op, attrs, &chain, Some(v))?,
                        Target::Elements { .. } => {
                            return Err(ScimError::invalid_path(format!(
                                "\"{k}\" is not an attribute name"
                            )))
                        }
                    }
                }
            }
        }
        prune(attrs);
    }
    Ok(())
}
