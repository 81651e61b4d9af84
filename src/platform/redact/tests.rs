//! The redactor against the forms a command prints a secret in: plain, base64 (both alphabets,
//! padded or not, alone or inside a longer encoded text), hex and URL encoding; and JSON
//! documents, whose shape and numbers it must leave alone.

use serde_json::json;

use super::*;

/// A value whose encodings use every alphabet-specific character: `+` and `/` in base64, `%3E`,
/// `%3F` and a space in URL encoding.
const VALUE: &str = "k3y>>>?x?~ secret";
const MARKER: &str = "[REDACTED:TOKEN]";

fn redactor() -> Redactor {
    Redactor::new([("TOKEN".to_owned(), VALUE.to_owned())])
}

#[test]
fn secrets_are_redacted_longest_first() {
    let redactor = Redactor::new([
        ("SHORT".to_owned(), "abc".to_owned()),
        ("TOKEN".to_owned(), "s3cr3t-token".to_owned()),
        ("INNER".to_owned(), "s3cr3t".to_owned()),
    ]);
    let text = redactor.redact("token=s3cr3t-token inner=s3cr3t abc");
    assert_eq!(text, "token=[REDACTED:TOKEN] inner=[REDACTED:INNER] abc");
    assert!(redactor.is_secret("TOKEN"));
    assert!(!redactor.is_secret("SHORT"), "too short to be redacted");
}

#[test]
fn base64_in_both_alphabets_with_and_without_padding() {
    let redactor = redactor();
    // `printf %s "$VALUE" | base64`, and the same with `tr '+/' '-_'`.
    for encoded in [
        "azN5Pj4+P3g/fiBzZWNyZXQ=",
        "azN5Pj4+P3g/fiBzZWNyZXQ",
        "azN5Pj4-P3g_fiBzZWNyZXQ=",
        "azN5Pj4-P3g_fiBzZWNyZXQ",
    ] {
        assert_eq!(
            redactor.redact(&format!("out: {encoded}\n")),
            format!("out: {MARKER}\n"),
            "{encoded}"
        );
    }
}

#[test]
fn base64_of_a_longer_text_at_every_alignment() {
    let redactor = redactor();
    // `printf 'token=%s\n' "$VALUE" | base64`: the value starts on a 3-byte boundary, so its
    // own unpadded encoding is in there; what is left next to the marker is the newline's bits.
    assert_eq!(
        redactor.redact("dG9rZW49azN5Pj4+P3g/fiBzZWNyZXQK"),
        format!("dG9rZW49{MARKER}K")
    );
    // One and two bytes later (`xtoken=`, `xxtoken=`).
    for (encoded, whole) in [
        ("eHRva2VuPWszeT4+Pj94P34gc2VjcmV0Cg==", "eT4+Pj94P34gc2Vj"),
        (
            "eHh0b2tlbj1rM3k+Pj4/eD9+IHNlY3JldAo=",
            "M3k+Pj4/eD9+IHNlY3Jl",
        ),
    ] {
        assert!(encoded.contains(whole), "the fixture holds the fragment");
        let redacted = redactor.redact(encoded);
        assert!(redacted.contains(MARKER), "{encoded} → {redacted}");
        assert!(!redacted.contains(whole), "{redacted}");
    }
}

#[test]
fn hex_in_lower_and_upper_case() {
    let redactor = redactor();
    let lower = "6b33793e3e3e3f783f7e20736563726574";
    for encoded in [lower.to_owned(), lower.to_ascii_uppercase()] {
        // `od -An -tx1 | tr -d ' \n'` adds the newline's `0a`.
        assert_eq!(
            redactor.redact(&format!("{encoded}0a")),
            format!("{MARKER}0a")
        );
    }
}

#[test]
fn url_encoding_with_either_case_and_form_spaces() {
    let redactor = redactor();
    for encoded in [
        "k3y%3E%3E%3E%3Fx%3F~%20secret",
        "k3y%3e%3e%3e%3fx%3f~%20secret",
        "k3y%3E%3E%3E%3Fx%3F~+secret",
    ] {
        assert_eq!(
            redactor.redact(&format!("https://x/?key={encoded}&a=1")),
            format!("https://x/?key={MARKER}&a=1"),
            "{encoded}"
        );
    }
}

#[test]
fn short_values_are_left_alone_and_an_empty_redactor_changes_nothing() {
    let redactor = Redactor::new([("SHORT".to_owned(), "abc".to_owned())]);
    assert!(redactor.is_empty());
    assert_eq!(redactor.redact("abc YWJj 616263"), "abc YWJj 616263");
    let mut document = json!({"abc": "abc"});
    redactor.redact_json(&mut document);
    assert_eq!(document, json!({"abc": "abc"}));
}

#[test]
fn json_strings_and_keys_are_redacted_numbers_and_shape_are_not() {
    let redactor = Redactor::new([("TOKEN".to_owned(), "1234".to_owned())]);
    let mut document = json!({
        "count": 1234,
        "text": "pin 1234",
        "list": ["1234", 1234, null, true, {"deep": "x1234x"}],
        "by_1234": "hex 31323334",
    });
    redactor.redact_json(&mut document);
    assert_eq!(
        document,
        json!({
            "count": 1234,
            "text": "pin [REDACTED:TOKEN]",
            "list": ["[REDACTED:TOKEN]", 1234, null, true, {"deep": "x[REDACTED:TOKEN]x"}],
            "by_[REDACTED:TOKEN]": "hex [REDACTED:TOKEN]",
        })
    );
}
