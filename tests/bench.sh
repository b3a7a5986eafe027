#!/usr/bin/env bash
# The README's figures: the embedded orchestrator with a zero-latency connector and the
# durable SQLite audit, then SCIM revocations against a real scim2-server at concurrency
# 1, 8 and 32 (a fresh server per level, so each level starts from the same state).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${DEPROV_VENV:-$HOME/.cache/deprov-venv}"
if ! "$venv/bin/scim2-server" --help >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "scim2-server==0.8.3"
fi
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/deprov-target}"
cargo build --release --locked -p deprov
deprov="$CARGO_TARGET_DIR/release/deprov"

"$deprov" bench orchestrator --people 2000

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
token="bench-$RANDOM$RANDOM"
for concurrency in 1 8 32; do
  "$venv/bin/scim2-server" --hostname 127.0.0.1 --port "$port" --bearer-token "$token" >/dev/null 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  for _ in $(seq 1 100); do
    curl -sf -o /dev/null -H "Authorization: Bearer $token" "http://127.0.0.1:$port/v2/ServiceProviderConfig" && break
    sleep 0.1
  done
  DEPROV_BENCH_SCIM_TOKEN="$token" "$deprov" bench scim --url "http://127.0.0.1:$port/v2" --users 300 --concurrency "$concurrency"
  kill "$server"; wait "$server" 2>/dev/null || true
done

# The functions on AWS (issue 3): bootstrap size of each release binary (stripped and
# zipped as cargo lambda packages it), start-up to the first event against a local Runtime
# API, and the Step Functions state transitions and cost of one termination with 10 tasks
# on the emulated AWS (moto executing the real ASL, the functions through cargo lambda).
if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "moto==5.1.22" \
   || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "cargo-lambda==1.9.2"; then
  "$venv/bin/pip" install --quiet --disable-pip-version-check "moto[server]==5.1.22" "cargo-lambda==1.9.2"
fi
cargo build --release --locked -p intake -p plan -p worker -p audit -p sweep
cargo build --release --locked -p deprov-tests --bin bench-functions
echo
DEPROV_SCIM2_SERVER="$venv/bin/scim2-server" DEPROV_CARGO_LAMBDA="$venv/bin/cargo-lambda" \
  DEPROV_VENV_PYTHON="$venv/bin/python" "$CARGO_TARGET_DIR/release/bench-functions" --spawns 20
echo

# OpenLDAP and PostgreSQL: disable + verify of 2,000 existing accounts through deprov at
# concurrency 8, beside the raw baseline — the same change applied without deprov, in one
# batch over one connection and never read back (ldapmodify of one LDIF; psql of one
# script) — on a second, identically seeded set of accounts in the same servers.
accounts="${DEPROV_BENCH_ACCOUNTS:-2000}"
cargo build --release --locked -p deprov-tests --bin bench-targets
work=$(mktemp -d)
coproc TARGETS { "$CARGO_TARGET_DIR/release/bench-targets" --accounts "$accounts" --prefixes bench-,raw-; }
targets_pid=$TARGETS_PID
targets_in=${TARGETS[1]}
stop_targets() {
  eval "exec $targets_in>&-" 2>/dev/null || true
  wait "$targets_pid" 2>/dev/null || true
  rm -rf "$work"
}
trap stop_targets EXIT
ready=
while IFS= read -r line <&"${TARGETS[0]}"; do
  if [ "$line" = "# ready" ]; then ready=1; break; fi
  eval "$line"
done
[ -n "$ready" ] || { echo "bench-targets did not come up" >&2; exit 1; }

now() { date +%s.%N; }
rate() { awk -v n="$1" -v a="$2" -v b="$3" 'BEGIN { printf "%.1f", n / (b - a) }'; }

for ((i = 0; i < accounts; i++)); do
  printf 'dn: uid=raw-%d,%s\nchangetype: modify\nadd: pwdAccountLockedTime\npwdAccountLockedTime: 000001010000Z\n-\n\n' "$i" "$LDAP_PEOPLE_DN"
done >"$work/lock.ldif"
for ((i = 0; i < accounts; i++)); do
  printf 'ALTER ROLE "raw-%d" NOLOGIN;\n' "$i"
done >"$work/nologin.sql"

echo
echo "raw baseline (apply only, no discovery, no read-back, no audit), $accounts accounts:"
t0=$(now)
ldapmodify -x -H "$LDAP_URL" -D "$LDAP_ADMIN_DN" -w "$LDAP_ADMIN_PASSWORD" -f "$work/lock.ldif" >/dev/null
t1=$(now)
raw_ldap=$(rate "$accounts" "$t0" "$t1")
printf '  ldap      ldapmodify, one LDIF        %6.2f s = %s accounts/s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$raw_ldap"
if ldapwhoami -x -H "$LDAP_URL" -D "uid=raw-0,$LDAP_PEOPLE_DN" -w "$ACCOUNT_PASSWORD" >/dev/null 2>&1; then
  echo "raw-0 still binds after the raw lock" >&2; exit 1
fi
t0=$(now)
PGPASSWORD="$PG_PASSWORD" "$PG_BIN/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_HOST" -p "$PG_PORT" -U "$PG_USER" -d postgres -f "$work/nologin.sql"
t1=$(now)
raw_pg=$(rate "$accounts" "$t0" "$t1")
printf '  postgres  psql, one script            %6.2f s = %s accounts/s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN{print b-a}')" "$raw_pg"

echo
DEPROV_BENCH_LDAP_PASSWORD="$LDAP_ADMIN_PASSWORD" "$deprov" bench ldap --url "$LDAP_URL" \
  --base-dn "$LDAP_PEOPLE_DN" --group-base-dn "$LDAP_GROUPS_DN" --bind-dn "$LDAP_ADMIN_DN" \
  --accounts "$accounts" --prefix bench- --concurrency 8 | tee "$work/ldap.out"
if ldapwhoami -x -H "$LDAP_URL" -D "uid=bench-0,$LDAP_PEOPLE_DN" -w "$ACCOUNT_PASSWORD" >/dev/null 2>&1; then
  echo "bench-0 still binds after deprov" >&2; exit 1
fi
DEPROV_BENCH_PG_PASSWORD="$PG_PASSWORD" "$deprov" bench postgres --host "$PG_HOST" --port "$PG_PORT" \
  --user "$PG_USER" --accounts "$accounts" --prefix bench- --concurrency 8 | tee "$work/pg.out"

deprov_ldap=$(awk '/throughput/ { print $2 }' "$work/ldap.out")
deprov_pg=$(awk '/throughput/ { print $2 }' "$work/pg.out")
echo
echo "deprov apply + verify vs raw apply only ($accounts accounts, concurrency 8; goal >= 0.5x):"
awk -v d="$deprov_ldap" -v r="$raw_ldap" 'BEGIN { printf "  ldap      %8.1f vs %8.1f accounts/s = %.2fx\n", d, r, d / r }'
awk -v d="$deprov_pg" -v r="$raw_pg" 'BEGIN { printf "  postgres  %8.1f vs %8.1f accounts/s = %.2fx\n", d, r, d / r }'
