//! Permissions are `{"resource": ["action", …]}`. A request passes when the key holds every
//! requested action of every requested resource. No wildcards: what a key may do is spelled
//! out, so reading a key's permissions tells the whole story.
//!
//! Values arrive as a stream of jsonb tokens (`crate::pg::jsonb` walks the stored jsonb
//! itself, so a number such as `1e400` or a deeply nested value is just a token, never a
//! parse failure). Pure: no Postgres here.

use std::fmt;

/// Most resources one permissions value may name.
pub const MAX_RESOURCES: usize = 100;
/// Most actions per resource.
pub const MAX_ACTIONS: usize = 100;
/// Longest resource or action name, in characters.
pub const MAX_NAME_CHARS: usize = 128;

/// One token of a jsonb value, as PostgreSQL's jsonb iterator yields them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Token {
    BeginObject,
    EndObject,
    /// `raw_scalar`: the whole value is a bare scalar, which jsonb stores as a one-element array.
    BeginArray {
        raw_scalar: bool,
    },
    EndArray,
    Key(String),
    Scalar(Scalar),
}

/// A jsonb scalar. Numbers keep their text as PostgreSQL prints them (`numeric_out`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scalar {
    Null,
    Bool(bool),
    Number(String),
    String(String),
}

impl Scalar {
    pub fn kind(&self) -> &'static str {
        match self {
            Scalar::Null => "null",
            Scalar::Bool(_) => "a boolean",
            Scalar::Number(_) => "a number",
            Scalar::String(_) => "a string",
        }
    }
}

/// Why a value is not a usable permissions object. Displayed after "permissions ".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    NotAnObject(&'static str),
    NotAnArray {
        resource: String,
        found: &'static str,
    },
    NotAString {
        resource: String,
        found: &'static str,
    },
    EmptyName {
        resource: Option<String>,
    },
    NameTooLong {
        resource: Option<String>,
    },
    ControlCharacter {
        resource: Option<String>,
    },
    TooManyResources,
    TooManyActions {
        resource: String,
    },
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let within = |r: &Option<String>| match r {
            Some(r) => format!("an action of resource \"{r}\""),
            None => "a resource name".to_string(),
        };
        match self {
            Problem::NotAnObject(found) => {
                write!(f, "must be a JSON object of string arrays, not {found}")
            }
            Problem::NotAnArray { resource, found } => write!(
                f,
                "resource \"{resource}\" must map to an array of strings, not {found}"
            ),
            Problem::NotAString { resource, found } => write!(
                f,
                "resource \"{resource}\" has an action that is {found}, not a string"
            ),
            Problem::EmptyName { resource } => write!(f, "has {} that is empty", within(resource)),
            Problem::NameTooLong { resource } => write!(
                f,
                "has {} longer than {MAX_NAME_CHARS} characters",
                within(resource)
            ),
            Problem::ControlCharacter { resource } => {
                write!(f, "has {} with a control character", within(resource))
            }
            Problem::TooManyResources => {
                write!(f, "name more than {MAX_RESOURCES} resources")
            }
            Problem::TooManyActions { resource } => write!(
                f,
                "list more than {MAX_ACTIONS} actions for resource \"{resource}\""
            ),
        }
    }
}

/// A well-formed permissions value: resources with their actions, in jsonb's key order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Permissions {
    entries: Vec<(String, Vec<String>)>,
}

fn truncated(name: &str) -> String {
    name.chars().take(64).collect()
}

fn check_name(name: &str, resource: Option<&str>) -> Result<(), Problem> {
    let resource = resource.map(truncated);
    if name.is_empty() {
        return Err(Problem::EmptyName { resource });
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(Problem::NameTooLong { resource });
    }
    if name.chars().any(char::is_control) {
        return Err(Problem::ControlCharacter { resource });
    }
    Ok(())
}

fn kind_of(token: &Token) -> &'static str {
    match token {
        Token::BeginObject | Token::EndObject | Token::Key(_) => "an object",
        Token::BeginArray { raw_scalar: false } | Token::EndArray => "an array",
        Token::BeginArray { raw_scalar: true } => "a scalar",
        Token::Scalar(s) => s.kind(),
    }
}

