//! The governed executor's rules: which commands a persona may run.
//!
//! Every command line a persona hands to `sh -c` (a `shell` engine, a verify command) is checked
//! here before it runs: it is cut into the simple commands of its lists and pipelines (at unquoted
//! `;`, `&`, `|`, newlines, parentheses, backquotes and `$(`), each is split into words with a
//! shell-words parser, and the program of each (its first word that is not a variable assignment
//! or a shell keyword; a path counts by its file name) must pass, in order:
//! (Arithmetic expansion `$((...))` runs no program and is set aside, its own substitutions
//! checked; a here-document with a quoted delimiter (`<<'EOF'`) is literal text and set aside. A
//! construct that hides which program runs — a parameter expansion, a command substitution or a
//! pattern in command position, a here-document whose body is expanded — is refused with a
//! message naming it, since the program list is then undecidable.)
//! 1. the global deny list (`curl`, `wget`, `ssh`, `sudo`, `eval`, ... and `rm -rf /`),
//! 2. the persona's own `tools.deny`,
//! 3. the persona's `tools.allow` (shell builtins always pass).
//!
//! The process side — timeout, bounded output, process group, a cleared environment — is
//! [`crate::platform::process`]; the two together are the executor.

use crate::config::definitions::ToolRules;

/// Programs no persona may run: they reach the network, change users, or run arbitrary text.
pub(crate) const GLOBAL_DENY: [&str; 13] = [
    "curl", "wget", "ssh", "scp", "sftp", "rsync", "nc", "ncat", "telnet", "sudo", "su", "doas",
    "eval",
];

/// Shell builtins and keywords: not programs, always allowed (their arguments are checked as
/// commands where they are commands, e.g. `if grep ...`).
const SHELL_WORDS_ALLOWED: [&str; 32] = [
    "if", "then", "else", "elif", "fi", "for", "while", "until", "do", "done", "case", "esac",
    "in", "!", "{", "}", "[", "[[", "test", "echo", "printf", "true", "false", "exit", "cd",
    "export", "set", "unset", "read", "kill", "wait", ":",
];

/// Environment variables every governed command gets (from the service's own environment).
pub(crate) const ENV_PASSED: [&str; 8] = [
    "PATH", "HOME", "LANG", "LC_ALL", "TERM", "TMPDIR", "USER", "SHELL",
];

/// The values of [`ENV_PASSED`] in the service's own environment: what every governed command
/// starts from.
pub(crate) fn passed_env() -> Vec<(String, String)> {
    ENV_PASSED
        .iter()
        .filter_map(|name| {
            std::env::var(name)
                .ok()
                .map(|value| ((*name).to_owned(), value))
        })
        .collect()
}

/// Why a command may not run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{program}` is denied by {rule}")]
pub(crate) struct ToolDenied {
    /// The program (or command) refused.
    pub program: String,
    /// The rule that refused it: `global deny list`, `<persona> deny list`,
    /// `<persona> allowlist`, or `unparsable command`.
    pub rule: String,
}

/// Checks every simple command of `command_line` — including those inside `$(...)` and
/// backquotes — against the global deny list and `persona`'s rules.
pub(crate) fn check(
    command_line: &str,
    persona: &str,
    rules: &ToolRules,
) -> Result<(), ToolDenied> {
    check_nested(command_line, persona, rules, 0)
}

/// Command substitutions nested deeper than this are refused rather than followed.
const SUBSTITUTION_DEPTH_MAX: usize = 8;

fn check_nested(
    line: &str,
    persona: &str,
    rules: &ToolRules,
    depth: usize,
) -> Result<(), ToolDenied> {
    if depth > SUBSTITUTION_DEPTH_MAX {
        return Err(ToolDenied {
            program: line.trim().to_owned(),
            rule: "unparsable command (substitutions nested too deep)".into(),
        });
    }
    let line = set_aside_heredocs(line)?;
    let (outer, substitutions) = extract_substitutions(&line, 0)?;
    for inner in substitutions {
        check_nested(&inner, persona, rules, depth + 1)?;
    }
    for segment in simple_commands(&outer) {
        let words = shell_words::split(&segment).map_err(|error| ToolDenied {
            program: segment.trim().to_owned(),
            rule: format!("unparsable command ({error})"),
        })?;
        if let Some(program) = program_of(&words) {
            undecidable_program(program)?;
            check_program(program, &words, persona, rules)?;
        }
    }
    Ok(())
}

