#!/usr/bin/env bash
# Validates the deployment offline:
#   1. renders the kustomize base (kubectl kustomize, else kustomize, else a small Python renderer
#      for the subset the base uses: resources + configMapGenerator + namespace + labels);
#   2. validates every rendered object against the real Kubernetes API schemas with
#      kubernetes-validate (PyPI), strict, for the oldest and newest versions we support;
#   3. checks the two Prometheus Operator objects (CRDs kubernetes-validate has no schema for)
#      against a JSON schema of the fields the base uses, and their content: the PrometheusRule's
#      spec.groups with `promtool check rules`;
#   4. checks the Grafana dashboard is valid JSON and current with scripts/gen-dashboard.py;
#   5. the Helm chart (charts/sidecar-governor): `helm lint --strict` clean, and `helm template`
#      (defaults, namespace.create=true) equal in substance to the kustomize render: the same
#      objects, field for field, once Helm's own labels (instance, managed-by, helm.sh/chart) are
#      set aside and the policy is compared as parsed YAML. Also rendered with values changed
#      (image, pull policy, a policy field) to show they reach the objects. helm is the one
#      scripts/cluster-build.sh builds from its Go module (cached; built when missing).
#   6. the security surface (issue 9): the host cgroup tree mounted read-only and only kubelet's
#      pod trees (kubepods.slice, kubepods) read-write, every other host mount read-only but the
#      journal's; the admin listener on loopback; the NetworkPolicy admitting only the monitoring
#      namespace to the metrics port (configurable in the chart); the RBAC: Events only in the
#      base, tokenreviews/subjectaccessreviews create only with metrics auth on
#      (daemonset/metrics-auth-rbac.yaml, the chart's metricsAuth.mode=kubernetes).
# (tests/manifests.rs checks that every metric the dashboard and rules use is exported.)
# Installs kubernetes-validate (pip) and prometheus (apt, for promtool) when missing.
# Prints "N passed, M failed"; exits non-zero on any failure.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2

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

# 5. Helm chart.
helm=$(command -v helm || true)
if [ -z "$helm" ]; then
	helm_dir=$(scripts/cluster-build.sh --print-dirs helm | awk '{ print $2 }')/bin
	if [ ! -x "$helm_dir/helm" ] && command -v go >/dev/null; then
		scripts/cluster-build.sh helm >&2 || true
	fi
	[ -x "$helm_dir/helm" ] && helm=$helm_dir/helm
fi
chart=charts/sidecar-governor
if [ -z "$helm" ]; then
	bad "helm: not on PATH and not buildable (scripts/cluster-build.sh helm needs Go)"
