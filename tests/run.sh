#!/usr/bin/env bash
# The whole test suite on a fresh machine: installs what the tests need (a Python venv with
# scim2-server), checks formatting and lints, runs every test. The tests start and stop
# their own servers on 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."

# Debian packages of the real targets: OpenLDAP (slapd) and PostgreSQL 15. The tests run
# their own servers from temporary directories; the packages' own services are not used.
missing=()
command -v slapd >/dev/null 2>&1 || [ -x /usr/sbin/slapd ] || missing+=(slapd)
command -v ldapmodify >/dev/null 2>&1 || missing+=(ldap-utils)
[ -x /usr/lib/postgresql/15/bin/postgres ] || missing+=(postgresql-15)
command -v psql >/dev/null 2>&1 || missing+=(postgresql-client-15)
if [ ${#missing[@]} -gt 0 ]; then
  echo "== installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

venv="${DEPROV_VENV:-$HOME/.cache/deprov-venv}"
# Python tools the tests start: a real SCIM 2.0 server, the AWS emulator, cargo lambda
# (its Runtime API serves the function binaries moto's Lambda calls reach), and
# schemathesis (fuzzes `deprov serve` from infra/openapi.yaml).
python_tools=("scim2-server==0.8.3" "moto[server]==5.1.22" "cargo-lambda==1.9.2" "schemathesis==4.32.5")
if ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "scim2-server==0.8.3" \
   || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "moto==5.1.22" \
   || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "cargo-lambda==1.9.2" \
   || ! "$venv/bin/pip" freeze 2>/dev/null | grep -qx "schemathesis==4.32.5" \
   || ! "$venv/bin/python" -c "import flask, flask_cors" 2>/dev/null; then
  echo "== installing ${python_tools[*]} into $venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check "${python_tools[@]}"
fi
export DEPROV_SCIM2_SERVER="$venv/bin/scim2-server"
export DEPROV_MOTO_SERVER="$venv/bin/moto_server"
export DEPROV_CARGO_LAMBDA="$venv/bin/cargo-lambda"
export DEPROV_VENV_PYTHON="$venv/bin/python"
export DEPROV_SCHEMATHESIS="$venv/bin/schemathesis"

echo "== infrastructure checks (template, state machine)"
bash tests/infra.sh

# A target directory outside the clone, reused between runs.
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/deprov-target}"
# Incremental artifacts only grow the reused target directory; CI builds every clone once.
export CARGO_INCREMENTAL=0

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build (the deprov binary the CLI tests run, the functions the AWS end to end runs)"
cargo build -p deprov -p intake -p plan -p worker -p audit -p sweep --locked
echo "== cargo test"
cargo test --workspace --locked
