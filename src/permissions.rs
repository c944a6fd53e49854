//! Permissions are `{"resource": ["action", …]}`. A request passes when the key holds every
//! requested action of every requested resource. No wildcards: what a key may do is spelled
//! out, so reading a key's permissions tells the whole story.

use serde_json::Value;

/// Why a value is not a permissions object, or `None` when it is one.
pub fn shape_problem(value: &Value) -> Option<String> {
    let Some(map) = value.as_object() else {
        return Some(format!(
            "must be a JSON object of string arrays, not {}",
            kind(value)
        ));
    };
    for (resource, actions) in map {
        if resource.is_empty() {
            return Some("has an empty resource name".into());
        }
        let Some(list) = actions.as_array() else {
            return Some(format!(
                "resource \"{resource}\" must map to an array of strings, not {}",
                kind(actions)
            ));
        };
        if let Some(bad) = list
            .iter()
            .find(|a| !a.is_string() || a.as_str() == Some(""))
        {
            return Some(format!(
                "resource \"{resource}\" has an action that is not a non-empty string: {bad}"
            ));
        }
    }
    None
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Does `held` grant every action of `requested`? A malformed request grants nothing.
pub fn grants(held: Option<&Value>, requested: &Value) -> bool {
    let Some(wanted) = requested.as_object() else {
        return false;
    };
    wanted.iter().all(|(resource, actions)| {
        let Some(actions) = actions.as_array() else {
            return false;
        };
        actions.iter().all(|action| match action.as_str() {
            Some(a) => holds(held, resource, a),
            None => false,
        })
    })
}

/// Does `held` grant `action` on `resource`?
pub fn holds(held: Option<&Value>, resource: &str, action: &str) -> bool {
    held.and_then(|h| h.get(resource))
        .and_then(Value::as_array)
        .is_some_and(|list| list.iter().any(|a| a.as_str() == Some(action)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_action_of_every_resource_is_needed() {
        let held = json!({"files": ["read", "write"], "users": ["read"]});
        assert!(grants(Some(&held), &json!({"files": ["read"]})));
        assert!(grants(
            Some(&held),
            &json!({"files": ["read", "write"], "users": ["read"]})
        ));
        assert!(!grants(Some(&held), &json!({"files": ["delete"]})));
        assert!(!grants(
            Some(&held),
            &json!({"files": ["read"], "billing": ["read"]})
        ));
        assert!(grants(Some(&held), &json!({})));
        assert!(!grants(None, &json!({"files": ["read"]})));
        assert!(grants(None, &json!({})));
    }

    #[test]
    fn malformed_requests_grant_nothing() {
        let held = json!({"files": ["read"]});
        assert!(!grants(Some(&held), &json!(["files"])));
        assert!(!grants(Some(&held), &json!({"files": "read"})));
        assert!(!grants(Some(&held), &json!({"files": [1]})));
    }

    #[test]
    fn shapes() {
        assert!(shape_problem(&json!({"files": ["read"]})).is_none());
        assert!(shape_problem(&json!({})).is_none());
        assert!(shape_problem(&json!([])).is_some());
        assert!(shape_problem(&json!("x")).is_some());
        assert!(shape_problem(&json!({"files": "read"})).is_some());
        assert!(shape_problem(&json!({"files": [1]})).is_some());
        assert!(shape_problem(&json!({"files": [""]})).is_some());
        assert!(shape_problem(&json!({"": ["read"]})).is_some());
    }

    #[test]
    fn single_holds() {
        let held = json!({"files": ["read"]});
        assert!(holds(Some(&held), "files", "read"));
        assert!(!holds(Some(&held), "files", "write"));
        assert!(!holds(Some(&held), "docs", "read"));
    }
}
