//! The scanner against a real directory: secret values plain and encoded in files, in a
//! symlink's target and in a name are found; a symlink's target file is never read; deleted
//! paths, clean files and paths under a symlinked directory pass; the bounds refuse what they
//! cannot read whole.

use std::os::unix::fs::symlink;

use super::*;

const VALUE: &str = "hunter2-very-secret-value";

fn redactor() -> Redactor {
    Redactor::new([("TOKEN".to_owned(), VALUE.to_owned())])
}

fn paths(names: &[&str]) -> Vec<String> {
    names.iter().map(|name| (*name).to_owned()).collect()
}

#[test]
fn secret_values_plain_and_encoded_are_found_and_named_never_shown() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    std::fs::create_dir(root.join("src")).unwrap();
    std::fs::write(root.join("clean.txt"), "nothing to see\n").unwrap();
    std::fs::write(root.join("plain.txt"), format!("key = {VALUE}\n")).unwrap();
    // `printf %s "$VALUE" | base64`, and hex.
    let base64 = "aHVudGVyMi12ZXJ5LXNlY3JldC12YWx1ZQ==";
    std::fs::write(root.join("src/b64.txt"), format!("{base64}\n")).unwrap();
    std::fs::write(root.join("hex.bin"), hex::encode(VALUE)).unwrap();
    let changed = paths(&[
        "clean.txt",
        "plain.txt",
        "src/b64.txt",
        "hex.bin",
        "gone.txt",
    ]);

    let findings = scan_change(&redactor(), root, &changed, &[]);

    assert_eq!(
        findings.with_secrets,
        paths(&["plain.txt", "src/b64.txt", "hex.bin"])
    );
    assert!(findings.too_large.is_empty());
    let message = refusal(&findings);
    assert!(
        message.contains("plain.txt, src/b64.txt, hex.bin"),
        "{message}"
    );
    assert!(!message.contains(VALUE), "{message}");
}

#[test]
fn a_symlink_is_read_as_its_link_text_never_followed() {
    let dir = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let root = dir.path();
    // A file outside the worktree holding the value: a link to it is not a leak of it.
    let target = outside.path().join("holds-it.txt");
    std::fs::write(&target, VALUE).unwrap();
    symlink(&target, root.join("link-out")).unwrap();
    // A link whose own text is the value is (git commits the text).
    symlink(format!("/tmp/{VALUE}"), root.join("link-named")).unwrap();
    // A path under a symlinked directory is not read through it.
    symlink(outside.path(), root.join("dir-link")).unwrap();
    let changed = paths(&["link-out", "link-named", "dir-link/holds-it.txt"]);

    let findings = scan_change(&redactor(), root, &changed, &[]);

    assert_eq!(findings.with_secrets, paths(&["link-named"]));
    assert!(findings.too_large.is_empty());
}

#[test]
fn a_name_that_holds_the_value_is_refused_redacted() {
    let dir = tempfile::tempdir().unwrap();
    let name = format!("notes-{VALUE}.md");
    std::fs::write(dir.path().join(&name), "clean").unwrap();

    let findings = scan_change(&redactor(), dir.path(), &[name], &[]);

    assert_eq!(findings.with_secrets, paths(&["notes-[REDACTED:TOKEN].md"]));
}

#[test]
fn a_clean_change_passes_and_odd_paths_are_skipped() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "fine").unwrap();
    std::fs::create_dir(dir.path().join("submodule")).unwrap();
    let changed = paths(&["a.txt", "submodule", "../escape", "/etc/passwd", "deleted"]);

    let findings = scan_change(&redactor(), dir.path(), &changed, &[]);

    assert!(findings.is_clean(), "{findings:?}");
}

