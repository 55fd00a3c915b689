//! A request body read field by field, so every mistake names its field
//! (`param` in the error) and says what was expected. Unknown fields are
//! ignored, as OpenAI clients send extras (`user`, `metadata`, ...).

use super::error::ApiError;
use serde_json::{Map, Value};

pub struct Body(Map<String, Value>);

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

pub fn wrong(param: &str, want: &str, got: &Value) -> ApiError {
    ApiError::field(
        param,
        format!("{param} must be {want}, got {}", type_name(got)),
    )
}

impl Body {
    pub fn parse(bytes: &[u8]) -> Result<Body, ApiError> {
        let v: Value = serde_json::from_slice(bytes)
            .map_err(|e| ApiError::bad_request(format!("the body is not valid JSON: {e}")))?;
        match v {
            Value::Object(m) => Ok(Body(m)),
            other => Err(ApiError::bad_request(format!(
                "the body must be a JSON object, got {}",
                type_name(&other)
            ))),
        }
    }

    /// A present, non-null field.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.0.get(key).filter(|v| !v.is_null())
    }

    pub fn f32(&self, key: &str) -> Result<Option<f32>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_f64() {
                Some(x) if x.is_finite() && x.abs() <= f32::MAX as f64 => Ok(Some(x as f32)),
                _ => Err(ApiError::field(key, format!("{key} is out of range: {n}"))),
            },
            Some(v) => Err(wrong(key, "a number", v)),
        }
    }

    /// An integer in `[min, max]`.
    pub fn int(&self, key: &str, min: i64, max: i64) -> Result<Option<i64>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_i64() {
                Some(x) if (min..=max).contains(&x) => Ok(Some(x)),
                _ => Err(ApiError::field(
                    key,
                    format!("{key} must be an integer in [{min}, {max}], got {n}"),
                )),
            },
            Some(v) => Err(wrong(key, "an integer", v)),
        }
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(wrong(key, "a boolean", v)),
        }
    }

    pub fn string(&self, key: &str) -> Result<Option<&str>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(wrong(key, "a string", v)),
        }
    }

    pub fn object(&self, key: &str) -> Result<Option<&Map<String, Value>>, ApiError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(m)) => Ok(Some(m)),
            Some(v) => Err(wrong(key, "an object", v)),
        }
    }
}

/// A token id below `vocab`, from a JSON number.
pub fn token_id(param: &str, v: &Value, vocab: usize) -> Result<u32, ApiError> {
    match v.as_u64() {
        Some(id) if (id as usize) < vocab => Ok(id as u32),
        _ => Err(ApiError::field(
            param,
            format!("{param} must hold token ids in [0, {vocab}), got {v}"),
        )),
    }
}
