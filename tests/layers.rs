//! The layering rule, read from the source the way the OpenAPI test reads the router: every file
//! under `src/` belongs to the layer named by its first folder, and may only import from its own
//! layer or the ones below it; no modules import each other in a circle; the bottom layers use no
//! runtime crates. Also: every file and every module path `docs/ARCHITECTURE.md` names exists,
//! every layer is named, and the document stays short enough to be read.

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The layers, bottom first. A file in layer N may import layers 0..=N.
const LAYERS: [&str; 8] = [
    "model", "config", "platform", "storage", "runtime", "work", "actors", "app",
];

/// Crates a layer must not name: the vocabulary and the configuration stay plain data.
const FORBIDDEN_CRATES: [(&str, &[&str]); 2] = [
    ("model", &["tokio", "sled", "ractor", "axum", "reqwest"]),
    ("config", &["tokio", "sled", "ractor", "axum", "reqwest"]),
];

/// Modules a layer must not call although they sit below it: storage answers what changed and
/// leaves the reporting to its callers.
const FORBIDDEN_MODULES: [(&str, &str); 1] = [("storage", "platform::metrics")];

/// One module's source, as the checks see it.
struct Module {
    /// `src/`-relative file, for messages.
    file: String,
    /// The code without comments and without its trailing `#[cfg(test)]` module.
    code: String,
}

fn rank(module: &str) -> Option<usize> {
    let top = module.split("::").next()?;
    LAYERS.iter().position(|layer| *layer == top)
}

/// Code only: line comments (doc comments included) removed, and the `#[cfg(test)] mod tests`
/// at the end cut off (tests may reach wherever they need).
fn code_only(text: &str) -> String {
    let mut code = String::with_capacity(text.len());
    for line in text.lines() {
        let trimmed = line.trim_start();
        if trimmed.starts_with("//") {
            continue;
        }
        code.push_str(line);
        code.push('\n');
    }
    if let Some(at) = code.find("#[cfg(test)]\nmod tests") {
        code.truncate(at);
    }
    code
}

/// Every `src/**/*.rs` except the crate roots and test-only files, by module path.
fn read_modules(src: &Path) -> BTreeMap<String, Module> {
    fn walk(dir: &Path, files: &mut Vec<PathBuf>) {
        let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        for entry in entries {
            let path = entry.unwrap().path();
            if path.is_dir() {
                walk(&path, files);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules = BTreeMap::new();
    for path in files {
        let relative = path
            .strip_prefix(src)
            .unwrap()
            .to_string_lossy()
            .replace('\\', "/");
        if relative == "lib.rs" || relative == "main.rs" || relative.ends_with("/tests.rs") {
            continue;
        }
        let without_ext = relative.trim_end_matches(".rs");
        let module = without_ext.trim_end_matches("/mod").replace('/', "::");
        let text = std::fs::read_to_string(&path).unwrap();
        modules.insert(
            module,
            Module {
                file: format!("src/{relative}"),
                code: code_only(&text),
            },
        );
    }
    modules
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The paths a `crate::`/`super::` reference at the start of `rest` names, with `{a, b::{c}}`
/// groups expanded.
fn expand(prefix: &str, rest: &str, out: &mut Vec<String>) {
    let mut path = prefix.to_owned();
    let mut chars = rest.char_indices().peekable();
    while let Some(&(i, c)) = chars.peek() {
        if is_ident(c) || c == ':' {
            path.push(c);
            chars.next();
        } else if c == '{' {
            // A group: split its items at top-level commas.
            let mut depth = 0;
            let mut start = i + 1;
            for (j, c) in rest[i..].char_indices() {
                let j = i + j;
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            expand(&path, rest[start..j].trim(), out);
                            return;
                        }
                    }
                    ',' if depth == 1 => {
                        expand(&path, rest[start..j].trim(), out);
                        start = j + 1;
                    }
                    _ => {}
                }
            }
            return;
        } else {
            break;
        }
    }
    out.push(path.trim_end_matches("::").to_owned());
}

/// Every path module `name` names through `crate::` or `super::`, made absolute (no `crate::`).
fn references(name: &str, module: &Module) -> Vec<String> {
    let mut paths = Vec::new();
    let code = &module.code;
    for (at, _) in code.match_indices("crate::") {
        if at > 0 && code[..at].ends_with(|c: char| is_ident(c) || c == ':') {
            continue;
        }
        expand("", &code[at + "crate::".len()..], &mut paths);
    }
    let own: Vec<&str> = name.split("::").collect();
    let mut at = 0;
    while let Some(found) = code[at..].find("super::") {
        let start = at + found;
        at = start + 1;
        if start > 0 && code[..start].ends_with(|c: char| is_ident(c) || c == ':') {
            continue;
        }
        let mut rest = &code[start..];
        let mut ups = 0;
        while let Some(stripped) = rest.strip_prefix("super::") {
            ups += 1;
            rest = stripped;
        }
        at = start + (code[start..].len() - rest.len());
        // `super` is the parent module, whether the file is `x.rs` or `x/mod.rs`.
        let base = own[..own.len().saturating_sub(ups)].join("::");
        let prefix = if base.is_empty() {
            String::new()
        } else {
            format!("{base}::")
        };
        expand(&prefix, rest, &mut paths);
    }
    paths
}

/// The module a path lands in: its longest prefix that is a module.
fn resolve<'a>(path: &str, modules: &'a BTreeMap<String, Module>) -> Option<&'a str> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().find_map(|n| {
        let candidate = parts[..n].join("::");
        modules.get_key_value(&candidate).map(|(k, _)| k.as_str())
    })
}

