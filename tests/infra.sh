#!/usr/bin/env bash
# Checks the infrastructure as code, offline: the SAM template (sam validate --lint,
# cfn-lint, checkov: zero failed checks, every skip justified in the template) and the
# state machine (asl-validator, before and after the template's substitutions).
#
# Installs its tools once, pinned, outside the clone:
#   ~/.cache/deprov-infra-venv    aws-sam-cli + cfn-lint
#   ~/.cache/deprov-checkov-venv  checkov (it pins boto3 1.35, aws-sam-cli pins 1.43: they
#                                 cannot share a venv, nor join the tests' deprov-venv,
#                                 where moto needs its own boto3)
#   ~/.cache/deprov-node          asl-validator (npm)
set -euo pipefail
cd "$(dirname "$0")/.."

SAM_VERSION=1.170.0
CFN_LINT_VERSION=1.58.0
CHECKOV_VERSION=3.3.30
ASL_VALIDATOR_VERSION=4.0.0

infra_venv="${DEPROV_INFRA_VENV:-$HOME/.cache/deprov-infra-venv}"
checkov_venv="${DEPROV_CHECKOV_VENV:-$HOME/.cache/deprov-checkov-venv}"
node_prefix="${DEPROV_NODE_PREFIX:-$HOME/.cache/deprov-node}"

installed() { # venv package version
  local shown
  shown=$("$1/bin/pip" show "$2" 2>/dev/null) || return 1
  grep -qx "Version: $3" <<<"$shown"
}
if ! installed "$infra_venv" aws-sam-cli "$SAM_VERSION" || ! installed "$infra_venv" cfn-lint "$CFN_LINT_VERSION"; then
  echo "== installing aws-sam-cli==$SAM_VERSION cfn-lint==$CFN_LINT_VERSION into $infra_venv"
  python3 -m venv "$infra_venv"
  "$infra_venv/bin/pip" install --quiet --disable-pip-version-check \
    "aws-sam-cli==$SAM_VERSION" "cfn-lint==$CFN_LINT_VERSION"
fi
if ! installed "$checkov_venv" checkov "$CHECKOV_VERSION"; then
  echo "== installing checkov==$CHECKOV_VERSION into $checkov_venv"
  python3 -m venv "$checkov_venv"
  "$checkov_venv/bin/pip" install --quiet --disable-pip-version-check "checkov==$CHECKOV_VERSION"
fi
asl_validator="$node_prefix/node_modules/.bin/asl-validator"
if ! grep -qs "\"version\": \"$ASL_VALIDATOR_VERSION\"" "$node_prefix/node_modules/asl-validator/package.json"; then
  echo "== installing asl-validator@$ASL_VALIDATOR_VERSION into $node_prefix"
  npm install --prefix "$node_prefix" --no-audit --no-fund --silent "asl-validator@$ASL_VALIDATOR_VERSION"
fi

# Everything below is offline: a region and dummy credentials keep the tools from looking
# for an AWS profile; nothing calls AWS.
export AWS_DEFAULT_REGION=us-east-1 AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=AKIAIOSFODNN7EXAMPLE AWS_SECRET_ACCESS_KEY=offline-checks-only
unset AWS_PROFILE AWS_SESSION_TOKEN
export SAM_CLI_TELEMETRY=0 BC_SKIP_MAPPING=TRUE CHECKOV_RUN_SCA_PACKAGE_SCAN_V2=false

template=template.yaml
asl=infra/statemachine/deprovision.asl.json
failed=0
step() { # name command...
  local name=$1
  shift
  echo "== $name"
  if ! "$@"; then
    echo "FAILED: $name" >&2
    failed=1
  fi
}

step "sam validate --lint" "$infra_venv/bin/sam" validate --lint -t "$template"
step "cfn-lint" "$infra_venv/bin/cfn-lint" "$template"
step "checkov" "$checkov_venv/bin/checkov" -f "$template" --framework cloudformation \
  --quiet --compact --skip-download

# The ASL as written (placeholders inside strings keep it valid JSON), then as SAM's
# DefinitionSubstitutions turn it: every ${Name} the file uses must be a substitution the
# template defines, and the result must validate too.
step "asl-validator (as written)" "$asl_validator" --json-path "$asl"
substituted=$(mktemp --suffix=.asl.json)
trap 'rm -f "$substituted"' EXIT
substitute() {
  python3 - "$template" "$asl" "$substituted" <<'PY'
import re, sys
template, asl, out = sys.argv[1:]
text = open(template).read()
block = re.search(r"DefinitionSubstitutions:\n((?:\s{8,}\S.*\n)+)", text)
if not block:
    sys.exit(f"{template}: no DefinitionSubstitutions block")
defined = re.findall(r"^\s+(\w+):", block.group(1), re.M)
definition = open(asl).read()
used = sorted(set(re.findall(r"\$\{(\w+)\}", definition)))
missing = [name for name in used if name not in defined]
unused = [name for name in defined if name not in used]
if missing or unused:
    sys.exit(f"{asl}: placeholders without a substitution: {missing}; substitutions not used: {unused}")
for name in used:
    arn = f"arn:aws:lambda:us-east-1:123456789012:function:deprov-{name}"
    definition = definition.replace("${" + name + "}", arn)
open(out, "w").write(definition)
print(f"substituted {', '.join(used)}")
PY
}
step "ASL substitutions match the template" substitute
step "asl-validator (substituted)" "$asl_validator" --json-path "$substituted"

if [ "$failed" -ne 0 ]; then
  echo "infra checks FAILED" >&2
  exit 1
fi
echo "infra checks passed"
