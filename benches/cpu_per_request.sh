#!/usr/bin/env bash
# The service's CPU a request, and its context switches a request, for durable task submits and
# ledger transfers: what a throughput change is judged by on a machine whose throughput figure
# moves ±15 % from run to run. Starts the release service BIN as the load bench does (one
# pipeline slot held by a `sleep` blocker, so submitted tasks stay queued; rate limit off), then
# runs `wrk -t1 -c$CLIENTS` for SECS seconds with each body, and prints one line:
#   <label> submits: <rate>/s <cpu>µs-cpu/req (writer <µs>) <context switches>cs/req | transfers: ...
# CPU is the service's utime + stime (/proc/<pid>/stat) over the run ÷ the requests answered.
# Needs `wrk` and `perf` (apt-get install wrk linux-perf). Judge a change by alternating runs:
#   for i in 1 2 3 4; do BIN=old CLIENTS=8 bash benches/cpu_per_request.sh old
#                        BIN=new CLIENTS=8 bash benches/cpu_per_request.sh new; done
set -euo pipefail
BIN=${BIN:-target/release/glitchlab}
CLIENTS=${CLIENTS:-32}
SECS=${SECS:-5}
label=${1:-run}
root=$(mktemp -d "${TMPDIR:-/tmp}/glitchlab-cpu.XXXXXX")
TOKEN=glt_bench-admin-secret-0123456789abcdef0123456789abcdef01
export GIT_CONFIG_NOSYSTEM=1 GIT_CONFIG_GLOBAL=/dev/null
mkdir -p "$root/data" "$root/no-runbooks" "$root/repo"
echo "apps: {}" > "$root/no-ops.yaml"
git -C "$root/repo" init -q -b main
git -C "$root/repo" -c user.name=b -c user.email=b@l commit -q --allow-empty -m initial
cat > "$root/glitchlab.toml" <<TOML
[server]
bind = "127.0.0.1:0"
requests_per_sec = 0
[storage]
data_dir = "$root/data"
[paths]
actors_dir = "$root/no-actors"
runbooks_dir = "$root/no-runbooks"
ops_file = "$root/no-ops.yaml"
[ledger]
local_funding = 1000000000000000
[compass]
max_concurrent_tasks = 1
max_queued_tasks = 100000000
TOML
# The bodies, as benches/load.rs posts them; ids unique per run.
cat > "$root/submit.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local body = '{"title":"load ' .. n .. '","description":"Write one file.","repo":"$root/repo","verify":"true","engines":{"patch":{"kind":"shell","command":"echo ' .. n .. ' > load-' .. n .. '.txt"}}}'
  return wrk.format("POST", "/v1/tasks", {["Authorization"]="Bearer $TOKEN", ["Content-Type"]="application/json"}, body)
end
LUA
cat > "$root/transfer.lua" <<LUA
local n = 0
request = function()
  n = n + 1
  local body = '{"id":"t-' .. n .. '","debit_account":"user:local","credit_account":"system:revenue","amount":1,"code":7}'
  return wrk.format("POST", "/v1/ledger/transfers", {["Authorization"]="Bearer $TOKEN", ["Content-Type"]="application/json"}, body)
end
LUA
GLITCHLAB_ADMIN_TOKEN=$TOKEN RUST_LOG=warn "$BIN" serve --config "$root/glitchlab.toml" \
  > "$root/out.log" 2> "$root/service.log" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$root"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$root/out.log" 2>/dev/null && break; sleep 0.1; done
base=$(sed -n 's/^glitchlab listening on //p' "$root/out.log" | head -1)
curl -sf -o /dev/null -H "Authorization: Bearer $TOKEN" -H 'content-type: application/json' "$base/v1/tasks" \
  -d "{\"title\":\"blocker\",\"description\":\"Hold the slot.\",\"repo\":\"$root/repo\",\"verify\":\"true\",\"engines\":{\"patch\":{\"kind\":\"shell\",\"command\":\"sleep 3600\"}}}"
sleep 1
cpu() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
# The store writer's share: the one thread every durable write goes through, so its CPU a
# request is the ceiling no number of cores lifts (1 s ÷ that = the most requests a second).
writer_cpu() {
  local task
  for task in /proc/"$pid"/task/*; do
    if [ "$(cat "$task/comm" 2>/dev/null)" = store-writer ]; then
      awk '{print $14 + $15}' "$task/stat"
      return
    fi
  done
  echo 0
}
run() {
  local script=$1 c0 c1 w0 w1 out n rate bad switches
  c0=$(cpu)
  w0=$(writer_cpu)
  perf stat -e context-switches -p "$pid" -o "$root/cs.txt" -- sleep "$SECS" &
  out=$(wrk -t1 -c"$CLIENTS" -d"${SECS}s" -s "$root/$script" "$base" 2>&1)
  wait
  c1=$(cpu)
  w1=$(writer_cpu)
  n=$(echo "$out" | awk '/requests in/ {print $1}')
  rate=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
  bad=$(echo "$out" | awk '/Non-2xx/ {print $NF}')
  switches=$(awk '/context-switches/ {gsub(",", "", $1); print $1}' "$root/cs.txt")
  # Clock ticks are 1/100 s: µs a request = ticks × 10,000 ÷ requests.
  echo "$rate/s $(( (c1 - c0) * 10000 / n ))µs-cpu/req (writer $(( (w1 - w0) * 10000 / n ))µs) $(awk -v s="$switches" -v n="$n" 'BEGIN {printf "%.1f", s / n}')cs/req${bad:+ NON-2XX=$bad}"
}
wrk -t1 -c"$CLIENTS" -d1s -s "$root/submit.lua" "$base" > /dev/null 2>&1
echo "$label submits: $(run submit.lua) | transfers: $(run transfer.lua)"
