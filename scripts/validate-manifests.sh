#!/usr/bin/env bash
# Validates the deployment offline:
#   1. renders the kustomize base (kubectl kustomize, else kustomize, else a small Python renderer
#      for the subset the base uses: resources + configMapGenerator + namespace + labels);
#   2. validates every rendered object against the real Kubernetes API schemas with
#      kubernetes-validate (PyPI), strict, for the oldest and newest versions we support;
#   3. checks the two Prometheus Operator objects (CRDs kubernetes-validate has no schema for)
#      against a JSON schema of the fields the base uses, and their content: the PrometheusRule's
#      spec.groups with `promtool check rules`;
#   4. checks the Grafana dashboard is valid JSON and current with scripts/gen-dashboard.py.
# (tests/manifests.rs checks that every metric the dashboard and rules use is exported.)
# Installs kubernetes-validate (pip) and prometheus (apt, for promtool) when missing.
# Prints "N passed, M failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

K8S_VERSIONS=${K8S_VERSIONS:-"1.33.0 1.37.0"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { echo "PASS $*"; passed=$((passed + 1)); }
bad() { echo "FAIL $*"; failed=$((failed + 1)); }

if ! command -v kubernetes-validate >/dev/null; then
	echo "== pip install kubernetes-validate"
	python3 -m pip install --quiet --disable-pip-version-check kubernetes-validate </dev/null ||
		echo "cannot install kubernetes-validate" >&2
fi
if ! command -v promtool >/dev/null; then
	echo "== apt-get install prometheus (for promtool)"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } </dev/null >/dev/null ||
		echo "cannot install prometheus" >&2
fi

# 1. Render.
rendered=$work/rendered.yaml
if command -v kubectl >/dev/null && kubectl kustomize daemonset >"$rendered" 2>"$work/err"; then
	ok "render: kubectl kustomize daemonset ($(grep -c '^kind:' "$rendered") objects)"
elif command -v kustomize >/dev/null && kustomize build daemonset >"$rendered" 2>"$work/err"; then
	ok "render: kustomize build daemonset ($(grep -c '^kind:' "$rendered") objects)"
elif python3 scripts/render-kustomize.py daemonset >"$rendered" 2>"$work/err"; then
	ok "render: scripts/render-kustomize.py daemonset (no kubectl/kustomize here)"
else
	bad "render: $(cat "$work/err")"
fi
# The Python renderer must agree with kustomize on this base (so it is trustworthy where kubectl is
# missing).
if command -v kubectl >/dev/null && python3 scripts/render-kustomize.py daemonset >"$work/py.yaml" 2>"$work/err"; then
	if python3 - "$rendered" "$work/py.yaml" <<'PY'; then
import sys, yaml
a = list(yaml.safe_load_all(open(sys.argv[1])))
b = list(yaml.safe_load_all(open(sys.argv[2])))
key = lambda o: (o["kind"], o["metadata"]["name"])
sys.exit(0 if sorted(a, key=key) == sorted(b, key=key) else 1)
PY
		ok "render: scripts/render-kustomize.py matches kubectl kustomize"
	else
		bad "render: scripts/render-kustomize.py differs from kubectl kustomize"
		diff <(python3 -c 'import sys,yaml;[print(yaml.safe_dump(o,sort_keys=True)) for o in sorted(yaml.safe_load_all(open(sys.argv[1])),key=lambda o:(o["kind"],o["metadata"]["name"]))]' "$rendered") \
			<(python3 -c 'import sys,yaml;[print(yaml.safe_dump(o,sort_keys=True)) for o in sorted(yaml.safe_load_all(open(sys.argv[1])),key=lambda o:(o["kind"],o["metadata"]["name"]))]' "$work/py.yaml") | head -40
	fi
fi

# 2. Kubernetes API schemas.
python3 - "$rendered" "$work" <<'PY'
import sys, yaml, os
core, crds = [], []
for o in yaml.safe_load_all(open(sys.argv[1])):
    if not o:
        continue
    (crds if o["apiVersion"].startswith("monitoring.coreos.com/") else core).append(o)
yaml.safe_dump_all(core, open(os.path.join(sys.argv[2], "core.yaml"), "w"), sort_keys=False)
yaml.safe_dump_all(crds, open(os.path.join(sys.argv[2], "crds.yaml"), "w"), sort_keys=False)
for o in crds:
    if o["kind"] == "PrometheusRule":
        yaml.safe_dump(o["spec"], open(os.path.join(sys.argv[2], "rules.yaml"), "w"), sort_keys=False)
