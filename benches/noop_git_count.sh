#!/usr/bin/env bash
# Counts the git processes (execve of git, git's own helpers included) a no-op task starts, under
# `strace -f`, and times submit -> done of N sequential no-op tasks (one-line shell patch, verify
# `true`, sandbox on) against the service binary BIN (default target/debug/glitchlab).
#   bash benches/noop_git_count.sh [N]          # with strace: git execs per task
#   WRAP=env bash benches/noop_git_count.sh [N] # without strace: timing only
set -euo pipefail
BIN=${BIN:-target/debug/glitchlab}
N=${1:-10}
root=$(mktemp -d "${TMPDIR:-/tmp}/glitchlab-noop.XXXXXX")
repo=$root/repo; mkdir -p $repo
touch "$root/strace.log"
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
git -C $repo init -q -b main; echo bench > $repo/README.md; git -C $repo add -A; git -C $repo -c user.name=b -c user.email=b@l commit -qm initial
TOKEN=glt_test-admin-secret-0123456789abcdef0123456789abcdef0123
: > $root/glitchlab.toml
GLITCHLAB_ADMIN_TOKEN=$TOKEN RUST_LOG=warn ${WRAP:-strace -f -qq -e trace=execve -e signal=none -o $root/strace.log} \
  $BIN serve --bind 127.0.0.1:0 --data-dir $root/data --config $root/glitchlab.toml > $root/out.log 2> $root/err.log &
spid=$!
trap 'kill $spid 2>/dev/null || true' EXIT
for i in $(seq 100); do grep -q "listening on" $root/out.log 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^glitchlab listening on //p' $root/out.log | head -1)
gitcount() { { grep -E 'execve\("[^"]*/git(-[a-z-]+)?"' $root/strace.log | grep -v ' = -1 ' || true; } | wc -l; }
allcount() { { grep -E 'execve\(' $root/strace.log | grep -v ' = -1 ' || true; } | wc -l; }
sleep 1
for n in $(seq 0 $N); do
  before=$(gitcount); beforeall=$(allcount)
  t0=$EPOCHREALTIME
  id=$(curl -s -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' $base/v1/tasks \
    -d "{\"title\":\"noop $n\",\"description\":\"Write one file.\",\"repo\":\"$repo\",\"verify\":\"true\",\"engines\":{\"patch\":{\"kind\":\"shell\",\"command\":\"echo $n > bench-$n.txt\"}}}" | python3 -c 'import json,sys;print(json.load(sys.stdin)["id"])')
  while :; do st=$(curl -s -H "Authorization: Bearer $TOKEN" $base/v1/tasks/$id | grep -oE '"status":"[a-z_]+"' | head -1 | cut -d'"' -f4); [ "$st" = done ] && break; [ "$st" = failed -o "$st" = dead_letter ] && { echo "task $st"; break; }; sleep 0.005; done
  t1=$EPOCHREALTIME
  sleep 0.3  # clean-up runs after done
  echo "task $n: $(awk "BEGIN{print ($t1-$t0)*1000}") ms, git execs $(( $(gitcount) - before )), all execs $(( $(allcount) - beforeall ))"
done
kill $spid; wait $spid 2>/dev/null || true
