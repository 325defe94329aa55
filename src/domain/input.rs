//! Input as clients send it — a JSON body over REST, the `data` of a `/ws` request — parsed once,
//! here, below both: text that is not JSON is a 400, JSON of the wrong shape a 422 naming the
//! field. The domain's values (`values`) then validate what the fields say.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer};

use crate::error::{Error, Result};

/// Parses JSON, telling text that is not JSON (400) from JSON of the wrong shape (422, by field).
/// Bodies must be objects: serde would otherwise fill a struct from an array by position.
pub fn parse<T: DeserializeOwned>(raw: &[u8]) -> Result<T> {
    let value: serde_json::Value =
        serde_json::from_slice(raw).map_err(|e| Error::MalformedJson(strip_position(&e.to_string())))?;
    from_value(value)
}

/// Parses an already-decoded JSON object (a REST body, or the `data` of a WebSocket request).
pub fn from_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    if !value.is_object() {
        return Err(Error::field("body", "must be a JSON object"));
    }
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let message = strip_position(&e.into_inner().to_string());
        let field = match message
            .strip_prefix("missing field `")
            .and_then(|m| m.split('`').next())
        {
            Some(missing) if path == "." => missing.to_owned(),
            Some(missing) => format!("{path}.{missing}"),
            None if path == "." => "body".to_owned(),
            None => path,
        };
        Error::field(&field, message)
    })
}

/// serde_json appends " at line L column C"; the field name says more to an API client.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(at) => message[..at].to_owned(),
        None => message.to_owned(),
    }
}

/// Tells an absent field (`None`) from an explicit `null` (`Some(None)`) in PATCH bodies.
pub fn double_option<'de, T: Deserialize<'de>, D: Deserializer<'de>>(de: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(de).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Sample {
        #[allow(dead_code)]
        email: String,
        #[allow(dead_code)]
        soc: Option<i64>,
    }

    fn field_of(raw: &str) -> String {
        match parse::<Sample>(raw.as_bytes()) {
            Err(Error::Validation(fields)) => fields.keys().next().unwrap().clone(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn non_json_is_malformed() {
        for raw in ["", "{", "not json", "{\"email\":\"a\"} trailing"] {
            assert!(
                matches!(parse::<Sample>(raw.as_bytes()), Err(Error::MalformedJson(_))),
                "{raw:?}"
            );
        }
    }

    #[test]
    fn shape_errors_name_the_field() {
        assert_eq!(field_of("{}"), "email");
        assert_eq!(field_of(r#"{"email": 5}"#), "email");
        assert_eq!(field_of(r#"{"email": "a", "soc": "full"}"#), "soc");
        assert_eq!(field_of("[1]"), "body");
    }
}
