//! The project's data folders: persona definitions (`actors/*.md`), incident runbooks
//! (`runbooks/*.yaml`) and ops targets (`ops.yaml`), loaded and checked at start.
//!
//! Persona files ship inside the binary too, so the service runs from any directory; a file in
//! `actors_dir` replaces the built-in copy of the same persona.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::PathsConfig;
use crate::model::persona::Persona;

const BUILTIN_PERSONAS: [(&str, &str); 8] = [
    ("compass.md", include_str!("../../actors/compass.md")),
    ("ledger.md", include_str!("../../actors/ledger.md")),
    ("planner.md", include_str!("../../actors/planner.md")),
    ("patch.md", include_str!("../../actors/patch.md")),
    ("circuit.md", include_str!("../../actors/circuit.md")),
    (
        "uplink-deploy.md",
        include_str!("../../actors/uplink-deploy.md"),
    ),
    (
        "uplink-watch.md",
        include_str!("../../actors/uplink-watch.md"),
    ),
    (
        "uplink-respond.md",
        include_str!("../../actors/uplink-respond.md"),
    ),
];

/// A data file is missing or malformed.
#[derive(Debug, thiserror::Error)]
pub enum DefinitionError {
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A file does not parse or names something unknown.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// Line and reason.
        reason: String,
    },
}

/// Tool permissions of a persona (enforced by the governed executor once it exists).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ToolRules {
    /// Programs the persona may run.
    pub allow: Vec<String>,
    /// Programs it may never run.
    pub deny: Vec<String>,
}

/// The YAML front matter of `actors/<name>.md`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PersonaFrontMatter {
    /// Persona name; must match the file name.
    pub name: String,
    /// One line: what the persona does.
    pub role: String,
    /// Default engine: `builtin`, `shell`, or a provider name.
    #[serde(default = "builtin_engine")]
    pub engine: String,
    /// Model for model-backed engines.
    #[serde(default)]
    pub model: Option<String>,
    /// Engine timeout override.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Attempts override.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Tool permissions.
    #[serde(default)]
    pub tools: ToolRules,
    /// Budget caps (interpreted by the Ledger).
    #[serde(default)]
    pub budget: BTreeMap<String, u64>,
    /// Environment variables (secrets among them) this persona's commands may receive.
    #[serde(default)]
    pub env: Vec<String>,
    /// Whether this persona's sandboxed commands get the host network; without it they run in
    /// an empty network namespace (loopback only, their own).
    #[serde(default)]
    pub network: bool,
    /// Capabilities a fleet factory must offer to run this persona's commands, added to each
    /// task's own (`[has:gpu]`): a persona that always needs a tool says so once.
    #[serde(default)]
    pub capabilities: Vec<String>,
}

fn builtin_engine() -> String {
    "builtin".into()
}

/// A persona: its front matter and its system prompt (the file's body).
#[derive(Debug, Clone, Serialize)]
pub struct PersonaDefinition {
    /// The parsed front matter.
    #[serde(flatten)]
    pub front: PersonaFrontMatter,
    /// The system prompt that opens every prompt the persona builds.
    pub system_prompt: String,
    /// Where it came from: a path, or `builtin`.
    pub source: String,
}

pub use crate::model::ops::spec::{OpsFile, Runbook};

/// Everything loaded from the data folders.
#[derive(Debug, Clone)]
pub struct Definitions {
    /// Personas; always all of [`Persona::ALL`].
    pub personas: BTreeMap<Persona, PersonaDefinition>,
    /// Runbooks in file-name order.
    pub runbooks: Vec<Runbook>,
    /// Ops targets.
    pub ops: OpsFile,
}