impl Permissions {
    /// Reads a permissions value, refusing anything but `{"resource": ["action", …]}` within the
    /// bounds above. For values a caller supplies.
    pub fn parse(tokens: impl IntoIterator<Item = Token>) -> Result<Self, Problem> {
        let mut tokens = tokens.into_iter();
        match tokens.next() {
            Some(Token::BeginObject) => {}
            Some(Token::BeginArray { raw_scalar: true }) => {
                let found = tokens.next().map_or("a scalar", |t| kind_of(&t));
                return Err(Problem::NotAnObject(found));
            }
            Some(other) => return Err(Problem::NotAnObject(kind_of(&other))),
            None => return Err(Problem::NotAnObject("nothing")),
        }
        let mut entries: Vec<(String, Vec<String>)> = Vec::new();
        loop {
            let resource = match tokens.next() {
                Some(Token::Key(k)) => k,
                _ => return Ok(Permissions { entries }),
            };
            let resource = resource.as_str();
            check_name(resource, None)?;
            if entries.len() == MAX_RESOURCES {
                return Err(Problem::TooManyResources);
            }
            let resource_owned = resource.to_string();
            match tokens.next() {
                Some(Token::BeginArray { raw_scalar: false }) => {}
                other => {
                    return Err(Problem::NotAnArray {
                        resource: truncated(resource),
                        found: other.as_ref().map_or("nothing", kind_of),
                    })
                }
            }
            let mut actions = Vec::new();
            loop {
                match tokens.next() {
                    Some(Token::EndArray) => break,
                    Some(Token::Scalar(Scalar::String(action))) => {
                        check_name(&action, Some(resource))?;
                        if actions.len() == MAX_ACTIONS {
                            return Err(Problem::TooManyActions {
                                resource: truncated(resource),
                            });
                        }
                        actions.push(action);
                    }
                    other => {
                        return Err(Problem::NotAString {
                            resource: truncated(resource),
                            found: other.as_ref().map_or("nothing", kind_of),
                        })
                    }
                }
            }
            entries.push((resource_owned, actions));
        }
    }

    /// Reads what a stored key holds, keeping every well-formed resource and action and
    /// skipping the rest: a value stored before a rule existed still grants what it clearly
    /// says, and nothing more.
    pub fn read_held(tokens: impl IntoIterator<Item = Token>) -> Self {
        let mut entries: Vec<(String, Vec<String>)> = Vec::new();
        let mut depth = 0usize;
        let mut current: Option<usize> = None;
        for token in tokens {
            match token {
                Token::BeginObject | Token::BeginArray { .. } => depth += 1,
                Token::EndObject | Token::EndArray => {
                    depth = depth.saturating_sub(1);
                    if depth <= 1 {
                        current = None;
                    }
                }
                Token::Key(k) if depth == 1 => {
                    entries.push((k, Vec::new()));
                    current = Some(entries.len() - 1);
                }
                Token::Scalar(Scalar::String(a)) if depth == 2 => {
                    if let Some(i) = current {
                        entries[i].1.push(a);
                    }
                }
                _ => {}
            }
        }
        Permissions { entries }
    }

    /// Does this grant `action` on `resource`?
    pub fn holds(&self, resource: &str, action: &str) -> bool {
        self.entries
            .iter()
            .any(|(r, actions)| r == resource && actions.iter().any(|a| a == action))
    }

    /// Does this grant every action of every resource of `requested`?
    pub fn grants(&self, requested: &Permissions) -> bool {
        requested
            .entries
            .iter()
            .all(|(r, actions)| actions.iter().all(|a| self.holds(r, a)))
    }

