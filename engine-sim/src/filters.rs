//! The `filters` query parameter of list and event requests, read as dockerd reads it.

use std::collections::BTreeMap;

/// Parsed filters: each key with its accepted values. Values under one key are alternatives
/// (any may match); different keys must all match. `label` is the exception, as in dockerd:
/// every label value given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filters {
    by_key: BTreeMap<String, Vec<String>>,
}

/// A `filters` value that is not the JSON dockerd takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid filter '{text}': {reason}")]
pub struct FilterError {
    pub text: String,
    pub reason: String,
}

impl Filters {
    /// Read `{"key": ["value", ...]}`, or the older `{"key": {"value": true}}`. An empty text
    /// is no filter at all.
    pub fn parse(text: &str) -> Result<Filters, FilterError> {
        if text.trim().is_empty() {
            return Ok(Filters::default());
        }
        let error = |reason: String| FilterError {
            text: text.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(text).map_err(|e| error(e.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| error("not a JSON object".to_owned()))?;
        let mut by_key = BTreeMap::new();
        for (key, values) in object {
            let list: Vec<String> = match values {
                serde_json::Value::Array(items) => items
                    .iter()
                    .map(|v| v.as_str().map(str::to_owned))
                    .collect::<Option<_>>()
                    .ok_or_else(|| error(format!("values of '{key}' are not all strings")))?,
                serde_json::Value::Object(map) => map
                    .iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect(),
                _ => return Err(error(format!("values of '{key}' are not a list"))),
            };
            by_key.insert(key.clone(), list);
        }
        Ok(Filters { by_key })
    }

    /// The values given for `key`, if the key was given at all.
    pub fn values(&self, key: &str) -> Option<&[String]> {
        self.by_key.get(key).map(Vec::as_slice)
    }

    /// Whether `candidate` passes the `key` filter by `matches` (no such filter: it passes).
    pub fn admits(&self, key: &str, matches: impl Fn(&str) -> bool) -> bool {
        match self.values(key) {
            None => true,
            Some(values) => values.iter().any(|v| matches(v)),
        }
    }

    /// Whether `labels` carry every `label` filter value (`key` or `key=value`).
    pub fn admits_labels<'a>(&self, labels: impl Fn(&str) -> Option<&'a str>) -> bool {
        match self.values("label") {
            None => true,
            Some(wanted) => wanted.iter().all(|w| match w.split_once('=') {
                Some((key, value)) => labels(key) == Some(value),
                None => labels(w).is_some(),
            }),
        }
    }

    /// The keys given, for rejecting ones an endpoint does not know.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.by_key.keys().map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_of_filters_are_read() {
        let f = Filters::parse(r#"{"type":["service","container"],"label":["a=1","b"]}"#).unwrap();
        assert!(f.admits("type", |v| v == "container"));
        assert!(!f.admits("type", |v| v == "network"));
        assert!(f.admits("event", |_| false), "absent keys admit everything");
        let labels = |k: &str| match k {
            "a" => Some("1"),
            "b" => Some("x"),
            _ => None,
        };
        assert!(f.admits_labels(labels));
        let only_a = |k: &str| if k == "a" { Some("1") } else { None };
        assert!(!f.admits_labels(only_a), "every label filter must match");

        let legacy = Filters::parse(r#"{"id":{"abc":true,"off":false}}"#).unwrap();
        assert_eq!(legacy.values("id"), Some(&["abc".to_owned()][..]));
        assert_eq!(Filters::parse("").unwrap(), Filters::default());
    }

    #[test]
    fn bad_filters_are_named() {
        for bad in ["[1]", "{", r#"{"id":[1]}"#, r#"{"id":"x"}"#] {
            let e = Filters::parse(bad).unwrap_err();
            assert!(e.to_string().starts_with("invalid filter"), "{e}");
        }
    }
}
