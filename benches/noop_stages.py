#!/usr/bin/env python3
"""Where a no-op task's time goes, stage by stage, from the task's own events.

    python3 benches/noop_stages.py [N]     # default 20 tasks; BIN picks the binary
    CONFIG=$'[engines.limits]\nwarm_cgroup_lock_secs = 0\n' python3 benches/noop_stages.py
                                           # CONFIG: the service's config file's text

Starts `glitchlab serve` (BIN, default target/release/glitchlab) on a fresh data dir and
repository, submits N no-op tasks one at a time (the load bench's body: builtin engines, verify
`true`, sandbox as configured by default), and prints the median of each span:

  queue     task.submitted -> task.started
  <stage>   stage.started -> the stage's stage.finished
  finish    the last stage.finished -> task.finished
  total     task.submitted -> task.finished (the service's own clock)
  client    the client's submit -> the first poll that saw `done` (as `benches/load.rs` times it)

Event times are the service's; they leave out only the HTTP of the submit and of the poll.
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime

TOKEN = "glt_test-admin-secret-0123456789abcdef0123456789abcdef0123"


def call(base, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", "Bearer " + TOKEN)
    if data is not None:
        request.add_header("content-type", "application/json")
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.load(answer)


def stamp(text):
    # Nanosecond RFC 3339 ("2026-12-06T21:00:30.586746734Z") -> seconds.
    head, _, tail = text.rstrip("Z").partition(".")
    whole = datetime.fromisoformat(head + "+00:00").timestamp()
    return whole + float("0." + (tail or "0"))


def spans(events):
    found = {}
    first = {}
    last_stage_end = None
    for event in events:
        kind, at = event["kind"], stamp(event["ts"])
        first.setdefault(kind, at)
        stage = (event.get("data") or {}).get("stage")
        if kind == "stage.started":
            found.setdefault("_start_" + stage, at)
        elif kind == "stage.finished" and "_start_" + stage in found:
            found[stage] = at - found["_start_" + stage]
            last_stage_end = at
    out = {k: v for k, v in found.items() if not k.startswith("_")}
    if "task.submitted" in first and "task.started" in first:
        out["queue"] = first["task.started"] - first["task.submitted"]
    if "task.finished" in first:
        if last_stage_end is not None:
            out["finish"] = first["task.finished"] - last_stage_end
        out["total"] = first["task.finished"] - first["task.submitted"]
    return out


def main():
    runs = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    binary = os.environ.get("BIN", "target/release/glitchlab")
    root = tempfile.mkdtemp(prefix="glitchlab-stages.")
    repo = os.path.join(root, "repo")
    os.makedirs(repo)
    env = dict(os.environ, GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL="/dev/null")
    git = ["git", "-C", repo]
    subprocess.run(git + ["init", "-q", "-b", "main"], check=True, env=env)
    with open(os.path.join(repo, "README.md"), "w") as readme:
        readme.write("bench\n")
    subprocess.run(git + ["add", "-A"], check=True, env=env)
    subprocess.run(git + ["-c", "user.name=b", "-c", "user.email=b@l", "commit", "-qm", "initial"],
                   check=True, env=env)
    config = os.path.join(root, "glitchlab.toml")
    with open(config, "w") as text:
        text.write(os.environ.get("CONFIG", ""))
    out = open(os.path.join(root, "out.log"), "w+")
    service = subprocess.Popen(
        [binary, "serve", "--bind", "127.0.0.1:0", "--data-dir", os.path.join(root, "data"),
         "--config", config],
        stdout=out, stderr=open(os.path.join(root, "err.log"), "w"),
        env=dict(env, GLITCHLAB_ADMIN_TOKEN=TOKEN, RUST_LOG="warn"))
    try:
        base = None
        for _ in range(200):
            out.seek(0)
            for line in out.read().splitlines():
                if line.startswith("glitchlab listening on "):
                    base = line.split()[-1]
            if base:
                break
            time.sleep(0.05)
        if not base:
            sys.exit("the service did not start; see " + root)
        time.sleep(1)
        table = {}
        for n in range(runs + 1):
            body = {"title": f"no-op {n}", "description": "Nothing to do.", "repo": repo,
                    "verify": "true"}
            started = time.monotonic()
            task = call(base, "POST", "/v1/tasks", body)
            while True:
                status = call(base, "GET", f"/v1/tasks/{task['id']}")["status"]
                if status in ("done", "failed", "dead_letter", "cancelled"):
                    break
                time.sleep(0.002)
            client = time.monotonic() - started
            if status != "done":
                sys.exit(f"task {n} ended {status}; see {root}")
            if n == 0:
                continue  # the first task warms the caches
            events = call(base, "GET", f"/v1/tasks/{task['id']}/events")["events"]
            measured = spans(events)
            measured["client"] = client
            for key, value in measured.items():
                table.setdefault(key, []).append(value * 1000)
            time.sleep(0.3)  # clean-up runs after done
        order = ["queue", "plan", "implement", "verify", "deliver", "finish", "total", "client"]
        print(f"median of {runs} no-op tasks ({binary}):")
        for key in order + sorted(set(table) - set(order)):
            if key in table:
                values = table[key]
                print(f"  {key:<10} {statistics.median(values):7.1f} ms"
                      f"   (min {min(values):.1f}, max {max(values):.1f})")
    finally:
        service.terminate()
        service.wait(timeout=30)


if __name__ == "__main__":
    main()