impl Definitions {
    /// Loads the data folders named in `paths`. A missing default folder or file falls back to
    /// built-in defaults (no runbooks, no apps); a path configured away from its default must
    /// exist, so a typo does not start the service silently with nothing to run.
    pub fn load(paths: &PathsConfig) -> Result<Self, DefinitionError> {
        let defaults = PathsConfig::default();
        refuse_missing(
            &paths.ops_file,
            &defaults.ops_file,
            "paths.ops_file (or --ops)",
        )?;
        refuse_missing(
            &paths.runbooks_dir,
            &defaults.runbooks_dir,
            "paths.runbooks_dir",
        )?;
        Ok(Self {
            personas: load_personas(&paths.actors_dir)?,
            runbooks: load_runbooks(&paths.runbooks_dir)?,
            ops: load_ops(&paths.ops_file)?,
        })
    }

    /// A persona's tool rules (an unknown persona may run nothing).
    pub fn tool_rules(&self, persona: Persona) -> ToolRules {
        self.personas
            .get(&persona)
            .map(|p| p.front.tools.clone())
            .unwrap_or_default()
    }

    /// The environment variables a persona's commands may receive.
    pub fn env_allowed(&self, persona: Persona) -> &[String] {
        self.personas
            .get(&persona)
            .map(|p| p.front.env.as_slice())
            .unwrap_or(&[])
    }

    /// Whether a persona's commands may use the network (`network: true` in its file).
    pub fn network_allowed(&self, persona: Persona) -> bool {
        self.personas.get(&persona).is_some_and(|p| p.front.network)
    }

    /// The capabilities a persona's commands need on a fleet factory by default.
    pub fn capabilities(&self, persona: Persona) -> &[String] {
        self.personas
            .get(&persona)
            .map(|p| p.front.capabilities.as_slice())
            .unwrap_or(&[])
    }

    /// The system prompt of a persona (empty for an unknown name).
    pub fn system_prompt(&self, persona: Persona) -> &str {
        self.personas
            .get(&persona)
            .map(|p| p.system_prompt.as_str())
            .unwrap_or("")
    }
}

/// Refuses a configured path that does not exist; the built-in default path may be absent.
fn refuse_missing(path: &Path, default: &Path, setting: &str) -> Result<(), DefinitionError> {
    if path == default || path.exists() {
        return Ok(());
    }
    Err(DefinitionError::Invalid {
        path: path.display().to_string(),
        reason: format!(
            "does not exist, but {setting} names it (only the default `{}` may be absent)",
            default.display()
        ),
    })
}

fn load_personas(dir: &Path) -> Result<BTreeMap<Persona, PersonaDefinition>, DefinitionError> {
    let mut personas = BTreeMap::new();
    for (file, text) in BUILTIN_PERSONAS {
        let source = format!("builtin:actors/{file}");
        let persona = parse_persona(&source, text)?;
        let name = persona
            .front
            .name
            .parse::<Persona>()
            .map_err(|e| DefinitionError::Invalid {
                path: source,
                reason: e.to_string(),
            })?;
        personas.insert(name, persona);
    }
    for path in files_with_extension(dir, "md")? {
        let text = read(&path)?;
        let source = path.display().to_string();
        let persona = parse_persona(&source, &text)?;
        let expected = path.file_stem().and_then(|s| s.to_str()).unwrap_or("");
        let name = Persona::from_name(expected).filter(|_| persona.front.name == expected);
        let Some(name) = name else {
            let names: Vec<&str> = Persona::ALL.iter().map(|p| p.name()).collect();
            return Err(DefinitionError::Invalid {
                path: source,
                reason: format!(
                    "line 2: name `{}` must match the file name and be one of {}",
                    persona.front.name,
                    names.join(", ")
                ),
            });
        };
        personas.insert(name, persona);
    }
    Ok(personas)
}

