#!/usr/bin/env bash
# The Detour demo: a lab node with a shared service `api`, two developers'
# pods, and a client. alice's and bob's requests are detoured to their own
# pods over one keep-alive connection; everyone else's reach `api`.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/bin
export PATH=$BIN:$PATH
STATE=${DETOUR_DEMO_STATE:-/run/detour/lab}
LOGS=$(mktemp -d /tmp/detour-demo.XXXXXX)
CTL="detour --controller 127.0.0.1:7070"
pids=()

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  detour lab down --state-dir "$STATE" >/dev/null
  rm -f "$STATE/controller.db" "$STATE/agent-state.json"
}

if [[ $EUID -ne 0 ]]; then echo "the demo needs root (network namespaces, eBPF)"; exit 1; fi
command -v curl >/dev/null || { echo "the demo needs curl (apt-get install curl)"; exit 1; }

echo "== lab up"
detour lab up -f test/lab/demo.yaml --state-dir "$STATE" # rolls itself back on failure
# Only now is there something of ours to clean up: a lab up refused because
# a lab runs in $STATE must leave that lab alone.
trap cleanup EXIT
# lab up refuses a state dir in use, so what is left here is a dead run's:
# its intercepts must not meet this one's.
rm -f "$STATE/controller.db" "$STATE/agent-state.json"

echo "== controller and agent (logs in $LOGS)"
detour-controller --listen 127.0.0.1:7070 --metrics-listen 127.0.0.1:9470 \
  --store "$STATE/controller.db" --inventory "$STATE/inventory.json" >"$LOGS/controller.log" 2>&1 &
pids+=($!)
detour-agent --node lab --controller 127.0.0.1:7070 --metrics-listen 127.0.0.1:9471 \
  --state-file "$STATE/agent-state.json" >"$LOGS/agent.log" 2>&1 &
pids+=($!)

echo "== intercepts"
for dev in alice bob; do
  for i in $(seq 50); do
    $CTL intercept create "$dev" --service default/api --port 80 --session "$dev" --to "api-$dev:8080" --wait 10s && break
    sleep 0.1 # the controller may still be starting
  done
done
$CTL intercept list

echo "== requests from pod client over one keep-alive connection"
args=()
for round in 1 2 3; do
  for s in alice bob -; do
    args+=(--next -s -o /dev/null -w "session=$s answered-by=%header{x-detour-pod} new-connections=%{num_connects}\n")
    [[ $s != - ]] && args+=(-H "x-detour-session: $s")
    args+=(http://api:8080/)
  done
done
out=$(ip netns exec client curl "${args[@]:1}")
echo "$out" | sed 's/ new-connections=.*//'
conns=$(echo "$out" | awk -F'new-connections=' '{s += $2} END {print s}')
echo "connections opened by the client: $conns"

echo "== status"
# Agents report every second: wait for the counts of the requests just sent.
for i in $(seq 30); do
  $CTL status -o json | grep -q '"matched": "0"' || break
  sleep 0.1
done
$CTL status
# The agent served each destination's first request on the connection;
# after that the kernel routed them (its HTTP/1.1 fast path, --fast-path).
echo "requests routed in the kernel, by intercept (\"\" = the app):"
curl -s http://127.0.0.1:9471/metrics | grep '^detour_agent_kernel_requests_total' | sed 's/^/  /'

fail=0
while read -r line; do
  s=${line#session=}; s=${s%% *}
  who=${line#*answered-by=}; who=${who%% *}
  want=api; [[ $s != - ]] && want=api-$s
  if [[ $who != "$want" ]]; then echo "WRONG: session=$s answered by $who, want $want"; fail=1; fi
done <<<"$out"
[[ $conns == 1 ]] || { echo "WRONG: the client opened $conns connections, want 1"; fail=1; }
if [[ $fail == 0 ]]; then echo "== demo ok: every request answered by the right pod"; else
  echo "== demo FAILED; logs:"; tail -n 30 "$LOGS"/*.log; exit 1; fi

echo
echo "== environments: web -> api, forked per pull request"
# pr-7 forks both services; its web fork is told not to pass the key on
# (no --propagate): its calls reach api-pr-7 because the agent redirects
# them at connect(). pr-8 forks only api: the baseline web passes the key
# on, which is what header propagation gives.
$CTL env create pr-7 --fork web --fork api --command 'web=detour-echo --listen :8080 --call http://api:8080' --wait 30s >/dev/null
$CTL env create pr-8 --fork api --wait 30s >/dev/null
$CTL env list
envout=""
for key in pr-7 pr-8 -; do
  hdr=(); [[ $key != - ]] && hdr=(-H "x-detour-session: $key")
  line="key=$key chain=$(ip netns exec client curl -s "${hdr[@]}" http://web:8080/chain)"
  echo "$line"; envout+="$line"$'\n'
done
declare -A want_chain=([pr-7]="web-pr-7 -> api-pr-7" [pr-8]="web -> api-pr-8" [-]="web -> api")
while read -r line; do
  [[ -z $line ]] && continue
  k=${line#key=}; k=${k%% *}; got=${line#*chain=}
  if [[ $got != "${want_chain[$k]}" ]]; then echo "WRONG: key=$k answered by $got, want ${want_chain[$k]}"; fail=1; fi
done <<<"$envout"
$CTL env delete pr-7 --wait 30s >/dev/null
$CTL env delete pr-8 --wait 30s >/dev/null
left=$(ip netns list | grep -c -- '-pr-' || true)
[[ $left == 0 ]] || { echo "WRONG: $left fork namespaces left after delete"; fail=1; }
if [[ $fail == 0 ]]; then echo "== environments ok: each chain answered by its forks, all removed"; else
  echo "== demo FAILED; logs:"; tail -n 30 "$LOGS"/*.log; exit 1; fi

# ---- Environment data: a lab of its own with a PostgreSQL database.
echo
bash test/demo/data.sh

# ---- Parity: no lab, no cluster, no root needed (test/demo/parity.sh runs
# alone too). What differs between two environments' manifests.
bash test/demo/parity.sh