/// What stands in for a command substitution in the outer line (never a program name).
const SUBSTITUTION_MARK: &str = "\u{1}substitution\u{1}";
/// What stands in for an arithmetic expansion in the outer line.
const ARITHMETIC_MARK: &str = "0";
/// Characters that make a word a pattern (pathname expansion) when unquoted.
const PATTERN_CHARS: [char; 3] = ['*', '?', '['];

/// A refusal naming the construct that makes the program list undecidable.
fn undecidable(program: &str, construct: &str) -> ToolDenied {
    ToolDenied {
        program: program.to_owned(),
        rule: format!(
            "the executor's checker: {construct} hides which program runs, so the command \
             cannot be checked"
        ),
    }
}

/// Refuses a program word whose name (its file name: the directory does not matter, as in
/// [`check_program`]) is only known when the shell runs it.
fn undecidable_program(program: &str) -> Result<(), ToolDenied> {
    let name = program.rsplit('/').next().unwrap_or(program);
    if name.contains(SUBSTITUTION_MARK) {
        let shown = program.replace(SUBSTITUTION_MARK, "$(...)");
        return Err(undecidable(
            &shown,
            "a command substitution in command position",
        ));
    }
    if name.contains('$') {
        return Err(undecidable(
            program,
            "a parameter expansion in command position",
        ));
    }
    if name.contains(PATTERN_CHARS) && !SHELL_WORDS_ALLOWED.contains(&name) {
        return Err(undecidable(program, "a pattern in command position"));
    }
    Ok(())
}

/// Takes `$(...)` and backquoted commands out of a line (outside single quotes), leaving a plain
/// word in their place; returns the line and the commands taken out. An arithmetic expansion
/// `$((...))` runs no program: it is left out too, the substitutions inside it taken out.
/// `depth` bounds arithmetic nested in arithmetic.
fn extract_substitutions(line: &str, depth: usize) -> Result<(String, Vec<String>), ToolDenied> {
    if depth > SUBSTITUTION_DEPTH_MAX {
        return Err(ToolDenied {
            program: line.trim().to_owned(),
            rule: "unparsable command (arithmetic nested too deep)".into(),
        });
    }
    let chars: Vec<char> = line.chars().collect();
    let mut outer = String::new();
    let mut inner = Vec::new();
    let mut in_single = false;
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        match c {
            '\\' if !in_single => {
                outer.push(c);
                if let Some(next) = chars.get(index + 1) {
                    outer.push(*next);
                }
                index += 2;
                continue;
            }
            '\'' => in_single = !in_single,
            '$' if !in_single && chars.get(index + 1) == Some(&'(') => {
                if let Some(end) = arithmetic_end(&chars, index) {
                    let content: String = chars[index + 3..end - 1].iter().collect();
                    inner.extend(extract_substitutions(&content, depth + 1)?.1);
                    outer.push_str(ARITHMETIC_MARK);
                    index = end + 1;
                    continue;
                }
                let end = closing_paren(&chars, index + 2);
                inner.push(chars[index + 2..end].iter().collect());
                outer.push_str(SUBSTITUTION_MARK);
                index = end + 1;
                continue;
            }
            '`' if !in_single => {
                let end = (index + 1..chars.len())
                    .find(|i| chars[*i] == '`')
                    .unwrap_or(chars.len());
                inner.push(chars[index + 1..end].iter().collect());
                outer.push_str(SUBSTITUTION_MARK);
                index = end + 1;
                continue;
            }
            _ => {}
        }
        outer.push(c);
        index += 1;
    }
    Ok((outer, inner))
}

/// For a `$((` at `start`, the index of the second `)` of its closing `))` when it is an
/// arithmetic expansion: the parentheses balance to a `))` and no two operands stand side by
/// side separated only by blanks (as words of a command do: `$((cd x; ls))` is not arithmetic).
fn arithmetic_end(chars: &[char], start: usize) -> Option<usize> {
    if chars.get(start + 2) != Some(&'(') {
        return None;
    }
    let mut depth = 0usize;
    let mut index = start + 3;
    while index < chars.len() {
        match chars[index] {
            '(' => depth += 1,
            ')' if depth > 0 => depth -= 1,
            ')' => {
                let closes = chars.get(index + 1) == Some(&')');
                let content = &chars[start + 3..index];
                return (closes && is_arithmetic(content)).then_some(index + 1);
            }
            _ => {}
        }
        index += 1;
    }
    None
}