fn is_ancestor(ancestor: &str, of: &str) -> bool {
    of.starts_with(ancestor) && of[ancestor.len()..].starts_with("::")
}

/// Module → the modules it imports (itself, its ancestors and descendants left out: a module
/// and its children are one unit).
fn edges(modules: &BTreeMap<String, Module>) -> BTreeMap<String, BTreeSet<String>> {
    let mut edges = BTreeMap::new();
    for (name, module) in modules {
        let targets: BTreeSet<String> = references(name, module)
            .iter()
            .filter_map(|path| resolve(path, modules))
            .filter(|t| *t != name && !is_ancestor(t, name) && !is_ancestor(name, t))
            .map(str::to_owned)
            .collect();
        edges.insert(name.clone(), targets);
    }
    edges
}

/// Imports that run up the layers, and files outside any layer.
fn upward_imports(modules: &BTreeMap<String, Module>) -> Vec<String> {
    let mut violations = Vec::new();
    for (from, targets) in edges(modules) {
        let file = &modules[&from].file;
        let Some(from_rank) = rank(&from) else {
            violations.push(format!(
                "{file}: not in a layer folder ({})",
                LAYERS.join(", ")
            ));
            continue;
        };
        for (layer, forbidden) in FORBIDDEN_MODULES {
            if rank(&from) == rank(layer) && targets.contains(forbidden) {
                violations.push(format!(
                    "{file}: `{from}` is in `{layer}`, which must not call `{forbidden}`"
                ));
            }
        }
        for to in targets {
            match rank(&to) {
                Some(to_rank) if to_rank <= from_rank => {}
                _ => violations.push(format!(
                    "{file}: `{from}` (layer {}) imports `{to}`, a layer above it",
                    LAYERS[from_rank]
                )),
            }
        }
    }
    for (layer, crates) in FORBIDDEN_CRATES {
        for (name, module) in modules.iter().filter(|(n, _)| rank(n) == rank(layer)) {
            for krate in crates {
                if module.code.contains(&format!("{krate}::")) {
                    violations.push(format!(
                        "{}: `{name}` is in `{layer}`, which must not use `{krate}`",
                        module.file
                    ));
                }
            }
        }
    }
    violations
}

