#!/bin/sh
# shellcheck shell=dash
# A real Kubernetes node (issue 10): etcd, kube-apiserver, controller-manager, scheduler,
# containerd 2.x + runc, a kubelet (cgroup v2, cgroupfs driver) registered as node sg-vm, CNI bridge
# pod networking and kube-proxy, all inside the VM (scripts/vm/cluster-lib.sh). The agent is
# installed as a user installs it, `kubectl apply -k` of the real daemonset/ (through an overlay
# that only sets the image and its pull policy: the images are imported with ctr, nothing is
# pulled). Workloads (scripts/vm/cluster/workloads.yaml): two Istio-shaped classic sidecars
# (productpage stays idle, reviews turns hot), a native sidecar (ratings: an init container with
# restartPolicy Always), an ingress gateway (envoy under `pilot-agent proxy router`) and an app
# whose process is named envoy (edge). Every assertion reads the kernel's cgroup files or the API.
# Phases are timed (PHASE lines); a failure prints the last lines of the kubelet's, the agent's
# and the API server's logs. Runs in its own boot (scripts/vm-e2e.sh cluster).
set -eu
# Nothing here reads the console: a command missing its input file gets EOF, not a hang.
exec </dev/null
. /sg/lib.sh
. /sg/cluster-lib.sh

FLOOR="10000 100000"
ORIG="200000 100000"
on_exit() {
	_rc=$?
	if [ "$_rc" != 0 ] || [ -s "$SG_RUN/failures" ]; then sg_cluster_dump; fi
}
trap on_exit EXIT

if ! sg_cluster_up; then
	sg_done
fi
sg_check "the kubernetes Service has the API server as its endpoint" sh -c \
	"kubectl get endpointslices -n default -l kubernetes.io/service-name=kubernetes -o jsonpath='{.items[0].endpoints[0].addresses[0]}' | grep -qx $SG_NODE_IP"

# ---------------------------------------------------------------------------------------------
# Workloads, before the agent: their limits as the kubelet wrote them.
k apply -f "$SG_CLUSTER_DIR/workloads.yaml" >/dev/null
if ! k wait --for=condition=Available --timeout=600s deployment --all -n shop >/dev/null ||
	! k wait --for=condition=Available --timeout=300s deployment --all -n istio-system >/dev/null; then
	sg_fail "workloads not available within 600 s"
	sg_done
fi
sg_phase workloads-running
PP=$(sg_pod_of shop app=productpage)
RV=$(sg_pod_of shop app=reviews)
RT=$(sg_pod_of shop app=ratings)
GW=$(sg_pod_of istio-system istio=ingressgateway)
ED=$(sg_pod_of shop app=edge)
S_PP=$(sg_cg_of shop "$PP" istio-proxy)
S_RV=$(sg_cg_of shop "$RV" istio-proxy)
S_RT=$(sg_cg_of shop "$RT" istio-proxy)
A_PP=$(sg_cg_of shop "$PP" productpage)
A_RT=$(sg_cg_of shop "$RT" ratings)
G=$(sg_cg_of istio-system "$GW" istio-proxy)
E=$(sg_cg_of shop "$ED" web)
sg_log "sidecars: ${S_PP#"$CG"/} ${S_RV#"$CG"/} ${S_RT#"$CG"/} (native); gateway ${G#"$CG"/}; envoy-named app ${E#"$CG"/}"
for d in "$S_PP" "$S_RV" "$S_RT" "$G"; do
	sg_expect "${d#"$CG"/kubepods/}: cpu.max as the kubelet wrote it from the 2-core limit" "$(sg_cpu_max "$d")" "$ORIG"
done
sg_expect "edge's envoy-named app: cpu.max from its 1-core limit" "$(sg_cpu_max "$E")" "100000 100000"
sg_check "gateway runs envoy under pilot-agent proxy router" sh -c "cat /proc/$(sg_envoy_in "$G")/cmdline >/dev/null"
# (Not the QoS level kubepods/burstable: the kubelet moves its cpu.weight as pods come and go.)
UNTOUCHED="$A_PP $A_RT $G $E $(dirname "$S_PP") $(dirname "$S_RT") $(dirname "$G") $(dirname "$E")"
# shellcheck disable=SC2086 # a list of directories
sg_untouched_snapshot $UNTOUCHED >"$SG_RUN/untouched.before"

# ---------------------------------------------------------------------------------------------
# Install as a user would (the Prometheus Operator's kinds registered first, as on a cluster with
# the operator: scripts/vm/cluster/crds-monitoring.yaml).
k apply -f "$SG_CLUSTER_DIR/crds-monitoring.yaml" >/dev/null
k wait --for=condition=Established --timeout=60s crd/servicemonitors.monitoring.coreos.com crd/prometheusrules.monitoring.coreos.com >/dev/null
k apply -k "$SG_CLUSTER_DIR/overlay" >"$SG_RUN/apply.log" 2>&1 || sg_fail "kubectl apply -k: $(tail -n 3 "$SG_RUN/apply.log")"
sg_log "kubectl apply -k: $(tr '\n' ';' <"$SG_RUN/apply.log")"
if ! k -n sidecar-governor rollout status ds/sidecar-governor --timeout=600s >/dev/null 2>&1; then
	sg_fail "the DaemonSet's pod did not become Ready (/readyz) within 600 s"
	sg_done