#[test]
fn a_file_over_the_bound_is_refused_not_half_read() {
    let dir = tempfile::tempdir().unwrap();
    let big = std::fs::File::create(dir.path().join("big.bin")).unwrap();
    big.set_len(FILE_BYTES_MAX + 1).unwrap();
    std::fs::write(dir.path().join("small.txt"), "fine").unwrap();

    let findings = scan_change(
        &redactor(),
        dir.path(),
        &paths(&["big.bin", "small.txt"]),
        &[],
    );

    assert_eq!(findings.too_large, paths(&["big.bin"]));
    assert!(findings.with_secrets.is_empty());
    assert!(refusal(&findings).contains("could not be scanned"));
}

#[test]
fn the_total_bound_counts_every_file() {
    let dir = tempfile::tempdir().unwrap();
    let files = CHANGE_BYTES_MAX / FILE_BYTES_MAX + 1;
    let mut changed = Vec::new();
    for index in 0..files {
        let name = format!("f{index}.bin");
        let file = std::fs::File::create(dir.path().join(&name)).unwrap();
        file.set_len(FILE_BYTES_MAX).unwrap();
        changed.push(name);
    }

    let findings = scan_change(&redactor(), dir.path(), &changed, &[]);

    assert_eq!(findings.too_large, paths(&[&format!("f{}.bin", files - 1)]));
}

#[test]
fn long_lists_are_cut() {
    let many: Vec<String> = (0..NAMED_FILES_MAX + 3).map(|i| format!("f{i}")).collect();
    assert!(listed(&many).ends_with("and 3 more"));
}

/// Runs git in `dir` (a test fixture; panics on failure).
fn git(dir: &Path, args: &[&str]) {
    let status = std::process::Command::new("git")
        .args(["-c", "user.name=t", "-c", "user.email=t@localhost"])
        .args(args)
        .current_dir(dir)
        .status()
        .unwrap();
    assert!(status.success(), "git {args:?}");
}

#[tokio::test]
async fn what_the_index_stages_is_read_too_where_git_converts_it() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    git(root, &["init", "-q", "-b", "main"]);
    // In the worktree the file is UTF-16 (the value's bytes are interleaved with NULs and match
    // nothing); git stores it as UTF-8, where the value is plain.
    std::fs::write(
        root.join(".gitattributes"),
        "*.txt working-tree-encoding=UTF-16LE\n",
    )
    .unwrap();
    let utf16: Vec<u8> = format!("key={VALUE}\n")
        .encode_utf16()
        .flat_map(u16::to_le_bytes)
        .collect();
    std::fs::write(root.join("wide.txt"), &utf16).unwrap();
    std::fs::write(root.join("plain.md"), "nothing\n").unwrap();
    git(root, &["add", "-A"]);
    let changed = paths(&[".gitattributes", "wide.txt", "plain.md", "gone.txt"]);
    assert!(
        scan_change(&redactor(), root, &changed, &[]).is_clean(),
        "the worktree's bytes alone hide it"
    );

    let repo = Git::new(root, Duration::from_secs(10));
    let staged = converted_blobs(&repo, root, &changed).await;
    assert_eq!(staged.len(), 1, "{staged:?}");
    assert_eq!(staged[0].0, 1);
    let findings = scan_change(&redactor(), root, &changed, &staged);

    assert_eq!(findings.with_secrets, paths(&["wide.txt"]));
    assert!(findings.too_large.is_empty());
}

#[test]
fn check_attr_listings_name_the_converted_paths_and_unreadable_blobs_are_refused() {
    let listing =
        "a.txt\0working-tree-encoding\0UTF-16\0b.md\0working-tree-encoding\0unspecified\0\
                   c\0working-tree-encoding\0unset\0";
    assert_eq!(converted_paths(listing), paths(&["a.txt"]));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.txt"), "fine").unwrap();
    let staged = [(0, Staged::Unreadable)];
    let findings = scan_change(&redactor(), dir.path(), &paths(&["a.txt"]), &staged);
    assert_eq!(findings.too_large, paths(&["a.txt"]));
}