/// Groups of modules that import each other in a circle (Tarjan's strongly connected components).
fn cycles(modules: &BTreeMap<String, Module>) -> Vec<Vec<String>> {
    struct Tarjan<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on_stack: BTreeSet<&'a str>,
        found: Vec<Vec<String>>,
    }
    impl<'a> Tarjan<'a> {
        fn visit(&mut self, v: &'a str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.edges.get(v).into_iter().flatten() {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.push(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    component.sort();
                    self.found.push(component);
                }
            }
        }
    }
    let edges = edges(modules);
    let mut tarjan = Tarjan {
        edges: &edges,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        found: Vec::new(),
    };
    for name in edges.keys() {
        if !tarjan.index.contains_key(name.as_str()) {
            tarjan.visit(name);
        }
    }
    tarjan.found
}

/// The most characters `docs/ARCHITECTURE.md` may have: a map read in one sitting; details go
/// next to the code or into the topical documents (issue 28).
const ARCHITECTURE_CHARS_MAX: usize = 20_000;

/// Path roots that name no module of ours: the standard library's crates (the dependencies are
/// read from `Cargo.toml`).
const STD_CRATES: [&str; 3] = ["std", "core", "alloc"];

fn is_ident_text(text: &str) -> bool {
    text.chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && text.chars().all(is_ident)
}

