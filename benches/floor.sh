#!/usr/bin/env bash
# The floor for a no-op glitchlab task: the least git work that lands one new file on `main`
# through a task branch in its own worktree, timed from a shell, with nothing else around it.
#
#   bash benches/floor.sh [RUNS]      # default 30 runs; prints one line per run, then the summary
#
# Each run, in a fresh repository made once (`git init -b main` + one commit, as the benches do):
#   1. git worktree add -b <branch> <worktree> main
#   2. write one file in the worktree (a shell builtin: no process)
#   3. git add <file> + git commit           (in the worktree)
#   4. git merge --ff-only <branch>          (in the repository, whose checkout is on main)
#   5. git worktree remove <worktree>
# Five git processes. glitchlab does the same work for a task (plus its checks, its records and a
# verify command), so `benches/load.rs` reports its submit → done p50 as a ratio of this p50.
#
# Like glitchlab's own git calls (src/platform/git/mod.rs), git here reads no global or system configuration,
# so a user's hooks or settings cannot make the floor slower or faster than the service.
# The last line is machine-readable: `runs=N p50_ms=X p95_ms=Y min_ms=Z max_ms=W`.
set -euo pipefail

runs="${1:-30}"
if ! [[ "$runs" =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [RUNS]  (RUNS a positive integer, got '$runs')" >&2
    exit 2
fi

export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null GIT_TERMINAL_PROMPT=0
identity=(-c user.name=floor -c user.email=floor@localhost)

root="$(mktemp -d "${TMPDIR:-/tmp}/glitchlab-floor.XXXXXX")"
trap 'rm -rf "$root"' EXIT
repo="$root/repo"
mkdir -p "$repo" "$root/worktrees"
git -C "$repo" init -q -b main
echo "floor" > "$repo/README.md"
git -C "$repo" add -A
git -C "$repo" "${identity[@]}" commit -q -m initial

# $EPOCHREALTIME (bash 5) reads the clock without a process, so only git is inside the timing.
starts=()
ends=()
for ((n = 0; n < runs; n++)); do
    branch="floor/$n"
    worktree="$root/worktrees/$n"
    starts+=("$EPOCHREALTIME")
    git -C "$repo" worktree add -q -b "$branch" "$worktree" main
    echo "$n" > "$worktree/floor-$n.txt"
    git -C "$worktree" add "floor-$n.txt"
    git -C "$worktree" "${identity[@]}" commit -q --no-verify -m "floor $n"
    git -C "$repo" merge -q --ff-only "$branch"
    git -C "$repo" worktree remove "$worktree"
    ends+=("$EPOCHREALTIME")
done

# Every run must have landed its file on main, or the timing measured a failure.
landed="$(git -C "$repo" rev-list --count main)"
if [[ "$landed" -ne $((runs + 1)) ]]; then
    echo "floor: expected $((runs + 1)) commits on main, found $landed" >&2
    exit 1
fi

for ((n = 0; n < runs; n++)); do
    echo "${starts[n]} ${ends[n]}"
done | awk '{ printf "run %d: %.3f ms\n", NR - 1, ($2 - $1) * 1000 }'

# Percentiles as benches/*.rs take them: the element at round((n - 1) * p) of the sorted list.
for ((n = 0; n < runs; n++)); do
    echo "${starts[n]} ${ends[n]}"
done | awk '{ print ($2 - $1) * 1000 }' | sort -n | awk '
    { ms[NR - 1] = $1 }
    END {
        last = NR - 1
        p50 = int(last * 0.50 + 0.5)
        p95 = int(last * 0.95 + 0.5)
        printf "runs=%d p50_ms=%.3f p95_ms=%.3f min_ms=%.3f max_ms=%.3f\n", NR, ms[p50], ms[p95], ms[0], ms[last]
    }'