fi
sg_phase agent-ready
AG=$(sg_pod_of sidecar-governor app.kubernetes.io/name=sidecar-governor)
sg_expect "agent pod scheduled on the node" "$(k -n sidecar-governor get pod "$AG" -o jsonpath='{.spec.nodeName}')" "$SG_NODE"
sg_expect "agent pod Ready" "$(k -n sidecar-governor get pod "$AG" -o jsonpath='{.status.conditions[?(@.type=="Ready")].status}')" True
# The live pod's security context and mounts are exactly the base's.
# The base's DaemonSet, rendered by kubectl's kustomize, alone in a file.
k kustomize "$SG_CLUSTER_DIR/daemonset" | awk '/^---$/ { n++; next } { doc[n] = doc[n] $0 "\n" }
	END { for (i in doc) if (doc[i] ~ /(^|\n)kind: DaemonSet\n/) printf "%s", doc[i] }' >"$SG_RUN/base-ds.yaml"
base_json() { kubectl label --local -f "$SG_RUN/base-ds.yaml" sg-render=1 -o jsonpath="$1" || true; }
pod_json() { k -n sidecar-governor get pod "$AG" -o jsonpath="$1" || true; }
sg_expect "agent container securityContext = the base's" "$(pod_json '{.spec.containers[0].securityContext}')" "$(base_json '{.spec.template.spec.containers[0].securityContext}')"
sg_expect "agent pod securityContext = the base's" "$(pod_json '{.spec.securityContext}')" "$(base_json '{.spec.template.spec.securityContext}')"
sg_expect "agent hostPID" "$(pod_json '{.spec.hostPID}')" true
base_mounts=$(base_json '{range .spec.template.spec.containers[0].volumeMounts[*]}{.name}={.mountPath}:{.readOnly} {end}')
pod_mounts=$(pod_json '{range .spec.containers[0].volumeMounts[*]}{.name}={.mountPath}:{.readOnly} {end}')
sg_expect "agent volumeMounts = the base's (+ the ServiceAccount token)" "$(echo "$pod_mounts" | sed 's/kube-api-access-[a-z0-9]*=[^ ]* //')" "$base_mounts"
AG_CID=$(sg_cid_of sidecar-governor "$AG" agent)
apid=""
for p in $(cat "$(sg_cg_of sidecar-governor "$AG" agent)/cgroup.procs"); do
	[ "$(cat "/proc/$p/comm")" = sidecar-governo ] && apid=$p
done
if [ -n "$apid" ]; then
	sg_expect "agent process: CapEff" "$(awk '/^CapEff:/ { print $2 }' "/proc/$apid/status")" 0000000000000000
	sg_expect "agent process: seccomp filter" "$(awk '/^Seccomp:/ { print $2 }' "/proc/$apid/status")" 2
	sg_expect "agent process: NoNewPrivs" "$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$apid/status")" 1
	sg_expect "agent process: uid" "$(awk '/^Uid:/ { print $2 }' "/proc/$apid/status")" 0
	sg_check "agent process: read-only root" sh -c "awk '\$5 == \"/\" { print \$6 }' /proc/$apid/mountinfo | grep -q '^ro'"
	sg_expect "agent process: the node's PID namespace" "$(readlink "/proc/$apid/ns/pid")" "$(readlink /proc/1/ns/pid)"
	sg_check "agent process: its own network namespace (pod network)" [ "$(readlink "/proc/$apid/ns/net")" != "$(readlink /proc/1/ns/net)" ]
else
	sg_fail "no sidecar-governor process in the agent container ($AG_CID)"
fi
AGENT_LOG=$(ls /var/log/pods/sidecar-governor_"$AG"_*/agent/0.log 2>/dev/null || true)
ln -sf "$AGENT_LOG" "$SG_RUN/agent.log"
sg_check "agent log: Kubernetes Events on (in-cluster credentials via the kubernetes Service)" grep -q 'Kubernetes Events on' "$AGENT_LOG"
sg_log "agent log: $(grep -m 1 'Kubernetes Events' "$AGENT_LOG" | cut -c1-300)"
# What the agent's kube client meets: its network namespace, its token, its Service address.
api=$([ -n "$apid" ] && sg_agent_api_check "$apid" 2>&1 || echo "no agent process")
api_yes() { case $api in *": yes"*) return 0 ;; esac; return 1; }
sg_check "the agent's ServiceAccount, from the agent's network namespace, may create Events in shop ($api)" api_yes
if ! api_yes && [ -n "$apid" ]; then sg_agent_net_diag "$apid"; fi
sg_check "agent /metrics over the pod network: CRI discovery" sg_wait 30 sg_agent_has '^sidecar_governor_discovery_source{source="cri"} 1$'
sg_check "agent governs the three sidecars (sidecar_governor_proxies 3)" sg_wait 60 sg_agent_has '^sidecar_governor_proxies 3$'