/// Splits `---\n<yaml>\n---\n<body>` and parses the YAML.
pub fn parse_persona(source: &str, text: &str) -> Result<PersonaDefinition, DefinitionError> {
    let invalid = |reason: String| DefinitionError::Invalid {
        path: source.to_owned(),
        reason,
    };
    let rest = text
        .strip_prefix("---\n")
        .ok_or_else(|| invalid("line 1: expected `---` opening the YAML front matter".into()))?;
    let end = rest
        .find("\n---")
        .ok_or_else(|| invalid("front matter is not closed by a `---` line".into()))?;
    let front: PersonaFrontMatter =
        crate::model::ops::spec::from_yaml(&rest[..end]).map_err(|e| {
            let line = e.location().map(|l| l.line() + 1).unwrap_or(1);
            invalid(format!("line {line}: {e}"))
        })?;
    if let Err(reason) = crate::model::fleet::check_capabilities(&front.capabilities) {
        let line = rest[..end]
            .lines()
            .position(|l| l.starts_with("capabilities:"))
            .map_or(1, |n| n + 2);
        return Err(invalid(format!("line {line}: `capabilities`: {reason}")));
    }
    let body = rest[end + 4..]
        .trim_start_matches(['-', '\n'])
        .trim()
        .to_owned();
    Ok(PersonaDefinition {
        front,
        system_prompt: body,
        source: source.to_owned(),
    })
}

fn load_runbooks(dir: &Path) -> Result<Vec<Runbook>, DefinitionError> {
    let mut runbooks = Vec::new();
    let mut files = Vec::new();
    for path in files_with_extension(dir, "yaml")? {
        let text = read(&path)?;
        let runbook: Runbook =
            crate::model::ops::spec::from_yaml(&text).map_err(|e| yaml_error(&path, &text, &e))?;
        crate::model::ops::spec::validate_runbook(&runbook, &text).map_err(|reason| {
            DefinitionError::Invalid {
                path: path.display().to_string(),
                reason,
            }
        })?;
        files.push((path, text));
        runbooks.push(runbook);
    }
    refuse_twins(&runbooks, &files)?;
    Ok(runbooks)
}