else
	if out=$("$helm" lint --strict "$chart" 2>&1); then
		ok "helm lint --strict $chart: $(grep -o '[0-9]* chart(s) linted, [0-9]* chart(s) failed' <<<"$out")"
	else
		bad "helm lint --strict $chart"
		echo "$out" | tail -20
	fi
	if "$helm" template sidecar-governor "$chart" --namespace sidecar-governor --set namespace.create=true >"$work/helm.yaml" 2>"$work/err" &&
		out=$(python3 - "$rendered" "$work/helm.yaml" 2>&1 <<'PY'
import sys, yaml
helm_labels = {"app.kubernetes.io/instance", "app.kubernetes.io/managed-by", "helm.sh/chart"}
def load(path, strip):
    objs = {}
    for o in yaml.safe_load_all(open(path)):
        if not o:
            continue
        labels = o["metadata"].get("labels", {})
        for l in helm_labels if strip else ():
            labels.pop(l, None)
        if o["kind"] == "ConfigMap" and "policy.yaml" in o.get("data", {}):
            o["data"]["policy.yaml"] = yaml.safe_load(o["data"]["policy.yaml"])
        if o["kind"] == "ConfigMap" and "grafana-dashboard.json" in o.get("data", {}):
            o["data"]["grafana-dashboard.json"] = o["data"]["grafana-dashboard.json"].strip()
        objs[(o["kind"], o["metadata"]["name"])] = o
    return objs
k, h = load(sys.argv[1], False), load(sys.argv[2], True)
problems = []
for key in sorted(set(k) | set(h)):
    if key not in h:
        problems.append(f"{key[0]}/{key[1]}: only in kustomize")
    elif key not in k:
        problems.append(f"{key[0]}/{key[1]}: only in helm")
    elif k[key] != h[key]:
        a, b = yaml.safe_dump(k[key], sort_keys=True).splitlines(), yaml.safe_dump(h[key], sort_keys=True).splitlines()
        import difflib
        problems.append(f"{key[0]}/{key[1]} differs:\n" + "\n".join(list(difflib.unified_diff(a, b, "kustomize", "helm", lineterm=""))[:30]))
if problems:
    print("\n".join(problems))
    sys.exit(1)
print(f"{len(k)} objects equal")
PY
		); then
		ok "helm template = kubectl kustomize in substance: $out"
	else
		bad "helm template differs from the kustomize render"
		echo "${out:-$(cat "$work/err")}" | head -40
	fi
	if "$helm" template sg "$chart" --namespace ops --set image.repository=registry.example/sg,image.tag=1.2.3,image.pullPolicy=Always \
		--set policy.cpu.min=200m --set policy.overrides[0].namespace=payments,policy.overrides[0].mode=dry-run >"$work/helm2.yaml" 2>"$work/err" &&
		out=$(python3 - "$work/helm2.yaml" 2>&1 <<'PY'
import sys, yaml
objs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(open(sys.argv[1])) if o}
c = objs[("DaemonSet", "sidecar-governor")]["spec"]["template"]["spec"]["containers"][0]
assert c["image"] == "registry.example/sg:1.2.3", c["image"]
assert c["imagePullPolicy"] == "Always"
pol = yaml.safe_load(objs[("ConfigMap", "sidecar-governor-policy")]["data"]["policy.yaml"])
assert pol["cpu"]["min"] == "200m" and pol["overrides"] == [{"namespace": "payments", "mode": "dry-run"}], pol
assert all(o["metadata"].get("namespace", "ops") == "ops" for o in objs.values())
assert ("Namespace", "ops") not in objs
print("image, pull policy, policy values and the release namespace reach the objects")
PY
		); then
		ok "helm template with values: $out"
	else
		bad "helm template with values: ${out:-$(cat "$work/err")}"
	fi
	# The chart's copies of the dashboard and rules must be the base's.
	if cmp -s daemonset/grafana-dashboard.json "$chart/files/grafana-dashboard.json"; then
		ok "chart's dashboard is daemonset/grafana-dashboard.json"
	else
		bad "charts/sidecar-governor/files/grafana-dashboard.json differs from daemonset/grafana-dashboard.json (cp it)"
	fi
fi

# 6. Security surface.
if out=$(python3 - "$rendered" daemonset/metrics-auth-rbac.yaml 2>&1 <<'PY'
import sys, yaml
objs = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(open(sys.argv[1])) if o}
pod = objs[("DaemonSet", "sidecar-governor")]["spec"]["template"]["spec"]
c = pod["containers"][0]
vols = {v["name"]: v for v in pod["volumes"]}
mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
host = lambda m: vols[m["name"]].get("hostPath", {}).get("path")
assert mounts["/host/sys/fs/cgroup"].get("readOnly") is True, "the host cgroup tree must be read-only"
assert host(mounts["/host/sys/fs/cgroup"]) == "/sys/fs/cgroup"
writable = sorted(p for p, m in mounts.items() if not m.get("readOnly"))
assert writable == ["/host/sys/fs/cgroup/kubepods", "/host/sys/fs/cgroup/kubepods.slice", "/var/lib/sidecar-governor"], writable
for tree in ("kubepods", "kubepods.slice"):
    m = mounts[f"/host/sys/fs/cgroup/{tree}"]
    assert host(m) == f"/sys/fs/cgroup/{tree}", host(m)
    # no type: the runtime creates the tree of the driver not in use (empty)
    assert "type" not in vols[m["name"]]["hostPath"], vols[m["name"]]
for sock in ("/run/containerd", "/run/crio", "/host/proc", "/etc/sidecar-governor"):
    assert mounts[sock].get("readOnly") is True, sock
args = c["args"]
assert "--admin-listen=127.0.0.1:9478" in args, args
assert [p["containerPort"] for p in c["ports"]] == [9477], "only the public port is declared"
env = {e["name"]: e.get("value") for e in c["env"]}
assert env.get("SG_METRICS_AUTH") == "off", env
np = objs[("NetworkPolicy", "sidecar-governor")]["spec"]
assert np["podSelector"] == {"matchLabels": {"app.kubernetes.io/name": "sidecar-governor"}}, np
assert np["policyTypes"] == ["Ingress"], np
assert np["ingress"] == [{"from": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}],
                          "ports": [{"port": "metrics", "protocol": "TCP"}]}], np["ingress"]