    /// As JSON, for the audit log.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::Value::Object(
            self.entries
                .iter()
                .map(|(r, actions)| (r.clone(), serde_json::json!(actions)))
                .collect(),
        )
    }

    /// Resource and action pairs, for messages and audits.
    pub fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries
            .iter()
            .flat_map(|(r, actions)| actions.iter().map(move |a| (r.as_str(), a.as_str())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Token::*;

    fn s(v: &str) -> Token {
        Scalar(super::Scalar::String(v.to_string()))
    }

    fn number() -> Token {
        Scalar(super::Scalar::Number("1e400".to_string()))
    }

    fn object(entries: &[(&str, &[&str])]) -> Vec<Token> {
        let mut t = vec![BeginObject];
        for (r, actions) in entries {
            t.push(Key(r.to_string()));
            t.push(BeginArray { raw_scalar: false });
            for a in *actions {
                t.push(s(a));
            }
            t.push(EndArray);
        }
        t.push(EndObject);
        t
    }

    fn parse(entries: &[(&str, &[&str])]) -> Permissions {
        Permissions::parse(object(entries)).unwrap()
    }

    #[test]
    fn every_action_of_every_resource_is_needed() {
        let held = parse(&[("files", &["read", "write"]), ("users", &["read"])]);
        assert!(held.grants(&parse(&[("files", &["read"])])));
        assert!(held.grants(&parse(&[
            ("files", &["read", "write"]),
            ("users", &["read"])
        ])));
        assert!(!held.grants(&parse(&[("files", &["delete"])])));
        assert!(!held.grants(&parse(&[("files", &["read"]), ("billing", &["read"])])));
        assert!(held.grants(&parse(&[])));
        assert!(Permissions::default().grants(&parse(&[])));
        assert!(!Permissions::default().grants(&parse(&[("files", &["read"])])));
        assert!(held.holds("files", "write") && !held.holds("files", "admin"));
    }

    #[test]
    fn shapes_that_are_not_permissions() {
        let problem = |t: Vec<Token>| Permissions::parse(t).unwrap_err().to_string();
        assert_eq!(
            problem(vec![BeginArray { raw_scalar: false }, EndArray]),
            "must be a JSON object of string arrays, not an array"
        );
        assert_eq!(
            problem(vec![BeginArray { raw_scalar: true }, number(), EndArray]),
            "must be a JSON object of string arrays, not a number"
        );
        assert_eq!(
            problem(vec![BeginObject, Key("files".into()), s("read"), EndObject]),
            "resource \"files\" must map to an array of strings, not a string"
        );
        assert_eq!(
            problem(vec![
                BeginObject,
                Key("files".into()),
                BeginArray { raw_scalar: false },
                number(),
                EndArray,
                EndObject
            ]),
            "resource \"files\" has an action that is a number, not a string"
        );
        assert_eq!(
            problem(vec![
                BeginObject,
                Key("files".into()),
                BeginArray { raw_scalar: false },
                BeginArray { raw_scalar: false },
                EndArray,
                EndArray,
                EndObject
            ]),
            "resource \"files\" has an action that is an array, not a string"
        );
        assert!(problem(object(&[("", &["read"])])).contains("resource name that is empty"));
        assert!(problem(object(&[("f", &[""])])).contains("action of resource \"f\""));
        assert!(problem(object(&[("f\u{7}", &["read"])])).contains("control character"));
    }

    #[test]
    fn bounds() {
        let long = "x".repeat(MAX_NAME_CHARS + 1);
        assert!(matches!(
            Permissions::parse(object(&[(long.as_str(), &["read"])])),
            Err(Problem::NameTooLong { .. })
        ));
        let names: Vec<String> = (0..=MAX_RESOURCES).map(|i| format!("r{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let many: Vec<(&str, &[&str])> = names.iter().map(|n| (*n, &["read"][..])).collect();
        assert_eq!(
            Permissions::parse(object(&many)),
            Err(Problem::TooManyResources)
        );
        assert!(matches!(
            Permissions::parse(object(&[("files", &names)])),
            Err(Problem::TooManyActions { .. })
        ));
    }

    #[test]
    fn held_values_grant_only_what_is_well_formed() {
        let tokens = vec![
            BeginObject,
            Key("files".into()),
            BeginArray { raw_scalar: false },
            s("read"),
            number(),
            BeginObject,
            Key("deep".into()),
            s("write"),
            EndObject,
            EndArray,
            Key("users".into()),
            s("read"),
            EndObject,
        ];
        let held = Permissions::read_held(tokens);
        assert!(held.holds("files", "read"));
        assert!(!held.holds("files", "write"));
        assert!(!held.holds("deep", "write"));
        assert!(!held.holds("users", "read"));
    }
}