/// Refuses two runbooks with one name (incidents and logs name runbooks) or one `match` (the
/// first in file-name order answers every signal it matches: the second would never run). The
/// error names the second file, its line and the first file.
fn refuse_twins(runbooks: &[Runbook], files: &[(PathBuf, String)]) -> Result<(), DefinitionError> {
    use crate::model::ops::spec::line_of_path;
    let mut names: BTreeMap<&str, &Path> = BTreeMap::new();
    let mut matchers: BTreeMap<String, &Path> = BTreeMap::new();
    for (runbook, (path, text)) in runbooks.iter().zip(files) {
        let invalid = |field: &str, reason: String| DefinitionError::Invalid {
            path: path.display().to_string(),
            reason: format!("line {}: {reason}", line_of_path(text, &[field])),
        };
        if let Some(first) = names.insert(&runbook.name, path) {
            return Err(invalid(
                "name:",
                format!(
                    "name `{}` is also the name of the runbook in {}",
                    runbook.name,
                    first.display()
                ),
            ));
        }
        let matcher = &runbook.matcher;
        let key = serde_json::to_string(&(&matcher.signal, &matcher.app, &matcher.labels))
            .unwrap_or_default();
        if let Some(first) = matchers.insert(key, path) {
            return Err(invalid(
                "match:",
                format!(
                    "match (signal `{}`{}{}) is the match of the runbook in {} too, which answers \
                     first: this one would never run",
                    matcher.signal,
                    matcher
                        .app
                        .as_ref()
                        .map_or(String::new(), |app| format!(", app `{app}`")),
                    if matcher.labels.is_empty() {
                        String::new()
                    } else {
                        format!(", labels {:?}", matcher.labels)
                    },
                    first.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Loads and validates `ops.yaml`; a missing file means no apps.
pub fn load_ops(path: &Path) -> Result<OpsFile, DefinitionError> {
    if !path.exists() {
        return Ok(OpsFile::default());
    }
    let text = read(path)?;
    let ops = crate::model::ops::spec::from_yaml::<Option<OpsFile>>(&text)
        .map(Option::unwrap_or_default)
        .map_err(|e| yaml_error(path, &text, &e))?;
    let invalid = |reason| DefinitionError::Invalid {
        path: path.display().to_string(),
        reason,
    };
    crate::model::ops::spec::validate_ops(&ops, &text).map_err(invalid)?;
    refuse_non_repositories(&ops, &text).map_err(invalid)?;
    Ok(ops)
}

/// Refuses an app whose `repo` is not a git repository on this host: every deploy would fail at
/// its precheck, long after start. Looks at the disk only (no git process, no network).
fn refuse_non_repositories(ops: &OpsFile, text: &str) -> Result<(), String> {
    for (name, app) in &ops.apps {
        let why = if !app.repo.is_dir() {
            "does not exist or is not a directory"
        } else if !is_git_repository(&app.repo) {
            "is not a git repository (no `.git`, and not a bare repository)"
        } else if !has_branch(&app.repo, &app.branch) {
            let app_key = format!("{name}:");
            let line = crate::model::ops::spec::line_of_path(text, &["apps:", &app_key, "branch:"]);
            return Err(format!(
                "line {line}: app `{name}`: branch `{}` does not exist in repo `{}`",
                app.branch,
                app.repo.display()
            ));
        } else {
            continue;
        };
        let app_key = format!("{name}:");
        let line = crate::model::ops::spec::line_of_path(text, &["apps:", &app_key, "repo:"]);
        return Err(format!(
            "line {line}: app `{name}`: repo `{}` {why}",
            app.repo.display()
        ));
    }
    Ok(())
}

/// The directory holding a repository's refs: `.git`, a linked worktree's common dir, or the
/// bare repository itself.
fn refs_dir(repo: &Path) -> PathBuf {
    let dot_git = repo.join(".git");
    let git_dir = if dot_git.is_file() {
        std::fs::read_to_string(&dot_git)
            .ok()
            .and_then(|text| {
                text.trim()
                    .strip_prefix("gitdir:")
                    .map(|d| repo.join(d.trim()))
            })
            .unwrap_or(dot_git)
    } else if dot_git.is_dir() {
        dot_git
    } else {
        repo.to_path_buf()
    };
    match std::fs::read_to_string(git_dir.join("commondir")) {
        Ok(common) => git_dir.join(common.trim()),
        Err(_) => git_dir,
    }
}

/// Whether `branch` is a branch of `repo`: a loose ref or a line of `packed-refs`. Reads the
/// disk only; a branch that does not resolve would fail every deploy at its precheck.
fn has_branch(repo: &Path, branch: &str) -> bool {
    if branch.is_empty() || branch.contains("..") || branch.starts_with('/') {
        return false;
    }
    let dir = refs_dir(repo);
    if dir.join("refs/heads").join(branch).is_file() {
        return true;
    }
    let wanted = format!("refs/heads/{branch}");
    std::fs::read_to_string(dir.join("packed-refs")).is_ok_and(|packed| {
        packed
            .lines()
            .any(|line| line.split_once(' ').is_some_and(|(_, name)| name == wanted))
    })
}

/// A work tree (a `.git` directory, or the `.git` file of a linked worktree) or a bare
/// repository (`HEAD`, `objects/` and `refs/` at its top).
fn is_git_repository(dir: &Path) -> bool {
    let dot_git = dir.join(".git");
    if dot_git.is_dir() {
        return dot_git.join("HEAD").is_file();
    }
    if dot_git.is_file() {
        return true;
    }
    dir.join("HEAD").is_file() && dir.join("objects").is_dir() && dir.join("refs").is_dir()
}

/// The file, line and serde_yaml_ng's message. serde marks a field given twice at its section's
/// first line; the line reported is the second occurrence's, where the operator looks.
fn yaml_error(path: &Path, text: &str, error: &serde_yaml_ng::Error) -> DefinitionError {
    let mut line = error.location().map(|l| l.line()).unwrap_or(1);
    let message = error.to_string();
    if let Some(field) = message
        .split_once("duplicate field `")
        .and_then(|(_, rest)| rest.split_once('`'))
        .map(|(field, _)| field)
    {
        let section: String = text
            .lines()
            .skip(line.saturating_sub(1))
            .collect::<Vec<_>>()
            .join("\n");
        let key = format!("{field}:");
        let second = crate::model::ops::spec::line_of_path(&section, &[&key, &key]);
        line += second - 1;
    }
    DefinitionError::Invalid {
        path: path.display().to_string(),
        reason: format!("line {line}: {message}"),
    }
}

fn read(path: &Path) -> Result<String, DefinitionError> {
    std::fs::read_to_string(path).map_err(|source| DefinitionError::Read {
        path: path.display().to_string(),
        source,
    })
}

fn files_with_extension(dir: &Path, extension: &str) -> Result<Vec<PathBuf>, DefinitionError> {
    if !dir.is_dir() {
        return Ok(Vec::new());
    }
    let entries = std::fs::read_dir(dir).map_err(|source| DefinitionError::Read {
        path: dir.display().to_string(),
        source,
    })?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| path.extension().and_then(|e| e.to_str()) == Some(extension))
        .collect();
    files.sort();
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_personas_all_parse() {
        let dir = tempfile::tempdir().unwrap();
        let personas = load_personas(dir.path()).unwrap();
        assert_eq!(personas.len(), Persona::ALL.len());
        assert!(!personas[&Persona::Patch].system_prompt.is_empty());
    }

    /// A persona's default capabilities are read and checked as a task's are.
    #[test]
    fn persona_capabilities_are_optional_and_checked() {
        let dir = tempfile::tempdir().unwrap();
        let definitions = Definitions {
            personas: load_personas(dir.path()).unwrap(),
            runbooks: Vec::new(),
            ops: OpsFile::default(),
        };
        assert!(definitions.capabilities(Persona::Patch).is_empty());
        let parsed = parse_persona(
            "actors/patch.md",
            "---\nname: patch\nrole: r\ncapabilities: [has:gpu, zone:eu]\n---\nbody",
        )
        .unwrap();
        assert_eq!(parsed.front.capabilities, ["has:gpu", "zone:eu"]);
        let refused = parse_persona(
            "actors/patch.md",
            "---\nname: patch\nrole: r\ncapabilities: [Has GPU]\n---\nbody",
        )
        .unwrap_err()
        .to_string();
        assert!(
            refused.contains("line 4") && refused.contains("Has GPU"),
            "{refused}"
        );
    }

    /// The network is off unless a persona file says `network: true`; the Uplink personas say it.
    #[test]
    fn network_is_opt_in_per_persona() {
        let dir = tempfile::tempdir().unwrap();
        let definitions = Definitions {
            personas: load_personas(dir.path()).unwrap(),
            runbooks: Vec::new(),
            ops: OpsFile::default(),
        };
        for persona in [Persona::Planner, Persona::Patch, Persona::Circuit] {
            assert!(!definitions.network_allowed(persona), "{persona:?}");
        }
        assert!(definitions.network_allowed(Persona::UplinkWatch));
        let parsed = parse_persona(
            "actors/patch.md",
            "---\nname: patch\nrole: r\nnetwork: true\n---\nbody",
        )
        .unwrap();
        assert!(parsed.front.network);
    }

    #[test]
    fn bad_front_matter_names_file_and_line() {
        let error = parse_persona("actors/x.md", "---\nname: x\nrole: [\n---\nbody").unwrap_err();
        let text = error.to_string();
        assert!(text.starts_with("actors/x.md: line"), "{text}");
    }

    fn write_runbook(dir: &Path, file: &str, name: &str, matcher: &str) {
        let text = format!(
            "# a runbook\nname: {name}\nmatch: {matcher}\nclassify: noise\nsteps:\n  - {{action: notify}}\n"
        );
        std::fs::write(dir.join(file), text).unwrap();
    }

    /// Issue #16: two runbooks with one name are refused, naming the second file and its line.
    #[test]
    fn a_duplicate_runbook_name_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        write_runbook(dir.path(), "a.yaml", "restart", "{signal: one}");
        write_runbook(dir.path(), "b.yaml", "restart", "{signal: two}");
        let error = load_runbooks(dir.path()).unwrap_err().to_string();
        assert!(error.contains("b.yaml: line 2: name `restart`"), "{error}");
        assert!(error.contains("a.yaml"), "{error}");
    }

    /// Two runbooks with one match (signal, app and labels): the second would never run.
    #[test]
    fn a_duplicate_runbook_match_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let matcher = "{signal: down, app: web, labels: {tier: db}}";
        write_runbook(dir.path(), "a.yaml", "first", matcher);
        write_runbook(dir.path(), "b.yaml", "second", matcher);
        let error = load_runbooks(dir.path()).unwrap_err().to_string();
        assert!(
            error.contains("b.yaml: line 3: match (signal `down`, app `web`"),
            "{error}"
        );
        assert!(error.contains("never run"), "{error}");
        // Another label value or another app is another match.
        write_runbook(
            dir.path(),
            "b.yaml",
            "second",
            "{signal: down, app: web, labels: {tier: web}}",
        );
        write_runbook(dir.path(), "c.yaml", "third", "{signal: down}");
        assert_eq!(load_runbooks(dir.path()).unwrap().len(), 3);
    }

    fn ops_with_repo(dir: &Path, repo: &Path) -> PathBuf {
        let path = dir.join("ops.yaml");
        let text = format!(
            "apps:\n  web:\n    repo: {}\n    provider: command\n    command: {{deploy: a, rollback: b}}\n  api:\n    repo: {}\n    provider: command\n    command: {{deploy: a, rollback: b}}\n",
            dir.display(),
            repo.display()
        );
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Issue #16: an app's repo that is not a git repository stops start-up at its line; a work
    /// tree and a bare repository are both repositories.
    #[test]
    fn a_repo_that_is_not_git_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".git")).unwrap();
        std::fs::write(dir.path().join(".git/HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::create_dir_all(dir.path().join(".git/refs/heads")).unwrap();
        std::fs::write(dir.path().join(".git/refs/heads/main"), "0\n").unwrap();
        let plain = dir.path().join("plain");
        std::fs::create_dir_all(&plain).unwrap();
        let path = ops_with_repo(dir.path(), &plain);
        let error = load_ops(&path).unwrap_err().to_string();
        assert!(
            error.contains("ops.yaml: line 7: app `api`: repo")
                && error.contains("not a git repository"),
            "{error}"
        );
        let path = ops_with_repo(dir.path(), &dir.path().join("missing"));
        let error = load_ops(&path).unwrap_err().to_string();
        assert!(
            error.contains("line 7: app `api`") && error.contains("does not exist"),
            "{error}"
        );

        let bare = dir.path().join("bare.git");
        std::fs::create_dir_all(bare.join("objects")).unwrap();
        std::fs::create_dir_all(bare.join("refs")).unwrap();
        std::fs::write(bare.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(bare.join("packed-refs"), "0123 refs/heads/main\n").unwrap();
        let path = ops_with_repo(dir.path(), &bare);
        assert_eq!(load_ops(&path).unwrap().apps.len(), 2);
    }

    /// Issue 24: an app's branch must exist in its repository (a typo used to be accepted, and
    /// every deploy of it failed with an outage incident); loose and packed refs both count.
    #[test]
    fn an_unknown_branch_names_the_app_and_the_branch() {
        let dir = tempfile::tempdir().unwrap();
        let repo = dir.path().join("bare.git");
        std::fs::create_dir_all(repo.join("objects")).unwrap();
        std::fs::create_dir_all(repo.join("refs/heads/feature")).unwrap();
        std::fs::write(repo.join("HEAD"), "ref: refs/heads/main\n").unwrap();
        std::fs::write(repo.join("refs/heads/feature/x"), "0\n").unwrap();
        std::fs::write(
            repo.join("packed-refs"),
            "# pack-refs\n0123 refs/heads/main\n",
        )
        .unwrap();
        let path = dir.path().join("ops.yaml");
        let app = |branch: &str| {
            format!(
                "apps:\n  web:\n    repo: {}\n    branch: {branch}\n    provider: command\n    command: {{deploy: a, rollback: b}}\n",
                repo.display()
            )
        };
        for good in ["main", "feature/x"] {
            std::fs::write(&path, app(good)).unwrap();
            assert_eq!(load_ops(&path).unwrap().apps.len(), 1, "{good}");
        }
        for bad in ["mian", "feature", "../HEAD"] {
            std::fs::write(&path, app(bad)).unwrap();
            let error = load_ops(&path).unwrap_err().to_string();
            assert!(
                error.contains(&format!(
                    "ops.yaml: line 4: app `web`: branch `{bad}` does not exist"
                )),
                "{error}"
            );
        }
    }

    /// Issue 24: a configured ops file or runbooks dir that does not exist stops start-up; the
    /// default paths may be absent.
    #[test]
    fn a_configured_path_that_does_not_exist_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let paths = PathsConfig {
            actors_dir: dir.path().join("actors"),
            runbooks_dir: dir.path().to_path_buf(),
            ops_file: dir.path().join("opz.yaml"),
        };
        let error = Definitions::load(&paths).unwrap_err().to_string();
        assert!(error.contains("opz.yaml: does not exist"), "{error}");
        assert!(error.contains("paths.ops_file"), "{error}");
        let paths = PathsConfig {
            runbooks_dir: dir.path().join("runbookz"),
            ops_file: PathsConfig::default().ops_file,
            ..paths
        };
        let error = Definitions::load(&paths).unwrap_err().to_string();
        assert!(error.contains("runbookz: does not exist"), "{error}");
    }

    /// A field given twice is reported at its second line, not at its section's first.
    #[test]
    fn a_duplicate_field_names_its_second_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.yaml");
        let text = format!(
            "apps:\n  web:\n    repo: {}\n    branch: a\n    provider: command\n    branch: b\n    command: {{deploy: a, rollback: b}}\n",
            dir.path().display()
        );
        std::fs::write(&path, text).unwrap();
        let error = load_ops(&path).unwrap_err().to_string();
        assert!(error.contains("ops.yaml: line 6: "), "{error}");
        assert!(error.contains("duplicate field `branch`"), "{error}");
    }

    /// A duplicate app key reaches the operator as file, line and app.
    #[test]
    fn a_duplicate_app_key_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.yaml");
        let app = format!(
            "    repo: {}\n    provider: command\n    command: {{deploy: a, rollback: b}}\n",
            dir.path().display()
        );
        std::fs::write(&path, format!("apps:\n  web:\n{app}  web:\n{app}")).unwrap();
        let error = load_ops(&path).unwrap_err().to_string();
        assert!(error.contains("ops.yaml: line 6: "), "{error}");
        assert!(error.contains("app `web` is declared twice"), "{error}");
    }

    /// An empty or comment-only `ops.yaml` still means no apps (the whole-text read accepts it).
    #[test]
    fn an_empty_ops_file_means_no_apps() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ops.yaml");
        for text in ["", "# nothing yet\n", "apps: {}\n"] {
            std::fs::write(&path, text).unwrap();
            assert!(load_ops(&path).unwrap().apps.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn repository_data_files_load() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let definitions = Definitions::load(&PathsConfig {
            actors_dir: root.join("actors"),
            runbooks_dir: root.join("runbooks"),
            ops_file: root.join("ops.yaml"),
        })
        .unwrap();
        assert!(!definitions.runbooks.is_empty());
        assert_eq!(definitions.personas.len(), Persona::ALL.len());
    }
}