/// Whether `name` occurs as a whole identifier in `code`.
fn mentions(code: &str, name: &str) -> bool {
    code.match_indices(name).any(|(at, _)| {
        let before = code[..at].chars().next_back();
        let after = code[at + name.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// The dependency names of `Cargo.toml` (`-` as `_`): paths rooted there are not ours.
fn dependency_crates(manifest: &str) -> BTreeSet<String> {
    let mut crates: BTreeSet<String> = STD_CRATES.iter().map(|c| (*c).to_owned()).collect();
    let mut in_dependencies = false;
    for line in manifest.lines().map(str::trim) {
        if line.starts_with('[') {
            in_dependencies = line.ends_with("dependencies]");
        } else if in_dependencies {
            if let Some((name, _)) = line.split_once('=') {
                crates.insert(name.trim().replace('-', "_"));
            }
        }
    }
    crates
}

/// Every backticked Rust path in `text` (`crate::work::merge_queue`, `work::intake::submit`,
/// `store::Store`, `process::run()`) that does not resolve: its first segment must be a layer, the
/// last segment of one of our modules, or a dependency; then each lowercase segment that is a
/// submodule is followed, and the first segment left must be an identifier the module's code (or
/// its submodules') mentions.
fn unresolved_paths(
    text: &str,
    modules: &BTreeMap<String, Module>,
    crates: &BTreeSet<String>,
) -> (usize, Vec<String>) {
    let mut checked = 0;
    let mut unresolved = Vec::new();
    for (i, span) in text.split('`').enumerate() {
        let path = span.trim_end_matches("()");
        let path = path.strip_prefix("crate::").unwrap_or(path);
        let segments: Vec<&str> = path.split("::").collect();
        if i % 2 == 0 || segments.len() < 2 || !segments.iter().all(|s| is_ident_text(s)) {
            continue;
        }
        let first = segments[0];
        if crates.contains(first) {
            continue;
        }
        checked += 1;
        if first.starts_with(|c: char| c.is_ascii_uppercase()) {
            // `Type::item`: a type of ours that has the item.
            let defines = |code: &str| {
                ["struct", "enum", "trait", "type"]
                    .iter()
                    .any(|kind| mentions(code, &format!("{kind} {first}")))
            };
            // The item may sit in an `impl` in a submodule of the type's module.
            let known = modules
                .iter()
                .filter(|(_, m)| defines(&m.code))
                .any(|(owner, _)| {
                    modules
                        .iter()
                        .filter(|(name, _)| *name == owner || is_ancestor(owner, name))
                        .any(|(_, m)| mentions(&m.code, segments[1]))
                });
            if !known {
                unresolved.push(span.to_owned());
            }
            continue;
        }
        let suffix = format!("::{first}");
        let resolved = modules
            .keys()
            .filter(|m| *m == first || m.ends_with(&suffix))
            .any(|root| resolves(root, &segments[1..], modules));
        if !resolved {
            unresolved.push(span.to_owned());
        }
    }
    (checked, unresolved)
}

/// Whether `rest` names submodules and then (optionally) an item of the module `root`.
fn resolves(root: &str, rest: &[&str], modules: &BTreeMap<String, Module>) -> bool {
    let mut module = root.to_owned();
    let mut rest = rest;
    while let Some((next, tail)) = rest.split_first() {
        let child = format!("{module}::{next}");
        if !modules.contains_key(&child) {
            break;
        }
        module = child;
        rest = tail;
    }
    match rest.first() {
        None => true,
        Some(item) => modules
            .iter()
            .filter(|(name, _)| name.as_str() == module || is_ancestor(&module, name))
            .any(|(_, m)| mentions(&m.code, item)),
    }
}

fn source_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_import_points_down_the_layers() {
    let modules = read_modules(&source_dir());
    assert!(modules.len() > 40, "found only {} modules", modules.len());
    let violations = upward_imports(&modules);
    assert!(
        violations.is_empty(),
        "imports against the layering (docs/ARCHITECTURE.md):\n{}",
        violations.join("\n")
    );
}

#[test]
fn no_modules_import_each_other_in_a_circle() {
    let found = cycles(&read_modules(&source_dir()));
    assert!(found.is_empty(), "module cycles: {found:#?}");
}

fn fixture(files: &[(&str, &str)]) -> BTreeMap<String, Module> {
    files
        .iter()
        .map(|(name, code)| {
            let module = Module {
                file: format!("src/{}.rs", name.replace("::", "/")),
                code: code_only(code),
            };
            ((*name).to_owned(), module)
        })
        .collect()
}

#[test]
fn the_checks_catch_an_upward_import_a_cycle_and_a_runtime_crate_in_the_model() {
    let upward = fixture(&[
        ("model::task", "use crate::storage::store::Store;\n"),
        ("storage::store", "pub struct Store;\n"),
    ]);
    let violations = upward_imports(&upward);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("`model::task` (layer model) imports `storage::store`"));

    // Grouped, nested and `super` imports count too; comments and tests do not.
    let grouped = fixture(&[
        (
            "work::intake",
            "use crate::{model::task::Task, actors::{compass::X}};\n",
        ),
        (
            "work::ops",
            "// crate::app::http is only named in a comment\n",
        ),
        ("actors::compass", "pub struct X;\n"),
        (
            "model::task",
            "pub struct Task;\n#[cfg(test)]\nmod tests {\n use crate::app::http;\n}\n",
        ),
        ("app::http", "\n"),
    ]);
    let violations = upward_imports(&grouped);
    assert_eq!(violations.len(), 1, "{violations:?}");
    assert!(violations[0].contains("`work::intake` (layer work) imports `actors::compass`"));

    let circle = fixture(&[
        (
            "work::engine",
            "fn f() { crate::work::metering::charge(); }\n",
        ),
        ("work::metering", "use super::intake::submit;\n"),
        ("work::intake", "use crate::work::engine::run;\n"),
    ]);
    assert_eq!(
        cycles(&circle),
        vec![vec![
            "work::engine".to_owned(),
            "work::intake".into(),
            "work::metering".into()
        ]]
    );
    assert!(upward_imports(&circle).is_empty());

    let storage_reporting = fixture(&[
        (
            "storage::store",
            "fn f() { crate::platform::metrics::store_group(1); }\n",
        ),
        ("platform::metrics", "\n"),
    ]);
    let violations = upward_imports(&storage_reporting);
    assert!(
        violations[0].contains("must not call `platform::metrics`"),
        "{violations:?}"
    );

    let runtime_in_model = fixture(&[("model::task", "fn f() { tokio::spawn(async {}); }\n")]);
    let violations = upward_imports(&runtime_in_model);
    assert!(
        violations[0].contains("must not use `tokio`"),
        "{violations:?}"
    );
}

/// The documents whose file and module paths must exist: the map, and the details it points to.
const MAPPED_DOCS: [&str; 2] = ["docs/ARCHITECTURE.md", "docs/internals.md"];

/// The backticked repository paths (`src/...`, `tests/...`) of `text`, and those that do not exist.
fn missing_files(root: &Path, text: &str) -> (usize, Vec<String>) {
    let mut named = 0;
    let mut missing = Vec::new();
    for (i, span) in text.split('`').enumerate() {
        // Odd pieces are inside backticks.
        let looks_like_path = [
            "src/",
            "tests/",
            "benches/",
            "docs/",
            "actors/",
            "runbooks/",
        ]
        .iter()
        .any(|p| span.starts_with(p))
            && !span.contains(' ')
            && !span.contains('<')
            && !span.contains('*');
        if i % 2 == 1 && looks_like_path {
            named += 1;
            if !root.join(span.trim_end_matches('/')).exists() {
                missing.push(span.to_owned());
            }
        }
    }
    (named, missing)
}

#[test]
fn the_architecture_document_names_only_files_that_exist_and_every_layer() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for doc in MAPPED_DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let (named, missing) = missing_files(root, &text);
        assert!(named > 20, "{doc} names only {named} files");
        assert!(
            missing.is_empty(),
            "{doc} names files that do not exist: {missing:?}"
        );
    }
    let text = std::fs::read_to_string(root.join(MAPPED_DOCS[0])).unwrap();
    for layer in LAYERS {
        let folder = format!("`src/{layer}/`");
        assert!(
            text.contains(&folder),
            "docs/ARCHITECTURE.md does not name the layer {folder}"
        );
    }
}

#[test]
fn the_architecture_document_names_only_module_paths_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let manifest = std::fs::read_to_string(root.join("Cargo.toml")).unwrap();
    let crates = dependency_crates(&manifest);
    let modules = read_modules(&source_dir());
    for doc in MAPPED_DOCS {
        let text = std::fs::read_to_string(root.join(doc)).unwrap();
        let (checked, unresolved) = unresolved_paths(&text, &modules, &crates);
        assert!(checked >= 10, "{doc} names only {checked} module paths");
        assert!(
            unresolved.is_empty(),
            "{doc} names module paths that do not resolve to a module of src/ (or an item one \
             of them mentions): {unresolved:?}"
        );
    }
}