PY
for v in $K8S_VERSIONS; do
	if out=$(kubernetes-validate --strict -k "$v" "$work/core.yaml" 2>&1) && ! grep -qE "^(WARN|ERROR)" <<<"$out"; then
		ok "kubernetes-validate --strict -k $v: $(grep -c passed <<<"$out") objects"
	else
		bad "kubernetes-validate --strict -k $v"
		echo "$out" | grep -vE "^INFO" | head -20
	fi
done

# 3. Prometheus Operator objects.
if out=$(python3 - "$work/crds.yaml" 2>&1 <<'PY'
# JSON schema of the monitoring.coreos.com/v1 fields this base uses, written from the operator's
# CRDs (ServiceMonitor, PrometheusRule); strict, so a misspelt field fails.
import sys, yaml, jsonschema
s = lambda **p: {"type": "object", "additionalProperties": False, **p}
strs = {"type": "array", "items": {"type": "string"}}
smap = {"type": "object", "additionalProperties": {"type": "string"}}
meta = s(properties={"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": smap,
                     "annotations": smap}, required=["name"])
duration = {"type": "string", "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"}
relabel = s(properties={"sourceLabels": strs, "separator": {"type": "string"}, "targetLabel": {"type": "string"},
                        "regex": {"type": "string"}, "modulus": {"type": "integer"}, "replacement": {"type": "string"},
                        "action": {"enum": ["replace", "Replace", "keep", "Keep", "drop", "Drop", "hashmod", "HashMod",
                                            "labelmap", "LabelMap", "labeldrop", "LabelDrop", "labelkeep", "LabelKeep"]}})
schemas = {
    "ServiceMonitor": s(required=["apiVersion", "kind", "metadata", "spec"], properties={
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "ServiceMonitor"}, "metadata": meta,
        "spec": s(required=["selector", "endpoints"], properties={
            "selector": s(properties={"matchLabels": smap, "matchExpressions": {"type": "array"}}),
            "namespaceSelector": s(properties={"any": {"type": "boolean"}, "matchNames": strs}),
            "jobLabel": {"type": "string"},
            "endpoints": {"type": "array", "minItems": 1, "items": s(properties={
                "port": {"type": "string"}, "path": {"type": "string"}, "scheme": {"enum": ["http", "https"]},
                "interval": duration, "scrapeTimeout": duration, "honorLabels": {"type": "boolean"},
                "relabelings": {"type": "array", "items": relabel},
                "metricRelabelings": {"type": "array", "items": relabel}})}})}),
    "PrometheusRule": s(required=["apiVersion", "kind", "metadata", "spec"], properties={
        "apiVersion": {"const": "monitoring.coreos.com/v1"}, "kind": {"const": "PrometheusRule"}, "metadata": meta,
        "spec": s(properties={"groups": {"type": "array", "items": s(required=["name"], properties={
            "name": {"type": "string", "minLength": 1}, "interval": duration, "limit": {"type": "integer"},
            "rules": {"type": "array", "items": s(required=["expr"], properties={
                "alert": {"type": "string"}, "record": {"type": "string"},
                "expr": {"type": ["string", "integer"]}, "for": duration, "keep_firing_for": duration,
                "labels": smap, "annotations": smap})}})}})}),
}
seen = set()
for o in yaml.safe_load_all(open(sys.argv[1])):
    jsonschema.validate(o, schemas[o["kind"]])
    seen.add(o["kind"])
    print(f"{o['kind']}/{o['metadata']['name']} ok")
assert seen == set(schemas), f"missing: {set(schemas) - seen}"
PY
); then
	ok "CRD objects: $(tr '\n' ' ' <<<"$out")"
else
	bad "CRD objects"
	echo "$out" | tail -20
fi
if out=$(promtool check rules "$work/rules.yaml" 2>&1); then
	ok "promtool check rules (PrometheusRule spec): $(grep -o 'SUCCESS: [0-9]* rules found' <<<"$out")"
else
	bad "promtool check rules"
	echo "$out"
fi

# 4. Dashboard.
if python3 -m json.tool daemonset/grafana-dashboard.json >/dev/null && out=$(python3 scripts/gen-dashboard.py --check 2>&1); then
	ok "grafana dashboard: valid JSON, $out"
else
	bad "grafana dashboard: ${out:-invalid JSON}"
fi
if grep -q "sidecar-governor-dashboard" "$rendered" && grep -q 'grafana_dashboard: "1"' "$rendered"; then
	ok "dashboard ConfigMap rendered with the grafana_dashboard label"
else
	bad "dashboard ConfigMap missing from the render"
fi

echo "validate-manifests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