# ---------------------------------------------------------------------------------------------
# Idle sidecars shrink to the floor (default policy: scaleDownAfter 30s, 10% a tick).
t0=$(sg_now_ms)
for d in "$S_PP" "$S_RV" "$S_RT"; do
	if sg_wait 180 sg_file_is "$d/cpu.max" "$FLOOR"; then
		sg_ok "${d#"$CG"/kubepods/burstable/} at the floor ($FLOOR) $(($(sg_now_ms) - t0)) ms after the agent was Ready"
	else
		sg_fail "${d#"$CG"/kubepods/burstable/}: cpu.max $(sg_cpu_max "$d") after 180 s, not the floor"
	fi
done
sg_phase idle-shrinks
sg_show "$S_PP" "$S_RV" "$S_RT" "$G" "$E" "$A_PP"
sg_agent_metrics || sg_fail "agent /metrics unreachable over the pod network"
sg_check "metrics: quota series labelled shop/$PP/istio-proxy" grep -q "^sidecar_governor_cpu_quota_millicores{namespace=\"shop\",pod=\"$PP\",container=\"istio-proxy\"" "$SG_RUN/metrics.txt"
sg_check "metrics: the native sidecar shop/$RT/istio-proxy governed" grep -q "^sidecar_governor_cpu_quota_millicores{namespace=\"shop\",pod=\"$RT\",container=\"istio-proxy\"" "$SG_RUN/metrics.txt"
sg_check "metrics: no series for the gateway or the envoy-named app" sh -c "! grep -q -e 'pod=\"$GW\"' -e 'pod=\"$ED\"' $SG_RUN/metrics.txt"

# A sidecar that turns hot gets its quota back: from the floor (an idle stand-in throttled at a
# 100m floor on a loaded TCG host is raised for that, and must be back down first).
RV_ENVOY=$(sg_envoy_in "$S_RV")
sg_check "reviews' sidecar at the floor before it turns hot" sg_wait 120 sg_file_is "$S_RV/cpu.max" "$FLOOR"
pp_thr0=$(sg_stat "$S_PP" nr_throttled)
echo "spin 1" >"/proc/$RV_ENVOY/root/tmp/ctl"
t0=$(sg_now_ms)
if sg_wait 60 sg_quota_at_least "$S_RV" 60000; then
	sg_ok "reviews' sidecar turned hot: quota back to $(sg_cpu_max "$S_RV") in $(($(sg_now_ms) - t0)) ms"
else
	sg_fail "reviews' sidecar spinning: cpu.max still $(sg_cpu_max "$S_RV") after 60 s"
fi
sg_window "$S_RV" 5
sg_log "reviews' sidecar while hot: ${W_USAGE_M}m used, ${W_THROTTLED_PCT}% throttled, cpu.max $(sg_cpu_max "$S_RV")"
echo idle >"/proc/$RV_ENVOY/root/tmp/ctl"
# productpage's idle sidecar is not moved by reviews' heat: at the floor, or raised only for its own
# throttling (its nr_throttled moved: the stand-in's idle loop starved at 100m under TCG load).
pp_now=$(sg_cpu_max "$S_PP") pp_thr=$(sg_stat "$S_PP" nr_throttled)
if [ "$pp_now" = "$FLOOR" ]; then
	sg_ok "productpage's idle sidecar stays at the floor ($FLOOR)"
elif [ "$pp_thr" -gt "$pp_thr0" ]; then
	sg_ok "productpage's idle sidecar at $pp_now, raised for its own throttling ($((pp_thr - pp_thr0)) periods throttled meanwhile), not reviews'"
else
	sg_fail "productpage's idle sidecar moved to $pp_now without being throttled (nr_throttled $pp_thr0 -> $pp_thr)"
fi
sg_phase turns-hot
# shellcheck disable=SC2086 # a list of directories
sg_untouched_snapshot $UNTOUCHED >"$SG_RUN/untouched.now"
if cmp -s "$SG_RUN/untouched.before" "$SG_RUN/untouched.now"; then
	sg_ok "apps, the gateway, the envoy-named app, pod and QoS cgroups unchanged ($(wc -l <"$SG_RUN/untouched.before") values)"
else
	sg_fail "changed: $(diff "$SG_RUN/untouched.before" "$SG_RUN/untouched.now" | grep '^[-+][^-+]' | tr '\n' ' ')"
fi

# ---------------------------------------------------------------------------------------------
# The agent's Events, through the API server (RBAC: create/patch events.k8s.io only).
if sg_phase_wanted events; then
ev() { k get events -n shop -o jsonpath="{range .items[?(@.reportingComponent==\"sidecar-governor\")]}{.involvedObject.name} {.reason} {.message}{\"\\n\"}{end}"; }
has_event() { ev >"$SG_RUN/events.txt" && grep -q "$1" "$SG_RUN/events.txt"; }
nf0=$(wc -l <"$SG_RUN/failures" 2>/dev/null || echo 0)
sg_check "kubectl get events: SidecarCPUAtFloor on $PP with from -> to" sg_wait 60 has_event "^$PP SidecarCPUAtFloor CPU quota of container istio-proxy lowered to its floor .* -> 100m"
sg_check "kubectl get events: SidecarCPUScaledUp on $RV" sg_wait 30 has_event "^$RV SidecarCPUScaledUp CPU quota of container istio-proxy raised 100m -> "
sg_check "kubectl get events: SidecarCPUAtFloor on the native sidecar's pod $RT" has_event "^$RT SidecarCPUAtFloor"
sed 's/^/  event| /' "$SG_RUN/events.txt" | head -n 12
sg_agent_metrics || true
grep '^sidecar_governor_events_total' "$SG_RUN/metrics.txt" | sed 's/^/  metrics| /'
if [ "$(wc -l <"$SG_RUN/failures" 2>/dev/null || echo 0)" != "$nf0" ]; then
	grep -i 'event' "$AGENT_LOG" | tail -n 8 | cut -c1-400 | sed 's/^/  agent| /'
	k get events -n shop --field-selector reason=SidecarCPUAtFloor 2>&1 | head -n 5 | cut -c1-200 | sed 's/^/  /'
