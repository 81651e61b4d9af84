//! Sandbox launch benchmark: the cost of starting one sandboxed command, on its own. `true`
//! through the one-step launch (`Sandbox::launch`: the service's spawn execs `bwrap`, which
//! execs the Landlock shim, which execs `true`) and through the re-exec form it replaces
//! (`Sandbox::wrap`: `sandbox-exec` → `bwrap` → `sandbox-exec` → `sh -c true`), against a floor
//! measured in the same run: `sh -c true` spawned the same way, unsandboxed. The one-step launch
//! is also timed after an idle pause, as a task's launches come, without and with the cgroup lock
//! warmer (`platform::sandbox::warm`). Each run gets the
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
/// The pause before each launch of the "as in a task" case: about the gap between a task's
/// launches (its git work and records in between).
const IDLE_BEFORE_LAUNCH: Duration = Duration::from_millis(50);
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
    let detect = |limits: LimitsConfig| {
        runtime
            .block_on(Sandbox::detect(
                SandboxMode::Auto,
                limits,
                Some(exe.clone()),
            ))
            .unwrap()
            .expect("sandbox = auto gives a sandbox")
    };
    // The cases before the last run without the cgroup lock warmer, as launches did before it.
    let cold = detect(LimitsConfig {
        warm_cgroup_lock_secs: 0,
        ..LimitsConfig::default()
    });
    eprintln!("sandbox layers here: {}", cold.name());
    let root = tempfile::tempdir().unwrap();
    let jail = jail(root.path());
    let mut group = c.benchmark_group("sandbox_launch");
    group.bench_function("floor: sh -c true, unsandboxed", |b| {
        b.iter(|| runtime.block_on(floor(&jail.cwd)));
    });
    group.bench_function(
        "before: wrap (sandbox-exec, bwrap, sandbox-exec, sh)",
        |b| {
            b.iter(|| runtime.block_on(wrapped(&cold, &jail)));
        },
    );
    group.bench_function("after: launch (bwrap, sandbox-exec, true)", |b| {
        b.iter(|| runtime.block_on(launched(&cold, &jail)));
    });
    // Back to back, as above, a launch can find the kernel's cgroup lock still in the state the
    // previous one left it in; a task's launches are tens of milliseconds apart, and each then
    // waits out an RCU grace period to join its cgroups. Only the launch is timed.
    let after_a_pause = |b: &mut criterion::Bencher, sandbox: &Sandbox| {
        b.iter_custom(|iterations| {
            let mut timed = Duration::ZERO;
            for _ in 0..iterations {
                std::thread::sleep(IDLE_BEFORE_LAUNCH);
                let started = std::time::Instant::now();
                runtime.block_on(launched(sandbox, &jail));
                timed += started.elapsed();
            }
            timed
        });
    };
    group.bench_function("launch after an idle pause (as in a task)", |b| {
        after_a_pause(b, &cold);
    });
    drop(cold);
    // The default: the warmer keeps the lock ready while launches come (`platform::sandbox::warm`).
    let warm = detect(LimitsConfig::default());
    group.bench_function("launch after an idle pause, cgroup lock kept warm", |b| {
        after_a_pause(b, &warm);
    });
    group.finish();
}

criterion_group!(benches, launch);
criterion_main!(benches);