assert c["ports"][0]["name"] == "metrics"
roles = {k[1]: o for k, o in objs.items() if k[0] == "ClusterRole"}
assert list(roles) == ["sidecar-governor"], list(roles)
assert roles["sidecar-governor"]["rules"] == [{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]}]
assert not any("review" in yaml.safe_dump(o) for o in objs.values() if o["kind"] in ("ClusterRole", "Role"))
auth = {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(open(sys.argv[2])) if o}
rules = auth[("ClusterRole", "sidecar-governor-metrics-auth")]["rules"]
assert rules == [{"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
                 {"apiGroups": ["authorization.k8s.io"], "resources": ["subjectaccessreviews"], "verbs": ["create"]}], rules
b = auth[("ClusterRoleBinding", "sidecar-governor-metrics-auth")]
assert b["roleRef"]["name"] == "sidecar-governor-metrics-auth" and b["subjects"] == [{"kind": "ServiceAccount", "name": "sidecar-governor", "namespace": "sidecar-governor"}], b
assert auth[("ClusterRole", "sidecar-governor-metrics-reader")]["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
print("cgroup tree ro, kubepods trees rw, admin on loopback, NetworkPolicy monitoring-only, RBAC Events-only (+ reviews only in metrics-auth-rbac.yaml)")
PY
); then
	ok "security surface: $out"
else
	bad "security surface"
	echo "$out" | tail -20
fi
for v in $K8S_VERSIONS; do
	if out=$(kubernetes-validate --strict -k "$v" daemonset/metrics-auth-rbac.yaml 2>&1) && ! grep -qE "^(WARN|ERROR)" <<<"$out"; then
		ok "kubernetes-validate --strict -k $v daemonset/metrics-auth-rbac.yaml: $(grep -c passed <<<"$out") objects"
	else
		bad "kubernetes-validate --strict -k $v daemonset/metrics-auth-rbac.yaml"
		echo "$out" | grep -vE "^INFO" | head -20
	fi
done
if [ -n "$helm" ]; then
	if "$helm" template sg "$chart" --namespace ops --set metricsAuth.mode=kubernetes \
		--set networkPolicy.monitoringNamespace=observability >"$work/helm-auth.yaml" 2>"$work/err" &&
		out=$(python3 - "$work/helm-auth.yaml" "$work/helm.yaml" daemonset/metrics-auth-rbac.yaml 2>&1 <<'PY'
import sys, yaml
load = lambda p: {(o["kind"], o["metadata"]["name"]): o for o in yaml.safe_load_all(open(p)) if o}
on, off, base = load(sys.argv[1]), load(sys.argv[2]), load(sys.argv[3])
for key in base:
    assert key in on, f"{key} missing with metricsAuth.mode=kubernetes"
    assert key not in off, f"{key} rendered with metrics auth off"
    if key[0] == "ClusterRole":
        assert on[key]["rules"] == base[key]["rules"], key
b = on[("ClusterRoleBinding", "sidecar-governor-metrics-auth")]
assert b["subjects"][0]["namespace"] == "ops", b
c = on[("DaemonSet", "sidecar-governor")]["spec"]["template"]["spec"]["containers"][0]
assert {e["name"]: e.get("value") for e in c["env"]}["SG_METRICS_AUTH"] == "kubernetes"
ep = on[("ServiceMonitor", "sidecar-governor")]["spec"]["endpoints"][0]
assert ep["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token", ep
assert "bearerTokenFile" not in off[("ServiceMonitor", "sidecar-governor")]["spec"]["endpoints"][0]
sel = on[("NetworkPolicy", "sidecar-governor")]["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"]
assert sel == {"kubernetes.io/metadata.name": "observability"}, sel
print("metricsAuth.mode=kubernetes renders the review RBAC, the env and the scrape token (none of it when off); the monitoring namespace reaches the NetworkPolicy")
PY
		); then
		ok "helm template with metrics auth: $out"
	else
		bad "helm template with metrics auth: ${out:-$(cat "$work/err")}"
	fi
	if "$helm" template sg "$chart" --set networkPolicy.enabled=false 2>/dev/null | grep -q "kind: NetworkPolicy"; then
		bad "helm template: networkPolicy.enabled=false still renders a NetworkPolicy"
	else
		ok "helm template: networkPolicy.enabled=false renders none"
	fi
fi

echo "validate-manifests: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
