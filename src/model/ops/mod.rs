//! What `ops.yaml` and runbooks say ([`spec`]) and what ops records ([`records`]): plain data
//! the Uplink personas, the store and the ingress share.

pub(crate) mod error;
pub(crate) mod notification;
pub(crate) mod records;
pub(crate) mod silence;
pub(crate) mod spec;

/// A value as the API spells it (`needs_human`, `outage`; `none` for a missing one), for text
/// humans read next to the JSON.
pub(crate) fn wire_name(value: &impl serde::Serialize) -> String {
    match serde_json::to_value(value) {
        Ok(serde_json::Value::String(name)) => name,
        Ok(serde_json::Value::Null) | Err(_) => "none".into(),
        Ok(other) => other.to_string(),
    }
}
