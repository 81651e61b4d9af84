//! Secret values out of everything persisted: [`Redactor`] replaces the value of each variable
//! named in `[governance] secrets` — and the common encodings of it a command may print — with
//! `[REDACTED:<NAME>]`.
//!
//! What counts as the value, for each secret:
//! - the value as is;
//! - base64, standard and URL-safe, with and without padding; and, for values long enough, the
//!   part of the encoding that is the same wherever the value sits in a longer encoded text (the
//!   three byte alignments), so `printf 'token=%s' "$KEY" | base64` is caught too. Up to two
//!   bytes at each end of an embedded value can then stay encoded next to the marker;
//! - hex, lower and upper case;
//! - URL encoding (`%XX`, upper and lower case hex, and `+` for a space), when it differs from the
//!   value.
//!
//! The store applies it to every task, event, engine run and ops record it writes
//! (`storage::store`), the engines to their outputs before they are recorded, the prompt files
//! before they are written, and intake to a submission's text before anything else looks at it.

use serde_json::Value;

/// Secret values shorter than this are not redacted (they would match ordinary text).
const SECRET_BYTES_MIN: usize = 4;
/// Aligned base64 fragments shorter than this (in characters) are not searched for: too short to
/// be told from ordinary text. Six bytes of the secret encode to eight characters.
const FRAGMENT_CHARS_MIN: usize = 8;

/// Replaces secret values, plain and encoded, with `[REDACTED:<NAME>]` in text that is about to
/// be persisted.
#[derive(Debug, Default, Clone)]
pub struct Redactor {
    /// The secrets' names.
    names: Vec<String>,
    /// `(pattern, marker)`: every form of every value, longest first, so a secret containing
    /// another (or a full encoding containing a fragment) is replaced whole.
    patterns: Vec<(String, String)>,
}

impl Redactor {
    /// Reads the named variables from the service's environment (unset or short ones are skipped).
    pub fn from_env(names: &[String]) -> Self {
        let pairs = names
            .iter()
            .filter_map(|name| std::env::var(name).ok().map(|value| (name.clone(), value)));
        Self::new(pairs)
    }

    /// A redactor for the given `(name, value)` pairs.
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Self {
        let mut names = Vec::new();
        let mut patterns: Vec<(String, String)> = Vec::new();
        for (name, value) in pairs {
            if value.len() < SECRET_BYTES_MIN {
                continue;
            }
            let marker = format!("[REDACTED:{name}]");
            for form in forms_of(value.as_bytes()) {
                if form.len() >= SECRET_BYTES_MIN && !patterns.iter().any(|(p, _)| *p == form) {
                    patterns.push((form, marker.clone()));
                }
            }
            names.push(name);
        }
        patterns.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.len()));
        Self { names, patterns }
    }

    /// Whether there is nothing to redact (no secret configured and set): callers skip the work.
    pub(crate) fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// The length in bytes of the longest form of any secret (0 without secrets): text cut into
    /// pieces keeps this many bytes back from a cut that is not a line's end, so no piece ends
    /// in a secret's first bytes ([`crate::platform::live_output`]).
    pub(crate) fn longest_form_bytes(&self) -> usize {
        self.patterns
            .first()
            .map_or(0, |(pattern, _)| pattern.len())
    }

    /// The text with every secret value, plain or encoded, replaced.
    pub fn redact(&self, text: &str) -> String {
        let mut redacted = text.to_owned();
        for (pattern, marker) in &self.patterns {
            if redacted.contains(pattern.as_str()) {
                redacted = redacted.replace(pattern.as_str(), marker);
            }
        }
        redacted
    }

    /// Redacts every string of a JSON document in place (object keys included): numbers, booleans
    /// and the document's shape are never touched, so the result still decodes as it did.
    pub(crate) fn redact_json(&self, value: &mut Value) {
        if self.is_empty() {
            return;
        }
        match value {
            Value::String(text) => {
                if self.patterns.iter().any(|(p, _)| text.contains(p.as_str())) {
                    *text = self.redact(text);
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|item| self.redact_json(item)),
            Value::Object(map) => {
                let needs_new_keys = map
                    .keys()
                    .any(|key| self.patterns.iter().any(|(p, _)| key.contains(p.as_str())));
                if needs_new_keys {
                    let old = std::mem::take(map);
                    for (key, item) in old {
                        map.insert(self.redact(&key), item);
                    }
                }
                map.values_mut().for_each(|item| self.redact_json(item));
            }
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }

    /// Whether `name` is one of the secrets.
    pub fn is_secret(&self, name: &str) -> bool {
        self.names.iter().any(|secret| secret == name)
    }
}

/// Every form of `value` the redactor looks for (duplicates possible; the caller drops them).
fn forms_of(value: &[u8]) -> Vec<String> {
    let mut forms = vec![String::from_utf8_lossy(value).into_owned()];
    for alphabet in [STANDARD, URL_SAFE] {
        let padded = base64(value, alphabet, true);
        forms.push(padded.trim_end_matches('=').to_owned());
        forms.push(padded);
        // The value inside a longer encoded text: the whole 3-byte groups it fills at each of the
        // three alignments it can have.
        for skip in 0..3 {
            let Some(rest) = value.get(skip..) else {
                continue;
            };
            let whole = &rest[..rest.len() - rest.len() % 3];
            let fragment = base64(whole, alphabet, false);
            if fragment.len() >= FRAGMENT_CHARS_MIN {
                forms.push(fragment);
            }
        }
    }
    let hex = hex::encode(value);
    forms.push(hex.to_ascii_uppercase());
    forms.push(hex);
    for upper in [true, false] {
        forms.push(url_encode(value, upper, false));
        forms.push(url_encode(value, upper, true));
    }
    forms
}

/// The standard base64 alphabet (RFC 4648 §4).
const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
/// The URL- and file-name-safe alphabet (RFC 4648 §5).
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// `bytes` in base64 with `alphabet`, `=`-padded when `pad`.
fn base64(bytes: &[u8], alphabet: &[u8; 64], pad: bool) -> String {
    let mut text = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        let chars = chunk.len() + 1;
        for i in 0..4 {
            if i < chars {
                let index = (n >> (18 - 6 * i)) & 0x3f;
                text.push(char::from(alphabet[index as usize]));
            } else if pad {
                text.push('=');
            }
        }
    }
    text
}

/// `bytes` percent-encoded (everything but RFC 3986's unreserved characters), with upper- or
/// lower-case hex digits; `form` writes a space as `+` (HTML form encoding).
fn url_encode(bytes: &[u8], upper: bool, form: bool) -> String {
    let mut text = String::with_capacity(bytes.len() * 3);
    for &byte in bytes {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                text.push(char::from(byte));
            }
            b' ' if form => text.push('+'),
            _ if upper => text.push_str(&format!("%{byte:02X}")),
            _ => text.push_str(&format!("%{byte:02x}")),
        }
    }
    text
}

#[cfg(test)]
mod tests;
