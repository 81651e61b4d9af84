//! The catalogue against the sources and the docs: every code-shaped string literal under `src/`
//! is a catalogued code (used through its constant) or a known non-code, and every catalogued code
//! has exactly one row, with its statuses, in a table of `docs/api.md`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use super::{lookup, Code, CATALOGUE};

/// Upper-case string literals under `src/` that are not error codes. Kept small and explicit: a
/// new upper-case literal must be either catalogued or listed here, on purpose.
const NOT_CODES: &[&str] = &[
    // The CLI's colour variables and sysexits' usage code (docs/api.md, The CLI).
    "NO_COLOR",
    "CLICOLOR_FORCE",
    "EX_USAGE",
    // HTTP methods (metrics labels, routing).
    "GET",
    "POST",
    "PUT",
    "PATCH",
    "DELETE",
    "HEAD",
    "OPTIONS",
    // Credential variables a fleet factory advertises by name (never by value).
    "OPENAI_API_KEY",
    "ANTHROPIC_API_KEY",
    "GITHUB_TOKEN",
    "GH_TOKEN",
    "FLY_API_TOKEN",
    "HF_TOKEN",
    // bubblewrap's `--cap-drop ALL`, and the git settings a sandboxed command gets.
    "ALL",
    "GIT_CONFIG_COUNT",
    "GIT_CONFIG_KEY_0",
    "GIT_CONFIG_VALUE_0",
    "GIT_CONFIG_KEY_1",
    "GIT_CONFIG_VALUE_1",
    // Environment variables a child process gets, or the build sets.
    "PATH",
    "HOME",
    "LANG",
    "LC_ALL",
    "TERM",
    "TMPDIR",
    "USER",
    "SHELL",
    "PORT",
    "GIT_TERMINAL_PROMPT",
    "GIT_EDITOR",
    // The environment that pins the service's own git (no system or global config) and names a
    // worktree's admin dir.
    "GIT_CONFIG_NOSYSTEM",
    "GIT_CONFIG_GLOBAL",
    "GIT_ATTR_NOSYSTEM",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "CARGO_MANIFEST_DIR",
    "CARGO_PKG_VERSION",
    // Text, not codes: a date's zone suffix; the CLI's stand-in for an answer without a code.
    "GMT",
    "UNKNOWN",
    // Test fixtures: a method the metrics do not know; environment names of the redaction tests.
    "BREW",
    "SHORT",
    "TOKEN",
    "INNER",
];

/// Literals with this prefix are the environment variables the service passes to engines and
/// provider commands (`GLITCHLAB_TASK_ID`, `GLITCHLAB_RELEASE`, ...), never codes.
const ENV_PREFIX: &str = "GLITCHLAB_";

/// This catalogue's own files: the only place code literals may be written (its tests hold
/// fixtures of uncatalogued ones).
const CATALOGUE_FILES: &[&str] = &["src/model/codes.rs", "src/model/codes/"];

