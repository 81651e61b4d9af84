#!/usr/bin/env python3
"""What joining a cgroup costs a new process: the write of its pid to `cgroup.procs`.

    sudo python3 benches/cgroup_join.py [PARENT] [GAP_MS] [RUNS]

PARENT is a cgroup dir this user may make a child in (default: the v1 `pids` hierarchy's root,
else the v2 root); GAP_MS the idle time between joins (default 50, about the gap between a
task's sandboxed launches); RUNS the number of joins (default 20). Each run forks a child that
sleeps, times the write of its pid into a fresh child cgroup, and reaps it.

Every sandboxed launch of glitchlab makes its run's cgroups and its child joins them before it
execs `bwrap` (src/platform/sandbox/launch.rs). The kernel takes its cgroup threadgroup lock for
writing on a join, which first waits out an RCU grace period unless one just passed, so a join
after an idle gap costs a grace period (10-15 ms on the 2-core development VM; about 1 ms there
with `/sys/kernel/rcu_expedited` set to 1). docs/benchmarks.md has the figures.
"""
import os
import statistics
import sys
import time


def default_parent():
    for candidate in ("/sys/fs/cgroup/pids", "/sys/fs/cgroup"):
        if os.path.exists(os.path.join(candidate, "cgroup.procs")):
            return candidate
    sys.exit("no cgroup hierarchy found; name one")


def main():
    parent = sys.argv[1] if len(sys.argv) > 1 else default_parent()
    gap = (float(sys.argv[2]) if len(sys.argv) > 2 else 50.0) / 1000
    runs = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    child_dir = os.path.join(parent, f"glitchlab-join-bench-{os.getpid()}")
    os.makedirs(child_dir)
    took = []
    try:
        for _ in range(runs):
            pid = os.fork()
            if pid == 0:
                time.sleep(0.001)
                os._exit(0)
            started = time.perf_counter()
            with open(os.path.join(child_dir, "cgroup.procs"), "w") as procs:
                procs.write(str(pid))
            took.append((time.perf_counter() - started) * 1000)
            os.waitpid(pid, 0)
            time.sleep(gap)
    finally:
        os.rmdir(child_dir)
    expedited = "?"
    try:
        with open("/sys/kernel/rcu_expedited") as knob:
            expedited = knob.read().strip()
    except OSError:
        pass
    print(f"cgroup join under {parent}, {runs} runs, {gap * 1000:.0f} ms apart, "
          f"rcu_expedited={expedited}: median {statistics.median(took):.2f} ms, "
          f"min {min(took):.2f}, max {max(took):.2f}")


if __name__ == "__main__":
    main()
