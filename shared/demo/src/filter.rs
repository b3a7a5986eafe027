//! SCIM filter expressions (RFC 7644 §3.4.2.2): parsing against the schema tables and
//! evaluation against a resource's JSON representation.
//!
//! Attributes are resolved at parse time so an unknown attribute or a type mismatch is a
//! `400 invalidFilter` rather than a silent empty result.

use serde_json::Value;

use crate::error::ScimError;
use crate::schema::{self, Attr, Kind, Ty};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Eq,
    Ne,
    Co,
    Sw,
    Ew,
    Gt,
    Ge,
    Lt,
    Le,
}

impl Op {
    fn parse(s: &str) -> Option<Op> {
        Some(match s.to_ascii_lowercase().as_str() {
            "eq" => Op::Eq,
            "ne" => Op::Ne,
            "co" => Op::Co,
            "sw" => Op::Sw,
            "ew" => Op::Ew,
            "gt" => Op::Gt,
            "ge" => Op::Ge,
            "lt" => Op::Lt,
            "le" => Op::Le,
            _ => return None,
        })
    }
}

/// A parsed filter. Paths are chains of attribute definitions relative to the scope the
/// filter was parsed in (the resource, or one element of a multi-valued attribute).
#[derive(Debug)]
pub(crate) enum Filter {
    And(Box<Filter>, Box<Filter>),
    Or(Box<Filter>, Box<Filter>),
    Not(Box<Filter>),
    Present(Vec<&'static Attr>),
    Compare(Vec<&'static Attr>, Op, Value),
    ValuePath(Vec<&'static Attr>, Box<Filter>),
}

/// Where attribute names in a filter are looked up.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Scope {
    Resource(Kind),
    Element(&'static Attr),
}

impl Scope {
    fn resolve(self, path: &str) -> Option<Vec<&'static Attr>> {
        match self {
            Scope::Resource(kind) => schema::resolve(kind, path),
            Scope::Element(parent) => {
                let mut chain = Vec::new();
                let mut scope = parent.sub;
                for seg in path.split('.') {
                    let a = schema::find(scope, seg)?;
                    chain.push(a);
                    scope = a.sub;
                }
                Some(chain)
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Open,
    Close,
    OpenBracket,
    CloseBracket,
    Word(String),
    Str(String),
}

fn tokenize(s: &str) -> Result<Vec<Tok>, ScimError> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        match c {
            c if c.is_whitespace() => {
                chars.next();
            }
            '(' | ')' | '[' | ']' => {
                chars.next();
                out.push(match c {
                    '(' => Tok::Open,
                    ')' => Tok::Close,
                    '[' => Tok::OpenBracket,
                    _ => Tok::CloseBracket,
                });
            }
            '"' => {
                // A JSON string literal: reuse serde_json for exact escape semantics.
                chars.next();
                let mut end = None;
                let mut escaped = false;
                for (j, c) in chars.by_ref() {
                    if escaped {
                        escaped = false;
                    } else if c == '\\' {
                        escaped = true;
                    } else if c == '"' {
                        end = Some(j);
                        break;
                    }
                }
                let end = end.ok_or_else(|| {
                    ScimError::invalid_filter(format!("unterminated string starting at {i}"))
                })?;
                let lit: String = serde_json::from_str(&s[i..=end]).map_err(|e| {
                    ScimError::invalid_filter(format!("bad string literal at {i}: {e}"))
                })?;
                out.push(Tok::Str(lit));
            }
            _ => {
                let mut end = s.len();
                while let Some(&(j, c)) = chars.peek() {
                    if c.is_whitespace() || matches!(c, '(' | ')' | '[' | ']' | '"') {
                        end = j;
                        break;
                    }
                    chars.next();
                }
                out.push(Tok::Word(s[i..end].to_owned()));
            }
        }
    }
    Ok(out)
}

struct Parser {
    toks: Vec<Tok>,
    pos: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Tok> {
        self.toks.get(self.pos)
    }

    fn next(&mut self) -> Option<Tok> {
        let t = self.toks.get(self.pos).cloned();
        self.pos += 1;
        t
    }

    fn peek_keyword(&self, kw: &str) -> bool {
        matches!(self.peek(), Some(Tok::Word(w)) if w.eq_ignore_ascii_case(kw))
    }

    fn expect(&mut self, tok: Tok, what: &str) -> Result<(), ScimError> {
        match self.next() {
            Some(t) if t == tok => Ok(()),
            other => Err(ScimError::invalid_filter(format!(
                "expected {what}, found {other:?}"
            ))),
        }
    }

    fn or(&mut self, scope: Scope) -> Result<Filter, ScimError> {
        let mut left = self.and(scope)?;
        while self.peek_keyword("or") {
            self.pos += 1;
            let right = self.and(scope)?;
            left = Filter::Or(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn and(&mut self, scope: Scope) -> Result<Filter, ScimError> {
        let mut left = self.unary(scope)?;
        while self.peek_keyword("and") {
            self.pos += 1;
            let right = self.unary(scope)?;
            left = Filter::And(Box::new(left), Box::new(right));
        }
        Ok(left)
    }

    fn unary(&mut self, scope: Scope) -> Result<Filter, ScimError> {
        if self.peek_keyword("not") && self.toks.get(self.pos + 1) == Some(&Tok::Open) {
            self.pos += 2;
            let inner = self.or(scope)?;
            self.expect(Tok::Close, "\")\"")?;
            return Ok(Filter::Not(Box::new(inner)));
        }
        match self.next() {
            Some(Tok::Open) => {
                let inner = self.or(scope)?;
                self.expect(Tok::Close, "\")\"")?;
                Ok(inner)
            }
            Some(Tok::Word(path)) => self.attr_expr(scope, &path),
            other => Err(ScimError::invalid_filter(format!(
                "expected an attribute or \"(\", found {other:?}"
            ))),
        }
    }

    fn attr_expr(&mut self, scope: Scope, path: &str) -> Result<Filter, ScimError> {
        let mut chain = scope
            .resolve(path)
            .ok_or_else(|| ScimError::invalid_filter(format!("unknown attribute \"{path}\"")))?;
        let Some(last) = chain.last().copied() else {
            return Err(ScimError::invalid_filter(format!(
                "unknown attribute \"{path}\""
            )));
        };
        if self.peek() == Some(&Tok::OpenBracket) {
            if matches!(scope, Scope::Element(_)) || !(last.multi && last.ty == Ty::Complex) {
                return Err(ScimError::invalid_filter(format!(
                    "\"{path}[…]\" needs a top-level multi-valued complex attribute"
                )));
            }
            self.pos += 1;
            let inner = self.or(Scope::Element(last))?;
            self.expect(Tok::CloseBracket, "\"]\"")?;
            return Ok(Filter::ValuePath(chain, Box::new(inner)));
        }
        let op = match self.next() {
            Some(Tok::Word(w)) if w.eq_ignore_ascii_case("pr") => {
                return Ok(Filter::Present(chain));
            }
            Some(Tok::Word(w)) => Op::parse(&w)
                .ok_or_else(|| ScimError::invalid_filter(format!("unknown operator \"{w}\"")))?,
            other => {
                return Err(ScimError::invalid_filter(format!(
                    "expected an operator after \"{path}\", found {other:?}"
                )))
            }
        };
        let lit = match self.next() {
            Some(Tok::Str(s)) => Value::String(s),
            Some(Tok::Word(w)) => match w.as_str() {
                "true" => Value::Bool(true),
                "false" => Value::Bool(false),
                "null" => Value::Null,
                _ => serde_json::from_str::<serde_json::Number>(&w)
                    .map(Value::Number)
                    .map_err(|_| ScimError::invalid_filter(format!("bad value \"{w}\"")))?,
            },
            other => {
                return Err(ScimError::invalid_filter(format!(
                    "expected a value after \"{path}\", found {other:?}"
                )))
            }
        };
        // `emails eq "x"` compares the elements' `value` (RFC 7644 §3.4.2.2).
        let target = if last.ty == Ty::Complex {
            let value = last
                .sub_attr("value")
                .filter(|_| last.multi)
                .ok_or_else(|| {
                    ScimError::invalid_filter(format!(
                        "cannot compare complex attribute \"{path}\""
                    ))
                })?;
            chain.push(value);
            value
        } else {
            last
        };
        let ok = match (&lit, target.ty) {
            (Value::Null, _) => matches!(op, Op::Eq | Op::Ne),
            (Value::Bool(_), Ty::Boolean) => matches!(op, Op::Eq | Op::Ne),
            (Value::String(_), Ty::String | Ty::Reference | Ty::DateTime) => true,
            _ => false,
        };
        if !ok {
            return Err(ScimError::invalid_filter(format!(
                "operator {op:?} with {lit} does not apply to \"{path}\""
            )));
        }
        Ok(Filter::Compare(chain, op, lit))
    }
}

/// Parses a filter whose attribute names are looked up in `scope`.
pub(crate) fn parse(s: &str, scope: Scope) -> Result<Filter, ScimError> {
    let toks = tokenize(s)?;
    if toks.is_empty() {
        return Err(ScimError::invalid_filter("empty filter"));
    }
    let mut p = Parser { toks, pos: 0 };
    let f = p.or(scope)?;
    if let Some(t) = p.peek() {
        return Err(ScimError::invalid_filter(format!("unexpected {t:?}")));
    }
    Ok(f)
}

/// All values reached by following `chain` from `root`, flattening multi-valued attributes.
fn collect<'a>(root: &'a Value, chain: &[&Attr]) -> Vec<&'a Value> {
    let mut cur = vec![root];
    for a in chain {
        let mut next = Vec::new();
        for v in cur {
            let items: Box<dyn Iterator<Item = &Value>> = match v {
                Value::Array(items) => Box::new(items.iter()),
                other => Box::new(std::iter::once(other)),
            };
            for item in items {
                match item.get(a.name) {
                    Some(Value::Array(xs)) => next.extend(xs.iter()),
                    Some(x) => next.push(x),
                    None => {}
                }
            }
        }
        cur = next;
    }
    cur
}

fn present(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn compare(attr: &Attr, op: Op, actual: &Value, lit: &Value) -> bool {
    match (actual, lit) {
        (Value::Bool(a), Value::Bool(b)) => (a == b) == (op == Op::Eq),
        (Value::String(a), Value::String(b)) => {
            let (a, b) = if attr.case_exact {
                (a.clone(), b.clone())
            } else {
                (a.to_lowercase(), b.to_lowercase())
            };
            match op {
                Op::Eq => a == b,
                Op::Ne => a != b,
                Op::Co => a.contains(&b),
                Op::Sw => a.starts_with(&b),
                Op::Ew => a.ends_with(&b),
                Op::Gt => a > b,
                Op::Ge => a >= b,
                Op::Lt => a < b,
                Op::Le => a <= b,
            }
        }
        _ => false,
    }
}

impl Filter {
    /// The value of a filter that is exactly `userName eq "…"` (lets the store use its index).
    pub(crate) fn user_name_eq(&self) -> Option<&str> {
        match self {
            Filter::Compare(chain, Op::Eq, Value::String(s)) => match chain.as_slice() {
                [a] if a.name == "userName" => Some(s),
                _ => None,
            },
            _ => None,
        }
    }

    /// Does `v` (a resource, or one element for a value filter) match?
    pub(crate) fn matches(&self, v: &Value) -> bool {
        match self {
            Filter::And(a, b) => a.matches(v) && b.matches(v),
            Filter::Or(a, b) => a.matches(v) || b.matches(v),
            Filter::Not(a) => !a.matches(v),
            Filter::Present(chain) => collect(v, chain).into_iter().any(present),
            Filter::Compare(chain, op, lit) => {
                let Some(attr) = chain.last() else {
                    return false;
                };
                let values = collect(v, chain);
                match (op, lit) {
                    (Op::Eq, Value::Null) => !values.into_iter().any(present),
                    (Op::Ne, Value::Null) => values.into_iter().any(present),
                    // "not equal" holds when no value is equal (absent counts as not equal).
                    (Op::Ne, _) => !values.into_iter().any(|x| compare(attr, Op::Eq, x, lit)),
                    _ => values.into_iter().any(|x| compare(attr, *op, x, lit)),
                }
            }
            Filter::ValuePath(chain, inner) => {
                collect(v, chain).into_iter().any(|el| inner.matches(el))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn user() -> Value {
        json!({
            "userName": "Ada.Lovelace", "active": true, "id": "abc",
            "emails": [{"value": "ada@example.com", "type": "work"}, {"value": "ada@home.example", "type": "home"}],
            "name": {"givenName": "Ada"},
            "groups": [{"value": "g1"}],
        })
    }

    fn m(f: &str) -> bool {
        parse(f, Scope::Resource(Kind::User))
            .unwrap()
            .matches(&user())
    }

    #[test]
    fn operators_and_logic() {
        assert!(m(r#"userName eq "ada.lovelace""#));
        assert!(m(r#"USERNAME Eq "ADA.LOVELACE""#));
        assert!(!m(r#"id eq "ABC""#), "id is case-exact");
        assert!(m(r#"emails.value eq "ADA@example.com""#));
        assert!(m(r#"emails co "home.example""#));
        assert!(m(r#"emails[type eq "work" and value sw "ada@"]"#));
        assert!(!m(r#"emails[type eq "other"]"#));
        assert!(m(
            r#"active eq true and (userName sw "x" or name.givenName ew "da")"#
        ));
        assert!(m(r#"not (active eq false)"#));
        assert!(m("externalId eq null and title ne \"x\""));
        assert!(m("groups.value eq \"g1\" and name pr and not(nickName pr)"));
        assert!(m(
            r#"urn:ietf:params:scim:schemas:core:2.0:User:userName sw "ada""#
        ));
    }

    #[test]
    fn escapes() {
        let v = json!({"userName": "say \"hi\""});
        let f = parse(r#"userName eq "say \"hi\"""#, Scope::Resource(Kind::User)).unwrap();
        assert!(f.matches(&v));
    }

    #[test]
    fn errors() {
        for bad in [
            "",
            "userName",
            "userName eq",
            "nope eq \"x\"",
            "active co \"t\"",
            "userName eq \"x",
            "(userName eq \"x\"",
            "userName eq \"x\" and",
            "userName zz \"x\"",
            "name eq \"x\"",
            "userName eq 3",
        ] {
            let e = parse(bad, Scope::Resource(Kind::User)).unwrap_err();
            assert_eq!(e.scim_type, Some("invalidFilter"), "{bad}");
        }
    }
}