/// Whether `text` has the shape of a code: `[A-Z][A-Z0-9_]{2,}`.
fn code_shaped(text: &str) -> bool {
    let mut chars = text.chars();
    chars.next().is_some_and(|c| c.is_ascii_uppercase())
        && text.len() >= 3
        && chars.all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// Whether a code-shaped literal is known not to be a code.
fn not_a_code(text: &str) -> bool {
    NOT_CODES.contains(&text) || text.starts_with(ENV_PREFIX)
}

/// The raw string (`r"..."`, `r#"..."#`) whose `r` is at `chars[at]`: its contents and the index
/// just past it; `None` when the `r` starts something else (an identifier, `r#type`).
fn raw_string(chars: &[char], at: usize) -> Option<(String, usize)> {
    let hashes = chars[at + 1..].iter().take_while(|&&c| c == '#').count();
    if chars.get(at + 1 + hashes) != Some(&'"') {
        return None;
    }
    let closing: Vec<char> = std::iter::once('"')
        .chain(std::iter::repeat_n('#', hashes))
        .collect();
    let start = at + 2 + hashes;
    let length = chars[start..]
        .windows(closing.len())
        .position(|window| window == closing.as_slice())?;
    let text = chars[start..start + length].iter().collect();
    Some((text, start + length + closing.len()))
}

/// The string literals of Rust `source` (normal, raw and byte strings; escapes left as written),
/// each with the line it starts on. Comments, char literals and lifetimes are skipped, so a code
/// named in a doc comment is not counted.
fn string_literals(source: &str) -> Vec<(usize, String)> {
    let chars: Vec<char> = source.chars().collect();
    let at = |i: usize| chars.get(i).copied().unwrap_or('\0');
    let ident = |c: char| c.is_alphanumeric() || c == '_';
    let mut literals = Vec::new();
    let (mut i, mut line) = (0, 1);
    while i < chars.len() {
        let c = chars[i];
        if c == '\n' {
            line += 1;
            i += 1;
        } else if c == '/' && at(i + 1) == '/' {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && at(i + 1) == '*' {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && at(i + 1) == '*' {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && at(i + 1) == '/' {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += usize::from(chars[i] == '\n');
                    i += 1;
                }
            }
        } else if c == '"' {
            let (start, mut text) = (line, String::new());
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    text.push(chars[i]);
                    i += 1;
                }
                line += usize::from(at(i) == '\n');
                text.push(at(i));
                i += 1;
            }
            i += 1;
            literals.push((start, text));
        } else if c == '\'' {
            i += if at(i + 1) == '\\' {
                // An escaped char literal: `'\n'`, `'\''`, `'\u{..}'`.
                let rest = chars.get(i + 3..).unwrap_or_default();
                3 + rest.iter().take_while(|&&c| c != '\'').count() + 1
            } else if at(i + 2) == '\'' {
                3
            } else {
                // A lifetime or a label.
                1
            };
        } else if ident(c) {
            // The start of an identifier, a keyword, a number, or a literal's prefix.
            let r = if c == 'b' { i + 1 } else { i };
            if at(r) == 'r' {
                if let Some((text, end)) = raw_string(&chars, r) {
                    let start = line;
                    line += text.matches('\n').count();
                    literals.push((start, text));
                    i = end;
                    continue;
                }
            }
            if c == 'b' && matches!(at(i + 1), '"' | '\'') {
                // `b"..."`, `b'x'`: the next turn reads the literal itself.
                i += 1;
                continue;
            }
            while i < chars.len() && ident(chars[i]) {
                i += 1;
            }
        } else {
            i += 1;
        }
    }
    literals
}

/// The `` `WORD` `` spans of `text` whose word is code-shaped: codes an OpenAPI description or a
/// message names.
fn backticked_codes(text: &str) -> Vec<&str> {
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|word| code_shaped(word) && word.contains('_'))
        .collect()
}

/// What is wrong with the code strings of one source file: a code-shaped literal that is not
/// catalogued (nor a known non-code), a catalogued code written as a literal instead of its
/// constant, or a backticked code in a literal (an OpenAPI description) that is not catalogued.
fn check_source(file: &str, source: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (line, text) in string_literals(source) {
        if code_shaped(&text) {
            if lookup(&text).is_some() {
                problems.push(format!(
                    "{file}:{line}: the code \"{text}\" is written as a literal; use \
                     `crate::model::codes::{text}`"
                ));
            } else if !not_a_code(&text) {
                problems.push(format!(
                    "{file}:{line}: \"{text}\" looks like an error code but is not in the \
                     catalogue: add it to src/model/codes.rs and docs/api.md (or, if it is not a \
                     code, to NOT_CODES in src/model/codes/tests.rs)"
                ));
            }
        }
        for word in backticked_codes(&text) {
            if lookup(word).is_none() && !not_a_code(word) {
                problems.push(format!(
                    "{file}:{line}: `{word}` is named in a string but is not in the catalogue \
                     (src/model/codes.rs)"
                ));
            }
        }
    }
    problems
}

/// One table row of `docs/api.md` that documents a code.
#[derive(Debug)]
struct DocRow {
    /// The code of its `Code` cell.
    code: String,
    /// Its line, 1-based.
    line: usize,
    /// The statuses of its `Status` cell (empty for `—`); `None` when its table has no such
    /// column.
    statuses: Option<BTreeSet<u16>>,
}

/// The cells of a Markdown table row (an escaped `\|` stays inside its cell).
fn cells(line: &str) -> Vec<String> {
    let inner = line.trim().trim_start_matches('|').trim_end_matches('|');
    inner
        .replace("\\|", "\u{0}")
        .split('|')
        .map(|cell| cell.replace('\u{0}', "\\|").trim().to_owned())
        .collect()
}

/// Whether a table line is the separator under a header (`|---|:---:|`).
fn separator(line: &str) -> bool {
    cells(line)
        .iter()
        .all(|cell| !cell.is_empty() && cell.chars().all(|c| matches!(c, '-' | ':')))
}

