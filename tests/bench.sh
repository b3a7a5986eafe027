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