fi
sg_phase events
fi

# ---------------------------------------------------------------------------------------------
# Prometheus (Debian's) scrapes the agent as the ServiceMonitor tells it to: the Services its
# selector picks in its namespaceSelector, their EndpointSlices, the port it names, its path,
# honor_labels and its relabeling (node from the pod's node). Debian's Prometheus is built
# without Kubernetes service discovery (its `kubernetes_sd_configs` is not there), so the
# EndpointSlices are read with kubectl and handed to it as file_sd targets with the labels
# Kubernetes discovery would give (namespace, service, pod, node).
if sg_phase_wanted prometheus; then
	smon() { k -n sidecar-governor get servicemonitor sidecar-governor -o jsonpath="$1"; }
	sm_ns=$(smon '{.spec.namespaceSelector.matchNames[0]}')
	sm_sel=$(smon '{.spec.selector.matchLabels.app\.kubernetes\.io/name}')
	sm_port=$(smon '{.spec.endpoints[0].port}')
	sm_path=$(smon '{.spec.endpoints[0].path}')
	sm_honor=$(smon '{.spec.endpoints[0].honorLabels}')
	sm_relabel=$(smon '{.spec.endpoints[0].relabelings[0].sourceLabels[0]}>{.spec.endpoints[0].relabelings[0].targetLabel}')
	sg_log "ServiceMonitor: namespace $sm_ns, Services app.kubernetes.io/name=$sm_sel, port $sm_port, path $sm_path, honorLabels $sm_honor, relabel $sm_relabel"
	sm_svc=$(k -n "$sm_ns" get svc -l "app.kubernetes.io/name=$sm_sel" -o jsonpath='{.items[0].metadata.name}')
	sm_pnum=$(k -n "$sm_ns" get endpointslices -l "kubernetes.io/service-name=$sm_svc" -o jsonpath="{.items[0].ports[?(@.name==\"$sm_port\")].port}")
	k -n "$sm_ns" get endpointslices -l "kubernetes.io/service-name=$sm_svc" \
		-o jsonpath='{range .items[*]}{range .endpoints[*]}{.addresses[0]} {.targetRef.name} {.nodeName}{"\n"}{end}{end}' >"$SG_RUN/slices.txt"
	sg_log "EndpointSlices of Service $sm_svc: $(tr '\n' ';' <"$SG_RUN/slices.txt") port $sm_port=$sm_pnum"
	mkdir -p "$SG_RUN/prom"
	# The relabeling's target label from its source (only __meta_kubernetes_pod_node_name is known here).
	sm_target=${sm_relabel#*>}
	[ "${sm_relabel%>*}" = __meta_kubernetes_pod_node_name ] || sg_fail "ServiceMonitor relabeling $sm_relabel: not the one this test maps"
	awk -v ns="$sm_ns" -v svc="$sm_svc" -v port="$sm_pnum" -v tl="$sm_target" 'BEGIN { printf "[" }
		NF >= 3 { printf "%s{\"targets\":[\"%s:%s\"],\"labels\":{\"namespace\":\"%s\",\"service\":\"%s\",\"pod\":\"%s\",\"%s\":\"%s\"}}", (n++ ? "," : ""), $1, port, ns, svc, $2, tl, $3 }
		END { print "]" }' "$SG_RUN/slices.txt" >"$SG_RUN/prom/targets.json"
	cat >"$SG_RUN/prometheus.yml" <<EOP
global: {scrape_interval: 3s, scrape_timeout: 2s, evaluation_interval: 3s}
scrape_configs:
  - job_name: serviceMonitor/$sm_ns/sidecar-governor/0
    honor_labels: ${sm_honor:-false}
    metrics_path: $sm_path
    file_sd_configs:
      - files: [$SG_RUN/prom/targets.json]
EOP
	sg_bg prometheus prometheus --config.file="$SG_RUN/prometheus.yml" --storage.tsdb.path="$SG_RUN/prom/data" \
		--web.listen-address=127.0.0.1:9090 --log.level=warn
	# prom_q QUERY: the first result's value of an instant query (the query percent-encoded).
	prom_q() {
		_q=$(printf '%s' "$1" | sed 's/%/%25/g; s/ /%20/g; s/"/%22/g; s/{/%7B/g; s/}/%7D/g; s/=/%3D/g; s/,/%2C/g; s/+/%2B/g')
		timeout 10 wget -q -O - "http://127.0.0.1:9090/api/v1/query?query=$_q" 2>/dev/null |
			sed -n 's/.*"value":\[[0-9.]*,"\([^"]*\)"\].*/\1/p'
	}
	prom_is() { [ "$(prom_q "$1")" = "$2" ]; }
	AG_IP=$(k -n sidecar-governor get pod "$AG" -o jsonpath='{.status.podIP}')
	target_up() {
		timeout 10 wget -q -O "$SG_RUN/targets.json" 'http://127.0.0.1:9090/api/v1/targets?state=active' 2>/dev/null &&
			grep -q "\"scrapeUrl\":\"http://$AG_IP:9477$sm_path\"" "$SG_RUN/targets.json" &&
			grep -q '"health":"up"' "$SG_RUN/targets.json"
	}
	t0=$(sg_now_ms)
	if sg_wait 180 target_up; then
		sg_ok "Prometheus discovered the agent through the Service's EndpointSlices and scrapes it: http://$AG_IP:9477$sm_path up after $(($(sg_now_ms) - t0)) ms"
	else
		sg_fail "Prometheus: no healthy target http://$AG_IP:9477$sm_path within 180 s ($(head -c 600 "$SG_RUN/targets.json" 2>/dev/null))"
		tail -n 5 "$SG_CLOG/prometheus.log" | cut -c1-300 | sed 's/^/  prometheus| /'
	fi
	sg_check "Prometheus: up{pod=\"$AG\",node=\"$SG_NODE\"} = 1 (target labels from the relabelings)" sg_wait 30 prom_is "up{pod=\"$AG\",node=\"$SG_NODE\",namespace=\"sidecar-governor\"}" 1
	sg_check "Prometheus: sidecar_governor_proxies{node=\"$SG_NODE\"} = 3" sg_wait 30 prom_is "sidecar_governor_proxies{node=\"$SG_NODE\"}" 3
	# The proxy's own labels kept (honor_labels) and the value the kernel holds (cpu.max in
	# millicores; it may move under load, so compared again until a scrape agrees, 30 s at most).
	prom_pp_is_kernel() {
		_pv=$(prom_q "sidecar_governor_cpu_quota_millicores{namespace=\"shop\",pod=\"$PP\",container=\"istio-proxy\"}")
		[ -n "$_pv" ] && [ "${_pv%.*}" = "$(sg_quota_m "$S_PP")" ]
	}
	if sg_wait 30 prom_pp_is_kernel; then
		sg_ok "Prometheus: productpage's quota under its own labels (honor_labels) = the kernel's cpu.max ($_pv millicores)"
	else
		sg_fail "Prometheus: productpage's quota series '$_pv', the kernel's cpu.max $(sg_cpu_max "$S_PP")"
	fi
	kill "$(cat "$SG_RUN/prometheus.pid")" 2>/dev/null || true
	sg_phase prometheus
fi

# ---------------------------------------------------------------------------------------------
# Policy changes through the kubelet's real ConfigMap volume update (no pod restart).
POLICY=$SG_CLUSTER_DIR/daemonset/policy.yaml
# policy_apply SED_EXPR: the base's policy edited, applied with kubectl as the ConfigMap.
policy_apply() {
	sed "$1" "$POLICY" >"$SG_RUN/policy.yaml"
	k -n sidecar-governor create configmap sidecar-governor-policy --from-file=policy.yaml="$SG_RUN/policy.yaml" \
		--dry-run=client -o yaml | k apply -f - >/dev/null
}
metric_value() { sg_agent_metrics && awk -v m="$1" '$1 == m { print $2 }' "$SG_RUN/metrics.txt"; }
metric_is() { [ "$(metric_value "$1")" = "$2" ]; }
# orig_of POD [CONTAINER_ID]: the agent's cpu_original_millicores of the pod's istio-proxy.
orig_of() {
	sg_agent_metrics && awk -v p="sidecar_governor_cpu_original_millicores{namespace=\"shop\",pod=\"$1\",container=\"istio-proxy\"" \
		-v c="${2:-}" 'index($0, p) == 1 && (c == "" || index($0, "container_id=\"" c "\"")) { print $NF + 0 }' "$SG_RUN/metrics.txt"
}
orig_is() { [ "$(orig_of "$1" "${3:-}")" = "$2" ]; }
metric_at_least() { _v=$(metric_value "$1") && [ -n "$_v" ] && [ "${_v%.*}" -ge "$2" ]; }
FLOOR2="15000 100000"
GOOD='s/^  min: 100m /  min: 150m /; s/^  scaleDownAfter: 30s /  scaleDownAfter: 10s /; s/^  conflictBackoff: 2m /  conflictBackoff: 15s /'
t0=$(sg_now_ms)
policy_apply "$GOOD"
if sg_wait 180 metric_is sidecar_governor_policy_cpu_min_millicores 150; then
	sg_ok "kubectl apply of the policy ConfigMap reached the agent through the kubelet's volume update in $(($(sg_now_ms) - t0)) ms (cpu.min 150m)"
else
	sg_fail "the new policy (cpu.min 150m) did not reach the agent within 180 s"
fi
sg_expect "agent pod not restarted by the policy change" "$(sg_pod_of sidecar-governor app.kubernetes.io/name=sidecar-governor)" "$AG"
for d in "$S_PP" "$S_RT"; do
	sg_check "${d#"$CG"/kubepods/burstable/}: the floor moved to $FLOOR2 (reason policy)" sg_wait 30 sg_file_is "$d/cpu.max" "$FLOOR2"
done
if sg_phase_wanted policy-bad; then
fails0=$(grep '^sidecar_governor_config_reloads_total{result="failure"}' "$SG_RUN/metrics.txt" | awk '{ print $2 }')
t0=$(sg_now_ms)
policy_apply 's/^  min: 100m /  min: "5" /'
if sg_wait 180 metric_is sidecar_governor_config_last_reload_successful 0; then
	sg_ok "a bad policy (cpu.min 5 > cpu.max 2) refused $(($(sg_now_ms) - t0)) ms after kubectl apply (reload failures ${fails0:-0} -> $(grep '^sidecar_governor_config_reloads_total{result="failure"}' "$SG_RUN/metrics.txt" | awk '{ print $2 }'))"
else
	sg_fail "the bad policy was not refused within 180 s"
fi
sg_expect "the last good policy stays live" "$(metric_value sidecar_governor_policy_cpu_min_millicores)" 150
sg_expect "productpage's sidecar still at the good policy's floor" "$(sg_cpu_max "$S_PP")" "$FLOOR2"
sg_check "agent log names the refused field" grep -q 'cpu.min' "$AGENT_LOG"
policy_apply "$GOOD"
sg_check "the good policy back" sg_wait 180 metric_is sidecar_governor_config_last_reload_successful 1
fi
sg_phase policy-reload

# ---------------------------------------------------------------------------------------------
# Pod annotations, given at creation (the agent reads them from the pod's CRI sandbox, which
# holds them as they were when the pod started; a later `kubectl annotate` of a running pod does
# not reach it: the agent has no Pod watch and no right to read pods).
if sg_phase_wanted annotate; then
	k apply -f "$SG_CLUSTER_DIR/annotated.yaml" >/dev/null
	if k -n shop wait --for=condition=Ready --timeout=300s pod/quiet pod/typo >/dev/null; then
		S_Q=$(sg_cg_of shop quiet istio-proxy)
		S_T=$(sg_cg_of shop typo istio-proxy)
		sg_expect "quiet's sidecar (mode off) as the kubelet wrote it" "$(sg_cpu_max "$S_Q")" "$ORIG"
		sg_check "agent log: the bad annotation refused by name (sidecar-governor.io/mode: \`Off\`)" sg_wait 60 \
			sh -c "grep 'bad pod annotation' '$AGENT_LOG' | grep -q 'sidecar-governor.io/mode: .Off. is not one of'"
		sg_check "metrics: errors_total{kind=\"annotation\"} counted" sg_wait 30 metric_at_least 'sidecar_governor_errors_total{kind="annotation"}' 1
		t0=$(sg_now_ms)
		if sg_wait 150 sg_file_is "$S_T/cpu.max" "$FLOOR2"; then
			sg_ok "typo's sidecar governed at the policy's settings: at the floor $FLOOR2 after $(($(sg_now_ms) - t0)) ms"
		else
			sg_fail "typo's sidecar: cpu.max $(sg_cpu_max "$S_T") after 150 s, not the policy's floor"
		fi
		# (mode off is logged at debug only: the kernel's file and the metrics say it.)
		sg_expect "quiet's sidecar (mode off) untouched while typo's, as old, reached the floor" "$(sg_cpu_max "$S_Q")" "$ORIG"
		sg_check "metrics: no quota series for quiet (mode off)" sh -c "! grep -q '^sidecar_governor_cpu_quota_millicores{namespace=\"shop\",pod=\"quiet\"' '$SG_RUN/metrics.txt'"
	else
		sg_fail "the annotated pods were not Ready within 300 s"
	fi
	k -n shop delete pod quiet typo --wait=true --timeout=120s >/dev/null 2>&1 || sg_fail "kubectl delete pod quiet typo failed"
	sg_check "after the annotated pods are gone: three proxies again" sg_wait 60 sg_agent_has '^sidecar_governor_proxies 3$'
	sg_phase annotate
fi

# ---------------------------------------------------------------------------------------------
# In-place resize by the kubelet: adopted as the original, governed within it.
S_PP_ORIG=$ORIG PP_ORIG_M=2000
if sg_phase_wanted resize; then
S_PP_ORIG="150000 100000" PP_ORIG_M=1500
c0=$(metric_value sidecar_governor_conflicts_total)
k -n shop patch pod "$PP" --subresource resize \
	-p '{"spec":{"containers":[{"name":"istio-proxy","resources":{"limits":{"cpu":"1500m"}}}]}}' >/dev/null ||
	sg_fail "kubectl patch --subresource resize failed"
t0=$(sg_now_ms)
if sg_wait 120 sg_file_is "$S_PP/cpu.max" "150000 100000"; then
	sg_ok "kubelet resized productpage's sidecar: cpu.max 150000 100000 after $(($(sg_now_ms) - t0)) ms"
else
	sg_fail "after the resize cpu.max is $(sg_cpu_max "$S_PP"), not 150000 100000"
fi
sg_check "the agent counted the conflict (conflicts_total ${c0:-0} -> more)" sg_wait 30 metric_at_least sidecar_governor_conflicts_total $((${c0:-0} + 1))
sg_check "the resized limit adopted as the original (original_millicores 1500)" sg_wait 30 orig_is "$PP" 1500
if sg_wait 120 sg_file_is "$S_PP/cpu.max" "$FLOOR2"; then
	sg_ok "governed within the new limit after the back-off: back at $FLOOR2 $(($(sg_now_ms) - t0)) ms after the resize"
else
	sg_fail "after the resize and back-off cpu.max is $(sg_cpu_max "$S_PP"), not $FLOOR2"
fi
sg_phase resize
fi

# ---------------------------------------------------------------------------------------------
# The sidecar's container killed: the kubelet restarts it, the agent governs the new one.
if sg_phase_wanted restart; then
old_cid=$(sg_cid_of shop "$RT" istio-proxy)
init=$(head -n 1 "$S_RT/cgroup.procs")
kill -9 "$init"
t0=$(sg_now_ms)
new_cid() { _c=$(sg_cid_of shop "$RT" istio-proxy) && [ -n "$_c" ] && [ "$_c" != "$old_cid" ] && [ -d "$(sg_cg_of shop "$RT" istio-proxy)" ]; }
if sg_wait 120 new_cid; then
	S_RT=$(sg_cg_of shop "$RT" istio-proxy)
	sg_ok "kubelet restarted the native sidecar ($(k -n shop get pod "$RT" -o jsonpath='{.status.initContainerStatuses[0].restartCount}') restarts) in $(($(sg_now_ms) - t0)) ms"
	sg_expect "the new container's cpu.max as the kubelet wrote it" "$(sg_cpu_max "$S_RT")" "$ORIG"
	if sg_wait 120 sg_file_is "$S_RT/cpu.max" "$FLOOR2"; then
		sg_ok "the restarted sidecar governed again: $FLOOR2 $(($(sg_now_ms) - t0)) ms after the kill"
	else
		sg_fail "the restarted sidecar's cpu.max is $(sg_cpu_max "$S_RT") after 120 s"
	fi
	sg_check "metrics: the new container's original is its own limit (2000m)" orig_is "$RT" 2000 "${S_RT##*/}"
else
	sg_fail "the killed sidecar was not restarted within 120 s"
fi
sg_phase restart
fi

# ---------------------------------------------------------------------------------------------
# The agent pod deleted and recreated by the DaemonSet controller adopts the journal (the upgrade
# path: restoreOnExit false first, so the old pod leaves the limits in place).
if sg_phase_wanted agent-recreated; then
policy_apply "s/^restoreOnExit: true /restoreOnExit: false /; $GOOD"
h0=$(grep '^sidecar_governor_config_info{' "$SG_RUN/metrics.txt" | head -n 1)
hash_changed() { sg_agent_metrics && [ "$(grep '^sidecar_governor_config_info{' "$SG_RUN/metrics.txt" | head -n 1)" != "$h0" ]; }
sg_check "restoreOnExit false reached the agent" sg_wait 180 hash_changed
k -n sidecar-governor delete pod "$AG" --wait=true --timeout=120s >/dev/null || sg_fail "kubectl delete pod $AG failed"
t0=$(sg_now_ms)
sg_expect "after the old pod's exit (no restore) productpage's sidecar keeps its floor" "$(sg_cpu_max "$S_PP")" "$FLOOR2"
if k -n sidecar-governor rollout status ds/sidecar-governor --timeout=300s >/dev/null 2>&1; then
	AG2=$(sg_pod_of sidecar-governor app.kubernetes.io/name=sidecar-governor)
	sg_ok "the DaemonSet controller recreated the agent ($AG2) Ready in $(($(sg_now_ms) - t0)) ms"
	AGENT_LOG=$(ls /var/log/pods/sidecar-governor_"$AG2"_*/agent/0.log 2>/dev/null || true)
	ln -sf "$AGENT_LOG" "$SG_RUN/agent.log"
	sg_check "the new agent governs the three sidecars" sg_wait 60 sg_agent_has '^sidecar_governor_proxies 3$'
	sg_expect "the new agent took reviews' original from the journal (not the floor it found)" "$(orig_of "$RV")" 2000
	sg_expect "and productpage's original (resized: 1500, else 2000)" "$(orig_of "$PP")" "$PP_ORIG_M"
	sg_expect "journal entries" "$(metric_value sidecar_governor_journal_entries)" 3
	AG=$AG2
	for p in $(cat "$(sg_cg_of sidecar-governor "$AG" agent)/cgroup.procs"); do
		[ "$(cat "/proc/$p/comm")" = sidecar-governo ] && apid=$p
	done
else
	sg_fail "the agent pod was not recreated Ready within 300 s"
fi
policy_apply "$GOOD"
h0=$(grep '^sidecar_governor_config_info{' "$SG_RUN/metrics.txt" | head -n 1)
sg_check "restoreOnExit true again" sg_wait 180 hash_changed
sg_phase agent-recreated
fi

# ---------------------------------------------------------------------------------------------
# Uninstall: `kubectl delete -k`: every original back before the pod is gone.
uninstalled=0
if sg_phase_wanted uninstall; then
uninstalled=1
(
	while :; do
		if [ "$(sg_cpu_max "$S_PP")" = "$S_PP_ORIG" ] && [ "$(sg_cpu_max "$S_RV")" = "$ORIG" ] &&
			[ "$(sg_cpu_max "$S_RT")" = "$ORIG" ]; then
			echo "restored $(sg_now_ms) agent-alive=$([ -d "/proc/$apid" ] && echo yes || echo no)" >"$SG_RUN/restored-at"
			exit 0
		fi
		usleep 100000
	done
) &
watcher=$!
t0=$(sg_now_ms)
k delete -k "$SG_CLUSTER_DIR/overlay" --wait=false >/dev/null 2>&1 || sg_fail "kubectl delete -k failed"
k -n sidecar-governor wait --for=delete "pod/$AG" --timeout=120s >/dev/null 2>&1 || true
gone=$(sg_now_ms)
kill "$watcher" 2>/dev/null || true
if [ -s "$SG_RUN/restored-at" ]; then
	read -r _ at alive <"$SG_RUN/restored-at"
	sg_ok "kubectl delete -k: originals back $((at - t0)) ms after the delete, the pod gone after $((gone - t0)) ms ($alive)"
	sg_check "originals back before the pod was gone" [ "$at" -le "$gone" ]
else
	sg_fail "kubectl delete -k: originals not back ($(sg_cpu_max "$S_PP"), $(sg_cpu_max "$S_RV"), $(sg_cpu_max "$S_RT"))"
fi
sg_expect "productpage's sidecar after uninstall (its resized original)" "$(sg_cpu_max "$S_PP")" "$S_PP_ORIG"
for d in "$S_RV" "$S_RT"; do
	sg_expect "${d#"$CG"/kubepods/burstable/} after uninstall" "$(sg_cpu_max "$d")" "$ORIG"
done
sg_phase uninstall
fi

# ---------------------------------------------------------------------------------------------
# Helm: the chart (the same objects) installed on the same node, policy through values.
helm_ran=0
if [ "$uninstalled" = 0 ]; then
	echo "PHASE helm SKIPPED (needs the uninstall phase)"
	echo helm >>"$SG_RUN/skipped"
elif ! sg_phase_wanted helm; then
	:
elif helm_ran=1 && k wait --for=delete namespace/sidecar-governor --timeout=240s >/dev/null 2>&1; then
	mkdir -p /tmp/helm-home
	k create namespace sidecar-governor >/dev/null
	k label namespace sidecar-governor pod-security.kubernetes.io/enforce=privileged >/dev/null
	t0=$(sg_now_ms)
	if HOME=/tmp/helm-home helm install sidecar-governor "$SG_CLUSTER_DIR/charts/sidecar-governor" -n sidecar-governor \
		--set image.repository=docker.io/library/sidecar-governor --set image.pullPolicy=Never \
		--set policy.cpu.scaleDownAfter=10s --wait --timeout 300s >"$SG_RUN/helm.log" 2>&1; then
		sg_ok "helm install: DaemonSet Ready in $(($(sg_now_ms) - t0)) ms"
		AG=$(sg_pod_of sidecar-governor app.kubernetes.io/name=sidecar-governor)
		AGENT_LOG=$(ls /var/log/pods/sidecar-governor_"$AG"_*/agent/0.log 2>/dev/null || true)
		ln -sf "$AGENT_LOG" "$SG_RUN/agent.log"
		sg_check "helm: the agent governs the three sidecars" sg_wait 60 sg_agent_has '^sidecar_governor_proxies 3$'
		sg_check "helm: policy from values (scaleDownAfter 10s): productpage's sidecar at the 100m floor" sg_wait 120 sg_file_is "$S_PP/cpu.max" "$FLOOR"
		if HOME=/tmp/helm-home helm uninstall sidecar-governor -n sidecar-governor --wait --timeout 180s >>"$SG_RUN/helm.log" 2>&1; then
			sg_expect "helm uninstall: productpage's original back" "$(sg_cpu_max "$S_PP")" "$S_PP_ORIG"
			sg_expect "helm uninstall: reviews' original back" "$(sg_cpu_max "$S_RV")" "$ORIG"
		else
			sg_fail "helm uninstall failed: $(tail -n 3 "$SG_RUN/helm.log" | tr '\n' ' ')"
		fi
	else
		sg_fail "helm install failed: $(tail -n 3 "$SG_RUN/helm.log" | tr '\n' ' ')"
	fi
else
	sg_fail "namespace sidecar-governor not gone 240 s after kubectl delete -k"
fi
[ "$helm_ran" = 0 ] || sg_phase helm
sg_log "phases (name, seconds, uptime): $(tr '\n' ';' <"$SG_RUN/phases")"
if [ -s "$SG_RUN/skipped" ]; then
	sg_fail "partial run: phases skipped (sg.cluster_skip): $(tr '\n' ' ' <"$SG_RUN/skipped")"
fi
sg_done