/// Every table row of `doc` whose `Code` column (or, in a table without one, any cell) is a
/// single backticked code-shaped word. A table is a run of `|` lines; it has columns only when
/// its first line is followed by a separator, as Markdown renders it.
fn doc_rows(doc: &str) -> Vec<DocRow> {
    let lines: Vec<&str> = doc.lines().collect();
    let is_row = |line: &str| line.trim_start().starts_with('|');
    let mut rows = Vec::new();
    let mut header: Option<Vec<String>> = None;
    for (index, line) in lines.iter().enumerate() {
        if !is_row(line) {
            continue;
        }
        let starts_table = index == 0 || !is_row(lines[index - 1]);
        if starts_table {
            header = None;
            if lines
                .get(index + 1)
                .is_some_and(|next| is_row(next) && separator(next))
            {
                header = Some(cells(line));
                continue;
            }
        }
        if separator(line) {
            continue;
        }
        let row = cells(line);
        let column = |name: &str| {
            header
                .as_ref()
                .and_then(|columns| columns.iter().position(|c| c.eq_ignore_ascii_case(name)))
        };
        let code_cells: Vec<&String> = match column("Code") {
            Some(at) => row.get(at).into_iter().collect(),
            None => row.iter().collect(),
        };
        for cell in code_cells {
            let Some(code) = cell.strip_prefix('`').and_then(|c| c.strip_suffix('`')) else {
                continue;
            };
            if !code_shaped(code) {
                continue;
            }
            let statuses = column("Status").and_then(|at| row.get(at)).map(|cell| {
                cell.split(|c: char| !c.is_ascii_digit())
                    .filter_map(|n| n.parse().ok())
                    .collect()
            });
            rows.push(DocRow {
                code: code.to_owned(),
                line: index + 1,
                statuses,
            });
        }
    }
    rows
}

/// What is wrong with `doc` against `catalogue`: a code without a row or with several, a row's
/// statuses that differ from the catalogue's, a row or a mention of a code the catalogue lacks.
fn check_docs(doc: &str, catalogue: &[Code]) -> Vec<String> {
    let known = |name: &str| catalogue.iter().find(|code| code.name == name);
    let rows = doc_rows(doc);
    let mut problems = Vec::new();
    for code in catalogue {
        let lines: Vec<usize> = rows
            .iter()
            .filter(|row| row.code == code.name)
            .map(|row| row.line)
            .collect();
        match lines.as_slice() {
            [] => problems.push(format!(
                "{}: not documented in docs/api.md; add one row to its `## Errors` table",
                code.name
            )),
            [_] => {}
            many => problems.push(format!(
                "{}: documented {} times in docs/api.md (table rows at lines {many:?}); keep one",
                code.name,
                many.len()
            )),
        }
    }
    for row in &rows {
        let Some(code) = known(&row.code) else {
            problems.push(format!(
                "docs/api.md:{}: a row documents {}, which is not in the catalogue \
                 (src/model/codes.rs)",
                row.line, row.code
            ));
            continue;
        };
        let expected: BTreeSet<u16> = code.statuses.iter().copied().collect();
        match &row.statuses {
            None => problems.push(format!(
                "docs/api.md:{}: the row of {} is in a table without a Status column",
                row.line, row.code
            )),
            Some(statuses) if *statuses != expected => problems.push(format!(
                "docs/api.md:{}: the row of {} says statuses {statuses:?}, the catalogue \
                 {expected:?}",
                row.line, row.code
            )),
            Some(_) => {}
        }
    }
    // A code named anywhere (prose, examples) must exist: words with an underscore are codes.
    for (index, line) in doc.lines().enumerate() {
        let words = line.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'));
        for word in words.filter(|w| code_shaped(w) && w.contains('_')) {
            if known(word).is_none() && !not_a_code(word) {
                problems.push(format!(
                    "docs/api.md:{}: names {word}, which is not in the catalogue",
                    index + 1
                ));
            }
        }
    }
    problems
}

