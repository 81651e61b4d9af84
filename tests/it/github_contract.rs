//! The contract: every request glitchlab sent to the fake GitHub and every answer the fake gave
//! must fit GitHub's own OpenAPI description — the subset of `@octokit/openapi` vendored in
//! `tests/contract/github/subset.json` (version and sha256 inside; `scripts/refresh-github-contract`
//! regenerates it). So neither the client nor the fake can drift from GitHub.
//!
//! A small validator of the schema features that subset uses: `$ref`, `type` (one or a list),
//! `nullable`, `enum`, `properties`, `items`, `allOf`/`anyOf`/`oneOf`. Requests must carry every
//! `required` field; answers are held to the type of every field they carry (the fake leaves out
//! some required fields glitchlab never reads, such as nested repository objects).

use std::sync::LazyLock;

use serde_json::{json, Value};

use crate::github_fake::Exchange;

static SUBSET: LazyLock<Value> = LazyLock::new(|| {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/contract/github/subset.json"
    );
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
});

/// Exchanges the fake made up on purpose (faults, outages, a refused token): not operations.
const SYNTHETIC: [&str; 3] = ["fault", "outage", "unauthorized"];

/// Panics with every breach of the contract in `log`.
pub fn check(log: &[Exchange]) {
    let mut breaches = Vec::new();
    for exchange in log {
        if SYNTHETIC.contains(&exchange.template.as_str()) {
            continue;
        }
        let name = format!("{} {}", exchange.method, exchange.template);
        let operation = &SUBSET["paths"][&exchange.template][&exchange.method];
        if operation.is_null() {
            breaches.push(format!("{name}: not an operation of the contract"));
            continue;
        }
        if let Some(body) = &exchange.request {
            let schema = &operation["requestBody"]["content"]["application/json"]["schema"];
            if schema.is_null() {
                breaches.push(format!("{name}: a body where GitHub takes none"));
            } else {
                validate(
                    schema,
                    body,
                    &format!("{name} request"),
                    true,
                    &mut breaches,
                );
            }
        }
        let status = exchange.status.to_string();
        let answer = &operation["responses"][&status];
        if answer.is_null() {
            breaches.push(format!("{name}: status {status} is not one GitHub answers"));
            continue;
        }
        let answer = resolve(answer);
        let schema = &answer["content"]["application/json"]["schema"];
        if !schema.is_null() {
            let what = format!("{name} {status} answer");
            validate(schema, &exchange.response, &what, false, &mut breaches);
        }
    }
    assert!(
        breaches.is_empty(),
        "contract breaches:\n{}",
        breaches.join("\n")
    );
}

fn resolve(schema: &Value) -> &Value {
    let mut schema = schema;
    while let Some(reference) = schema["$ref"].as_str() {
        let mut node = &*SUBSET;
        for part in reference.trim_start_matches("#/").split('/') {
            node = &node[part];
        }
        schema = node;
    }
    schema
}

fn validate(schema: &Value, value: &Value, at: &str, required: bool, out: &mut Vec<String>) {
    let schema = resolve(schema);
    if value.is_null() && (schema["nullable"] == true || type_allows(schema, "null")) {
        return;
    }
    for part in schema["allOf"].as_array().into_iter().flatten() {
        validate(part, value, at, required, out);
    }
    for key in ["anyOf", "oneOf"] {
        if let Some(branches) = schema[key].as_array() {
            let fits = branches.iter().any(|branch| {
                let mut errors = Vec::new();
                validate(branch, value, at, required, &mut errors);
                errors.is_empty()
            });
            if !fits {
                out.push(format!("{at}: fits none of {key}: {value}"));
            }
        }
    }
    if let Some(allowed) = schema["enum"].as_array() {
        if !allowed.contains(value) {
            out.push(format!("{at}: {value} is not one of {}", json!(allowed)));
        }
    }
    if !type_fits(schema, value) {
        out.push(format!("{at}: {value} is not of type {}", schema["type"]));
        return;
    }
    if let (Some(map), Some(properties)) = (value.as_object(), schema["properties"].as_object()) {
        for (key, field) in map {
            if let Some(field_schema) = properties.get(key) {
                validate(field_schema, field, &format!("{at}.{key}"), required, out);
            }
        }
        if required {
            for key in schema["required"].as_array().into_iter().flatten() {
                let key = key.as_str().unwrap_or_default();
                if !map.contains_key(key) {
                    out.push(format!("{at}: required `{key}` is missing"));
                }
            }
        }
    }
    if let (Some(items), Some(item_schema)) = (value.as_array(), schema.get("items")) {
        for (index, item) in items.iter().enumerate() {
            validate(item_schema, item, &format!("{at}[{index}]"), required, out);
        }
    }
}

fn type_allows(schema: &Value, name: &str) -> bool {
    match &schema["type"] {
        Value::String(one) => one == name,
        Value::Array(many) => many.iter().any(|t| t == name),
        _ => false,
    }
}

fn type_fits(schema: &Value, value: &Value) -> bool {
    let names: Vec<&str> = match &schema["type"] {
        Value::String(one) => vec![one.as_str()],
        Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
        _ => return true,
    };
    names.iter().any(|name| match *name {
        "object" => value.is_object(),
        "array" => value.is_array(),
        "string" => value.is_string(),
        "integer" => value.is_i64() || value.is_u64(),
        "number" => value.is_number(),
        "boolean" => value.is_boolean(),
        "null" => value.is_null(),
        _ => true,
    })
}

/// The validator can fail: a merge without `sha`'s type, a pull request whose `state` is no
/// state, an unknown operation and an undeclared status are all caught.
#[test]
fn the_contract_catches_drift() {
    let exchange =
        |method: &str, template: &str, request: Option<Value>, status: u16, response: Value| {
            Exchange {
                method: method.into(),
                template: template.into(),
                request,
                status,
                response,
            }
        };
    let merge = "/repos/{owner}/{repo}/pulls/{pull_number}/merge";
    let good = exchange(
        "put",
        merge,
        Some(json!({"sha": "abc", "merge_method": "squash"})),
        200,
        json!({"sha": "def", "merged": true, "message": "ok"}),
    );
    check(&[good]);
    let cases = [
        exchange(
            "put",
            merge,
            Some(json!({"sha": 7})),
            200,
            json!({"sha": "d", "merged": true, "message": "m"}),
        ),
        exchange(
            "put",
            merge,
            Some(json!({"merge_method": "octopus"})),
            200,
            json!({}),
        ),
        exchange("put", merge, None, 418, json!({})),
        exchange(
            "get",
            "/repos/{owner}/{repo}/pulls/{pull_number}",
            None,
            200,
            json!({"state": 3}),
        ),
        exchange("delete", "/repos/{owner}/{repo}", None, 204, json!(null)),
    ];
    for case in cases {
        let caught = std::panic::catch_unwind(|| check(std::slice::from_ref(&case)));
        assert!(caught.is_err(), "not caught: {case:?}");
    }
}