#[test]
fn the_architecture_document_is_short_enough_to_be_read() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).unwrap();
    let chars = text.chars().count();
    assert!(
        chars <= ARCHITECTURE_CHARS_MAX,
        "docs/ARCHITECTURE.md has {chars} characters, more than {ARCHITECTURE_CHARS_MAX}: move \
         details next to the code (`//!`) or into docs/internals.md"
    );
}

#[test]
fn the_module_path_check_catches_a_missing_module_or_item() {
    let modules = fixture(&[
        ("work", "pub(crate) mod intake;\n"),
        (
            "work::intake",
            "pub(crate) async fn submit() {}\npub(crate) struct Submission;\n",
        ),
        ("app::http", "pub(crate) mod tasks;\n"),
        ("app::http::tasks", "pub(crate) async fn list() {}\n"),
        (
            "storage::store",
            "pub struct Store;\nimpl Store { pub fn write() {} }\n",
        ),
    ]);
    let crates = dependency_crates(
        "[dependencies]\ntokio = \"1\"\n[dev-dependencies]\nfantoccini = \"0\"\n",
    );
    let text = "Good: `crate::work::intake`, `work::intake::submit`, `intake::Submission`, \
                `http::tasks::list()`, `store::Store`, `Store::write`, `tokio::spawn`, \
                `std::fs`, `fantoccini::Client`, `not a path`, `a::b c`.\n\
                Bad: `work::merge_queue`, `http::tasks::submit`, `crate::work::nope::x`, \
                `htp::tasks`, `Store::read`, `Nope::new`.";
    let (checked, unresolved) = unresolved_paths(text, &modules, &crates);
    assert_eq!(checked, 12, "{unresolved:?}");
    assert_eq!(
        unresolved,
        [
            "work::merge_queue",
            "http::tasks::submit",
            "crate::work::nope::x",
            "htp::tasks",
            "Store::read",
            "Nope::new"
        ]
    );
}
