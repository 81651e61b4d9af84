//! Sandbox launch benchmark: the cost of starting one sandboxed command, on its own. `true`
//! through the one-step launch (`Sandbox::launch`: the service's spawn execs `bwrap`, which
//! execs the Landlock shim, which execs `true`) and through the re-exec form it replaces
//! (`Sandbox::wrap`: `sandbox-exec` → `bwrap` → `sandbox-exec` → `sh -c true`), against a floor
//! measured in the same run: `sh -c true` spawned the same way, unsandboxed. Each run gets the
//! limits, cgroups, uid and disk watch of an engine run (whatever this host supports: the bench
//! prints what it found). Run with
//! `cargo bench --bench sandbox -- --warm-up-time 1 --measurement-time 3`; figures go to
//! `docs/benchmarks.md` as ratios to the floor.

// A test or a bench states what it expects with unwrap/expect/panic, and is nobody's API; the
// service code may not (Cargo.toml).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    unreachable_pub
)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use glitchlab::config::LimitsConfig;
use glitchlab::platform::process::{self, CommandSpec};
use glitchlab::platform::sandbox::{Jail, Sandbox, SandboxMode};

/// Each launch's own bound.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes of output kept per stream.
const OUTPUT_BYTES_MAX: usize = 4096;

/// A jail like an engine run's: its worktree and temp dir writable and watched.
fn jail(root: &Path) -> Jail {
    let work = root.join("worktree");
    let tmp = root.join("tmp");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::create_dir_all(&tmp).unwrap();
    Jail {
        cwd: work.clone(),
        writable: vec![work.clone(), tmp.clone()],
        readable: Vec::new(),
        network: false,
        disk: vec![work, tmp],
    }
}

fn spec(cwd: &Path) -> CommandSpec {
    CommandSpec::shell("true", cwd.to_path_buf(), RUN_TIMEOUT, OUTPUT_BYTES_MAX)
}

async fn floor(cwd: &Path) {
    let output = process::run(&spec(cwd)).await.unwrap();
    assert!(output.success());
}

async fn wrapped(sandbox: &Sandbox, jail: &Jail) {
    let mut spec = spec(&jail.cwd);
    let confined = sandbox.wrap(jail, &mut spec);
    let mut output = process::run(&spec).await.unwrap();
    assert_eq!(sandbox.settle(confined, &mut output), None);
    assert!(output.success(), "{}", output.stderr.text);
}

async fn launched(sandbox: &Sandbox, jail: &Jail) {
    let mut spec = spec(&jail.cwd);
    let confined = sandbox.launch(jail, &mut spec);
    let mut output = process::run_hooked(&spec, None, confined.hook())
        .await
        .unwrap();
    assert_eq!(sandbox.settle(confined, &mut output), None);
    assert!(output.success(), "{}", output.stderr.text);
}

fn launch(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_glitchlab"));
    let sandbox = runtime
        .block_on(Sandbox::detect(
            SandboxMode::Auto,
            LimitsConfig::default(),
            Some(exe),
        ))
        .unwrap()
        .expect("sandbox = auto gives a sandbox");
    eprintln!("sandbox layers here: {}", sandbox.name());
    let root = tempfile::tempdir().unwrap();
    let jail = jail(root.path());
    let mut group = c.benchmark_group("sandbox_launch");
    group.bench_function("floor: sh -c true, unsandboxed", |b| {
        b.iter(|| runtime.block_on(floor(&jail.cwd)));
    });
    group.bench_function(
        "before: wrap (sandbox-exec, bwrap, sandbox-exec, sh)",
        |b| {
            b.iter(|| runtime.block_on(wrapped(&sandbox, &jail)));
        },
    );
    group.bench_function("after: launch (bwrap, sandbox-exec, true)", |b| {
        b.iter(|| runtime.block_on(launched(&sandbox, &jail)));
    });
    group.finish();
}

criterion_group!(benches, launch);
criterion_main!(benches);
