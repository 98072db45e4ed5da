#!/usr/bin/env bash
# The environment data demo: a lab of its own with a PostgreSQL database
# (Debian's), an app that reads and writes its notes table, and a client.
# Environment pr-db forks the app and branches the database: the fork's
# write lands in its branch, the baseline's rows stay as they were, and
# delete leaves no branch behind. Root; `make build` first. demo.sh runs it.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=$PWD/bin
export PATH=$BIN:$PATH
PGBIN=/usr/lib/postgresql/15/bin
STATE=${DETOUR_DEMO_DATA_STATE:-/run/detour/lab-data}
PGDATA=$STATE-pg # the baseline's data directory, beside the lab's state
LOGS=$(mktemp -d /tmp/detour-demo-data.XXXXXX)
CTL="detour --controller 127.0.0.1:7072"
PGPASS=demo-baseline-pw
pids=()

if [[ ! -x $PGBIN/postgres ]]; then
  echo "== environment data: skipped, PostgreSQL is not installed (apt-get install postgresql)"
  [[ ${CI:-} == true ]] && exit 1
  exit 0
fi

cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
  detour lab down --state-dir "$STATE" >/dev/null 2>&1
  rm -rf "$PGDATA" "$STATE/controller.db" "$STATE/agent-state.json" "$STATE/data" "$STATE/secrets"
  rmdir "$STATE" 2>/dev/null || true
}

echo "== environment data: a lab with a PostgreSQL database (logs in $LOGS)"
as_pg=(setpriv --reuid=postgres --regid=postgres --init-groups --)
rm -rf "$PGDATA"
mkdir -p "$PGDATA" && chown postgres:postgres "$PGDATA" && chmod 700 "$PGDATA"
"${as_pg[@]}" "$PGBIN/initdb" -D "$PGDATA" -U postgres --auth=trust -E UTF8 --locale=C.UTF-8 --no-instructions >"$LOGS/initdb.log" 2>&1
echo "host all all 0.0.0.0/0 scram-sha-256" >"$PGDATA/pg_hba.conf"
printf "CREATE ROLE app LOGIN PASSWORD '%s'\nCREATE DATABASE shop OWNER app\n" "$PGPASS" |
  "${as_pg[@]}" "$PGBIN/postgres" --single -D "$PGDATA" -c unix_socket_directories= postgres >>"$LOGS/initdb.log" 2>&1
# The app's baseline talks to the baseline database (the first pod's
# address); its fork gets no --database, so its DATABASE_URL (the branch's)
# is what it uses.
cat >"$LOGS/data.yaml" <<YAML
name: demo-data
network: {bridge: detour-data, subnet: 10.214.0.0/24}
pods:
  - name: d-pg                 # 10.214.0.2
    labels: {app: d-pg}
    workload: pg
    command: ["setpriv", "--reuid=postgres", "--regid=postgres", "--init-groups", "--",
              "$PGBIN/postgres", "-D", "$PGDATA", "-c", "listen_addresses=*", "-c", "unix_socket_directories="]
  - name: d-notes              # 10.214.0.3
    labels: {app: d-notes}
    workload: notes
    command: ["detour-echo", "--listen", ":8080", "--database", "postgres://app:$PGPASS@10.214.0.2:5432/shop"]
  - name: d-client             # 10.214.0.4
    command: ["sleep", "infinity"]
services:
  - name: pg
    selector: {app: d-pg}
    ports: [{port: 5432}]
  - name: notes
    selector: {app: d-notes}
    ports: [{port: 80, targetPort: 8080}]
YAML
detour lab up -f "$LOGS/data.yaml" --state-dir "$STATE" >"$LOGS/lab.log" 2>&1 || { cat "$LOGS/lab.log"; exit 1; }
trap cleanup EXIT
rm -f "$STATE/controller.db" "$STATE/agent-state.json"
detour-controller --listen 127.0.0.1:7072 --metrics-listen 127.0.0.1:9472 \
  --store "$STATE/controller.db" --inventory "$STATE/inventory.json" >"$LOGS/controller.log" 2>&1 &
pids+=($!)
detour-agent --node lab --controller 127.0.0.1:7072 --metrics-listen 127.0.0.1:9473 \
  --state-file "$STATE/agent-state.json" >"$LOGS/agent.log" 2>&1 &
pids+=($!)

psql_base() { PGPASSWORD=$PGPASS "$PGBIN/psql" -X -q -h 10.214.0.2 -U app -d shop -At "$@"; }
for i in $(seq 100); do psql_base -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.1; done
psql_base -c "CREATE TABLE notes (id bigserial PRIMARY KEY, body text NOT NULL)" \
  -c "INSERT INTO notes (body) VALUES ('baseline note 1'), ('baseline note 2')"
# The lab's Secret of the baseline's credentials: files.
mkdir -p "$STATE/secrets/default/pg-creds"
printf app >"$STATE/secrets/default/pg-creds/username"
printf '%s' "$PGPASS" >"$STATE/secrets/default/pg-creds/password"
printf shop >"$STATE/secrets/default/pg-creds/database"

echo "\$ detour env create pr-db --fork notes --data db=postgres-branch ... --wait 60s"
for i in $(seq 50); do $CTL env list >/dev/null 2>&1 && break; sleep 0.1; done
$CTL env create pr-db --fork notes --command 'notes=detour-echo --listen :8080' \
  --data db=postgres-branch --data-workload db:pg --data-credentials db:pg-creds:database=database \
  --wait 60s >"$LOGS/create.log" 2>&1 || { cat "$LOGS/create.log"; tail -n 30 "$LOGS/controller.log"; exit 1; }
grep -E '^(DATA|db )' "$LOGS/create.log" || true

curl_in() { ip netns exec d-client curl -s --max-time 10 "$@"; }
curl_in -X POST -H 'x-detour-session: pr-db' --data 'written by the fork' http://notes:8080/notes >/dev/null
fork=$(curl_in -H 'x-detour-session: pr-db' http://notes:8080/notes | cut -f2 | paste -sd, -)
base=$(curl_in http://notes:8080/notes | cut -f2 | paste -sd, -)
echo "with key pr-db (fork notes-pr-db, its branch): $fork"
echo "without key (notes, the baseline database):    $base"
fail=0
[[ $fork == "baseline note 1,baseline note 2,written by the fork" ]] || { echo "WRONG: the fork read $fork"; fail=1; }
[[ $base == "baseline note 1,baseline note 2" ]] || { echo "WRONG: the baseline read $base"; fail=1; }
[[ $(psql_base -c 'SELECT count(*) FROM notes') == 2 ]] || { echo "WRONG: the baseline database changed"; fail=1; }

$CTL env delete pr-db --wait 30s >/dev/null 2>&1
[[ -z $(ls "$STATE/data/default" 2>/dev/null) ]] || { echo "WRONG: branch data left: $(ls "$STATE/data/default")"; fail=1; }
ip netns list | grep -q -- '-pr-db' && { echo "WRONG: branch or fork namespaces left"; fail=1; }
if [[ $fail == 0 ]]; then echo "== environment data ok: the fork wrote to its branch, the baseline is unchanged, all removed"; else
  echo "== demo FAILED; logs:"; tail -n 30 "$LOGS"/controller.log; exit 1; fi