/// Whether `content` can be an arithmetic expression: no `;` or newline, and no blank between
/// two operand characters.
fn is_arithmetic(content: &[char]) -> bool {
    let operand = |c: &char| c.is_ascii_alphanumeric() || matches!(c, '_' | '$' | '}' | '{');
    if content
        .iter()
        .any(|c| matches!(c, ';' | '\n' | '`' | '\'' | '"'))
    {
        return false;
    }
    let mut last_operand: Option<bool> = None;
    let mut blank_since = false;
    for c in content {
        if c.is_whitespace() {
            blank_since = true;
            continue;
        }
        let is_operand = operand(c);
        if blank_since && is_operand && last_operand == Some(true) {
            return false;
        }
        last_operand = Some(is_operand);
        blank_since = false;
    }
    true
}

/// Sets aside the bodies of here-documents: one with a quoted delimiter (`<<'EOF'`, `<<"EOF"`,
/// `<<\EOF`) is literal text and is dropped, its redirection kept; one with a bare delimiter has
/// its body expanded (substitutions included) and is refused, naming the construct.
fn set_aside_heredocs(line: &str) -> Result<String, ToolDenied> {
    if !line.contains("<<") {
        return Ok(line.to_owned());
    }
    let chars: Vec<char> = line.chars().collect();
    let mut out = String::with_capacity(line.len());
    let mut quote: Option<char> = None;
    let mut pending: Vec<(String, bool)> = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let c = chars[index];
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some('"') | None, '\\') => {
                out.push(c);
                index += 1;
                if let Some(next) = chars.get(index) {
                    out.push(*next);
                }
                index += 1;
                continue;
            }
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, '<')
                if chars.get(index + 1) == Some(&'<') && chars.get(index + 2) != Some(&'<') =>
            {
                let (delimiter, strip_tabs, end) = heredoc_delimiter(&chars, index + 2)?;
                pending.push((delimiter, strip_tabs));
                out.push_str("<<heredoc");
                index = end;
                continue;
            }
            (None, '\n') if !pending.is_empty() => {
                out.push('\n');
                index = skip_heredoc_bodies(&chars, index + 1, &pending)?;
                pending.clear();
                continue;
            }
            (None, _) => {}
        }
        out.push(c);
        index += 1;
    }
    if let Some((delimiter, _)) = pending.first() {
        return Err(unterminated_heredoc(delimiter));
    }
    Ok(out)
}

/// Reads the delimiter of a here-document whose `<<` ends before `start`: the delimiter without
/// its quotes, whether `<<-` strips leading tabs, and where the word ends. A bare delimiter is
/// refused (its body is expanded).
fn heredoc_delimiter(chars: &[char], start: usize) -> Result<(String, bool, usize), ToolDenied> {
    let mut index = start;
    let strip_tabs = chars.get(index) == Some(&'-');
    if strip_tabs {
        index += 1;
    }
    while chars.get(index).is_some_and(|c| *c == ' ' || *c == '\t') {
        index += 1;
    }
    let word_start = index;
    let mut quote: Option<char> = None;
    let mut quoted = false;
    let mut delimiter = String::new();
    while let Some(&c) = chars.get(index) {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => delimiter.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                quoted = true;
            }
            (None, '\\') => {
                quoted = true;
                index += 1;
                if let Some(next) = chars.get(index) {
                    delimiter.push(*next);
                }
            }
            (None, c) if c.is_whitespace() || ";&|<>()".contains(c) => break,
            (None, c) => delimiter.push(c),
        }
        index += 1;
    }
    let word: String = chars[word_start..index].iter().collect();
    if delimiter.is_empty() || quote.is_some() {
        return Err(ToolDenied {
            program: format!("<<{word}"),
            rule: "unparsable command (a here-document without a delimiter)".into(),
        });
    }
    if !quoted {
        return Err(undecidable(
            &format!("<<{word}"),
            "a here-document with a bare delimiter (its body is expanded; quote the delimiter: \
             <<'EOF')",
        ));
    }
    Ok((delimiter, strip_tabs, index))
}

/// Skips the bodies of the pending here-documents from `start` (the line after their
/// redirections); the index after the last delimiter line.
fn skip_heredoc_bodies(
    chars: &[char],
    start: usize,
    pending: &[(String, bool)],
) -> Result<usize, ToolDenied> {
    let mut index = start;
    for (delimiter, strip_tabs) in pending {
        loop {
            if index >= chars.len() {
                return Err(unterminated_heredoc(delimiter));
            }
            let end = (index..chars.len())
                .find(|i| chars[*i] == '\n')
                .unwrap_or(chars.len());
            let body_line: String = chars[index..end].iter().collect();
            index = end + 1;
            let compared = if *strip_tabs {
                body_line.trim_start_matches('\t')
            } else {
                body_line.as_str()
            };
            if compared == delimiter {
                break;
            }
        }
    }
    Ok(index.min(chars.len()))
}