/// Every `.rs` file under `dir`, sorted.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn every_code_string_in_src_is_catalogued_and_used_through_its_constant() {
    let mut problems = Vec::new();
    let files = rust_files(&root().join("src"));
    assert!(
        files.len() > 50,
        "the scan found only {} files",
        files.len()
    );
    for path in files {
        let file = path
            .strip_prefix(root())
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if CATALOGUE_FILES.iter().any(|own| file.starts_with(own)) {
            continue;
        }
        let source = std::fs::read_to_string(&path).unwrap();
        problems.extend(check_source(&file, &source));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_code_is_documented_once_in_docs_api_md_with_its_statuses() {
    let doc = std::fs::read_to_string(root().join("docs/api.md")).unwrap();
    let problems = check_docs(&doc, CATALOGUE);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_catalogue_is_well_formed() {
    let mut seen = BTreeSet::new();
    for code in CATALOGUE {
        assert!(
            code_shaped(code.name),
            "{} is not SCREAMING_SNAKE_CASE",
            code.name
        );
        assert!(seen.insert(code.name), "{} is catalogued twice", code.name);
        assert!(
            !code.meaning.trim().is_empty(),
            "{} has no meaning",
            code.name
        );
        assert!(
            code.statuses.iter().all(|s| (400..600).contains(s)),
            "{} has a status that is not an error",
            code.name
        );
        assert!(
            !not_a_code(code.name),
            "{} is catalogued and listed in NOT_CODES",
            code.name
        );
    }
    assert_eq!(
        lookup(super::TASK_NOT_FOUND).map(|c| c.statuses),
        Some(&[404][..])
    );
    assert!(lookup("TASK_NOT_FOUNDX").is_none());
}

#[test]
fn the_scanner_reads_literals_and_skips_comments_chars_and_lifetimes() {
    let source = r###"
// "IN_A_COMMENT"
/* "IN_A_BLOCK" /* nested "DEEPER" */ still */
/// Doc: "IN_A_DOC"
fn f<'a>(x: &'a str) -> char {
    let _ = ("ONE", r"TWO", r#"THREE "quoted""#, b"FOUR", br#"FIVE"#, "esc\"aped");
    let _r#type = "SIX";
    let _ = 'a'; let _ = '\''; let _ = '"';
    "SEVEN
EIGHT";
    'x'
}
"###;
    let literals: Vec<String> = string_literals(source)
        .into_iter()
        .map(|(_, text)| text)
        .collect();
    assert_eq!(
        literals,
        [
            "ONE",
            "TWO",
            "THREE \"quoted\"",
            "FOUR",
            "FIVE",
            "esc\\\"aped",
            "SIX",
            "SEVEN\nEIGHT"
        ]
    );
    let lines: Vec<usize> = string_literals(source).iter().map(|(l, _)| *l).collect();
    assert_eq!(lines, [6, 6, 6, 6, 6, 6, 7, 9]);
}

#[test]
fn the_source_check_names_an_uncatalogued_code_and_a_literal_code() {
    let source = r#"
fn f() -> ErrorInfo {
    let _ = ("PATH".into(), "GLITCHLAB_TASK_ID", "GET");
    let _ = ApiError::not_found("TASK_NOT_FOUND", "no task");
    let _ = "`TASK_NOT_FOUND` and `NOT_A_REAL_CODE` in a description";
    ErrorInfo::new("WIDGET_MELTED", "boom")
}
"#;
    let problems = check_source("src/fixture.rs", source);
    assert_eq!(problems.len(), 3, "{problems:#?}");
    assert!(problems[0].starts_with("src/fixture.rs:4: the code \"TASK_NOT_FOUND\""));
    assert!(problems[1].starts_with("src/fixture.rs:5: `NOT_A_REAL_CODE`"));
    assert!(problems[2].starts_with("src/fixture.rs:6: \"WIDGET_MELTED\" looks like an error code"));
}

#[test]
fn the_docs_check_names_a_missing_a_repeated_and_a_mis_statused_code() {
    const CODES: &[Code] = &[
        Code {
            name: "ALPHA_FAILED",
            statuses: &[],
            carriers: &[],
            meaning: "a",
        },
        Code {
            name: "BETA_NOT_FOUND",
            statuses: &[404],
            carriers: &[],
            meaning: "b",
        },
        Code {
            name: "GAMMA_BUSY",
            statuses: &[503],
            carriers: &[],
            meaning: "c",
        },
    ];
    let doc = "\
| Status | Code | When |
|---|---|---|
| 404 | `BETA_NOT_FOUND` | b |
| 500 | `GAMMA_BUSY` | c |

Prose naming `ALPHA_FAILED` and DELTA_GONE is not a row.

| Status | Code | When |
|---|---|---|
| 404 | `BETA_NOT_FOUND` | b again |
";
    let problems = check_docs(doc, CODES);
    assert_eq!(problems.len(), 4, "{problems:#?}");
    assert!(problems[0].starts_with("ALPHA_FAILED: not documented"));
    assert!(problems[1].starts_with("BETA_NOT_FOUND: documented 2 times"));
    assert!(problems[2].starts_with("docs/api.md:4: the row of GAMMA_BUSY says statuses {500}"));
    assert!(problems[3].starts_with("docs/api.md:6: names DELTA_GONE"));
}