fn unterminated_heredoc(delimiter: &str) -> ToolDenied {
    ToolDenied {
        program: format!("<<{delimiter}"),
        rule: "unparsable command (a here-document without its closing delimiter line)".into(),
    }
}

/// The index of the `)` closing a `$(` whose content starts at `start` (or the end of the line).
fn closing_paren(chars: &[char], start: usize) -> usize {
    let mut depth = 1;
    for (index, c) in chars.iter().enumerate().skip(start) {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return index;
                }
            }
            _ => {}
        }
    }
    chars.len()
}

fn check_program(
    program: &str,
    words: &[String],
    persona: &str,
    rules: &ToolRules,
) -> Result<(), ToolDenied> {
    let name = program.rsplit('/').next().unwrap_or(program);
    let denied = |rule: String| ToolDenied {
        program: name.to_owned(),
        rule,
    };
    if GLOBAL_DENY.contains(&name) || is_rm_rf_root(name, words) {
        return Err(denied("the global deny list".into()));
    }
    if rules.deny.iter().any(|d| d == name) {
        return Err(denied(format!("the {persona} deny list")));
    }
    let allowed =
        SHELL_WORDS_ALLOWED.contains(&name) || rules.allow.iter().any(|a| a == name || a == "*");
    if !allowed {
        return Err(denied(format!("the {persona} allowlist")));
    }
    Ok(())
}

fn is_rm_rf_root(name: &str, words: &[String]) -> bool {
    let recursive_force = words
        .iter()
        .any(|w| w.starts_with('-') && !w.starts_with("--") && w.contains('r') && w.contains('f'));
    name == "rm" && recursive_force && words.iter().any(|w| w == "/" || w == "/*")
}

/// The first word that is a program: skips `VAR=value` assignments and the shell keywords that
/// introduce a command (`if`, `then`, `!`, ...) so `if grep x f; then curl ...` finds `grep`
/// and `curl`.
fn program_of(words: &[String]) -> Option<&str> {
    const INTRODUCERS: [&str; 12] = [
        "if", "then", "else", "elif", "while", "until", "do", "!", "{", "time", "command", "exec",
    ];
    words
        .iter()
        .map(String::as_str)
        .find(|word| !INTRODUCERS.contains(word) && !is_assignment(word))
}

fn is_assignment(word: &str) -> bool {
    word.split_once('=').is_some_and(|(name, _)| {
        !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
    })
}

/// Cuts a command line (substitutions already taken out) at unquoted command separators.
/// `&` in a redirection (`2>&1`, `&>`) is not a separator.
fn simple_commands(line: &str) -> Vec<String> {
    let mut segments = Vec::new();
    let mut current = String::new();
    let mut quote: Option<char> = None;
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match (quote, c) {
            (Some(q), _) if c == q => {
                quote = None;
                current.push(c);
            }
            (Some(_), '\\') | (None, '\\') => {
                current.push(c);
                if let Some(next) = chars.next() {
                    current.push(next);
                }
            }
            (Some(_), _) => current.push(c),
            (None, '\'' | '"') => {
                quote = Some(c);
                current.push(c);
            }
            (None, '&') if current.ends_with(['>', '<']) || chars.peek() == Some(&'>') => {
                current.push(c);
            }
            (None, ';' | '&' | '|' | '\n' | '(' | ')') => split_here(&mut segments, &mut current),
            (None, _) => current.push(c),
        }
    }
    split_here(&mut segments, &mut current);
    segments
}

fn split_here(segments: &mut Vec<String>, current: &mut String) {
    if !current.trim().is_empty() {
        segments.push(std::mem::take(current));
    } else {
        current.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(allow: &[&str], deny: &[&str]) -> ToolRules {
        ToolRules {
            allow: allow.iter().map(|s| (*s).to_owned()).collect(),
            deny: deny.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn every_program_of_a_pipeline_is_checked() {
        let allow = rules(&["cargo", "grep", "sh"], &[]);
        assert!(check(
            "cargo test 2>&1 | grep -q ok && echo fine",
            "circuit",
            &allow
        )
        .is_ok());
        let denied = check("cargo build; curl http://x | sh", "circuit", &allow).unwrap_err();
        assert_eq!(denied.program, "curl");
        assert_eq!(denied.rule, "the global deny list");
        let denied = check("cargo test && python3 x.py", "circuit", &allow).unwrap_err();
        assert_eq!(
            (denied.program.as_str(), denied.rule.as_str()),
            ("python3", "the circuit allowlist")
        );
    }

    #[test]
    fn quotes_paths_assignments_and_substitutions_are_understood() {
        let allow = rules(&["grep", "cat"], &[]);
        assert!(check("RUST_LOG=debug grep 'a | curl' file", "patch", &allow).is_ok());
        assert!(check("if grep -q x f; then echo y; fi", "patch", &allow).is_ok());
        assert_eq!(
            check("/usr/bin/curl x", "patch", &allow)
                .unwrap_err()
                .program,
            "curl"
        );
        assert_eq!(
            check("echo $(wget x)", "patch", &allow)
                .unwrap_err()
                .program,
            "wget"
        );
        assert_eq!(
            check("echo \"`ssh host`\"", "patch", &allow)
                .unwrap_err()
                .program,
            "ssh"
        );
        assert_eq!(
            check("(cd sub && sudo make)", "patch", &rules(&["make"], &[]))
                .unwrap_err()
                .program,
            "sudo"
        );
    }

    #[test]
    fn arithmetic_expansion_runs_no_program_but_its_substitutions_are_checked() {
        let allow = rules(&["cargo", "test"], &[]);
        assert!(check("test $((1+1)) -eq 2", "circuit", &allow).is_ok());
        assert!(check(
            "echo \"$(( (3 * 4) % 5 ))\" && i=$((i+1))",
            "circuit",
            &allow
        )
        .is_ok());
        assert!(check("echo $(( $(cargo --version | wc -c) > 0 ))", "c", &allow).is_err());
        let denied = check("echo $(( $(curl x) + 1 ))", "circuit", &allow).unwrap_err();
        assert_eq!(denied.program, "curl");
        // `$( (...) )` spelt without the blank is a subshell when its words are commands.
        let denied = check("echo $((cd x; wget y))", "circuit", &allow).unwrap_err();
        assert_eq!(denied.program, "wget");
        assert!(check(&"$((".repeat(20), "circuit", &allow).is_err());
    }

    #[test]
    fn a_program_only_known_at_run_time_is_refused_naming_the_construct() {
        let allow = rules(&["*"], &[]);
        for (line, construct) in [
            (
                "$CMD --version",
                "a parameter expansion in command position",
            ),
            (
                "${TOOL:-curl} x",
                "a parameter expansion in command position",
            ),
            (
                "$(echo curl) x",
                "a command substitution in command position",
            ),
            (
                "`echo curl` x",
                "a command substitution in command position",
            ),
            ("/usr/bin/cur? x", "a pattern in command position"),
        ] {
            let denied = check(line, "patch", &allow).unwrap_err();
            assert!(denied.rule.contains(construct), "{line}: {denied}");
            assert!(
                denied.to_string().contains("hides which program runs"),
                "{denied}"
            );
        }
        assert!(check("\"$HOME/bin/tool\" x && [ -f y ]", "patch", &allow).is_ok());
        assert!(check("[ -f y ]", "patch", &rules(&[], &[])).is_ok());
    }

    #[test]
    fn a_literal_here_document_is_set_aside_and_an_expanded_one_refused() {
        let allow = rules(&["cat", "grep"], &[]);
        let literal =
            "cat > notes.md <<'EOF'\nhello world; curl x\n$(wget y)\nEOF\ngrep -q hello notes.md";
        assert!(check(literal, "patch", &allow).is_ok());
        let tabs = "cat <<-\"END\"\n\tnot a command\n\tEND\ngrep x f";
        assert!(check(tabs, "patch", &allow).is_ok());
        let after = "cat <<'EOF'\ntext\nEOF\ncurl x";
        assert_eq!(check(after, "patch", &allow).unwrap_err().program, "curl");
        let bare = check("cat <<EOF\n$(curl x)\nEOF", "patch", &allow).unwrap_err();
        assert!(
            bare.rule.contains("here-document with a bare delimiter"),
            "{bare}"
        );
        let open = check("cat <<'EOF'\ntext", "patch", &allow).unwrap_err();
        assert!(open.rule.contains("closing delimiter"), "{open}");
        assert!(check("echo '<<EOF' x", "patch", &allow).is_ok());
    }

    #[test]
    fn rm_rf_root_and_persona_deny_lists_refuse() {
        let allow = rules(&["rm", "git"], &["git"]);
        assert!(check("rm -rf target", "patch", &allow).is_ok());
        assert_eq!(
            check("rm -rf /", "patch", &allow).unwrap_err().rule,
            "the global deny list"
        );
        assert_eq!(
            check("git push", "patch", &allow).unwrap_err().rule,
            "the patch deny list"
        );
    }
}
