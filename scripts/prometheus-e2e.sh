#!/usr/bin/env bash
# A real Prometheus scrapes a real agent. Starts the release binary (live mode, Events off) on a
# fixture tree shaped like a node's cgroupfs and procfs — one idle proxy, one throttled proxy
# whose cpu.stat a background loop advances — and Debian's prometheus on loopback with a 1s
# scrape interval, honor_labels as the ServiceMonitor sets it, and the PrometheusRule's rules
# loaded. Then asserts through the HTTP API: series and labels, the idle proxy reaching its floor,
# actions by reason, hot reload (good and bad policy) seen in config_* series, alert rules that
# evaluate cleanly (and the reload alert going pending), a vanished proxy's series removed, and
# `promtool check metrics` / `promtool check rules`. SIGTERM then restores the originals.
#
#   scripts/prometheus-e2e.sh          (BIN=path to use another binary; KEEP=1 keeps the tmp dir)
#
# Prints "N passed, M failed"; exits non-zero on failure. Installs prometheus (apt) if missing.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if ! command -v prometheus >/dev/null || ! command -v promtool >/dev/null; then
	echo "== apt-get install prometheus"
	{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } </dev/null >/dev/null || {
		echo "cannot install prometheus" >&2
		exit 1
	}
fi
bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/sidecar-governor}
if [ -z "${BIN:-}" ]; then
	cargo build --release --bin sidecar-governor || exit 1
fi

tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
	wait 2>/dev/null
	[ -n "${KEEP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT

passed=0
failed=0
check() { # check NAME COMMAND...: passes when COMMAND succeeds
	local name=$1
	shift
	if out=$("$@" 2>&1); then
		echo "PASS $name${out:+: $out}"
		passed=$((passed + 1))
	else
		echo "FAIL $name${out:+: $out}"
		failed=$((failed + 1))
	fi
}
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# --- fixture: a node with two proxies -----------------------------------------------------------
cg=$tmp/cgroup
proc=$tmp/proc
mkdir -p "$cg" "$proc" "$tmp/state" "$tmp/config" "$tmp/prom"
echo "cpuset cpu io memory pids" >"$cg/cgroup.controllers"
uid_idle=11111111-0000-4000-8000-000000000001
uid_hot=22222222-0000-4000-8000-000000000002
id_idle=$(printf 'a%.0s' {1..63})1
id_hot=$(printf 'b%.0s' {1..63})2
psi='some avg10=0.00 avg60=0.00 avg300=0.00 total=0
full avg10=0.00 avg60=0.00 avg300=0.00 total=0'
cpu_stat() { printf 'usage_usec %s\nuser_usec %s\nsystem_usec 0\nnr_periods %s\nnr_throttled %s\nthrottled_usec %s\nnr_bursts 0\nburst_usec 0\n' "$1" "$1" "$2" "$3" "$4"; }
container() { # container UID ID CPU_MAX PID
	local pod=$cg/kubepods/burstable/pod$1 dir
	dir=$pod/$2
	mkdir -p "$dir"
	for d in "$pod" "$dir"; do
		echo "$3" >"$d/cpu.max"
		echo "$psi" >"$d/cpu.pressure"
		cpu_stat 0 0 0 0 >"$d/cpu.stat"
	done
	mkdir -p "$proc/$4"
	echo envoy >"$proc/$4/comm"
	echo "0::/kubepods/burstable/pod$1/$2" >"$proc/$4/cgroup"
	printf 'envoy\0--concurrency\0002\0' >"$proc/$4/cmdline"
	echo "$4 (envoy) S 1 $4 $4 0 -1 4194560 0 0" >"$proc/$4/stat"
}
container "$uid_idle" "$id_idle" "200000 100000" 1001
container "$uid_hot" "$id_hot" "100000 100000" 1002
hot=$cg/kubepods/burstable/pod$uid_hot/$id_hot
idle=$cg/kubepods/burstable/pod$uid_idle/$id_idle

# The second proxy idles (and shrinks) until $tmp/go-hot exists; then, every 250 ms, it uses all
# of its quota and is throttled in two of every three periods. cpu.stat is rewritten in place
# (the agent holds its descriptor open and re-reads it from offset 0, as on a real cgroup).
python3 - "$hot" "$tmp/go-hot" <<'PY' &
import os, sys, time
hot, go = sys.argv[1:]
usage = periods = throttled = 0
while os.path.isdir(hot):
    try:
        quota = open(os.path.join(hot, "cpu.max")).read().split()[0]
    except OSError:
        break
    quota = 100000 if quota == "max" else int(quota)
    periods += 3
    if os.path.exists(go):
        usage += quota // 4
        throttled += 2
    text = (f"usage_usec {usage}\nuser_usec {usage}\nsystem_usec 0\nnr_periods {periods}\n"
            f"nr_throttled {throttled}\nthrottled_usec {throttled * 1000}\nnr_bursts 0\nburst_usec 0\n").encode()
    try:
        fd = os.open(os.path.join(hot, "cpu.stat"), os.O_WRONLY)
    except OSError:
        break
    os.pwrite(fd, text, 0)  # counters only grow: the new text covers the old one
    os.ftruncate(fd, len(text))
    os.close(fd)
    time.sleep(0.25)
PY
pids+=($!)

policy() { # policy FILE MIN: written atomically (rename), as an editor or kubelet would
	cat >"$1.tmp" <<POLICY
interval: 500ms
match:
  rescanInterval: 1s
cpu:
  min: $2
  scaleDownAfter: 2s
  stepDown: 0.5
POLICY
	mv "$1.tmp" "$1"
}
policy "$tmp/config/policy.yaml" 100m

# --- the agent ---------------------------------------------------------------------------------
agent_port=$(free_port)
admin_port=$(free_port)
"$bin" --log-format json run --config "$tmp/config/policy.yaml" --cgroup-root "$cg" --proc-root "$proc" \
	--state-dir "$tmp/state" --listen "127.0.0.1:$agent_port" --admin-listen "127.0.0.1:$admin_port" --events off --discovery procfs \
	>"$tmp/agent.log" 2>&1 &
agent_pid=$!
pids+=("$agent_pid")

# --- prometheus --------------------------------------------------------------------------------
python3 - daemonset/prometheusrule.yaml "$tmp/rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
yaml.safe_dump(docs[0]["spec"], open(sys.argv[2], "w"), sort_keys=False)
PY
prom_port=$(free_port)
cat >"$tmp/prometheus.yml" <<PROM
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
rule_files: [$tmp/rules.yaml]
scrape_configs:
  - job_name: sidecar-governor
    honor_labels: true
    static_configs:
      - targets: ["127.0.0.1:$agent_port"]
        labels: {node: e2e-node}
PROM
prometheus --config.file="$tmp/prometheus.yml" --storage.tsdb.path="$tmp/prom" \
	--web.listen-address="127.0.0.1:$prom_port" --log.level=warn >"$tmp/prometheus.log" 2>&1 &
pids+=($!)
api=http://127.0.0.1:$prom_port/api/v1
export api

# q EXPR [FIELD]: the first result's value (or FIELD: count | labels | alerts | rules-health).
q() {
	curl -sf --get --data-urlencode "query=$1" "$api/query" | python3 -c '
import json, sys
field = sys.argv[1]
r = json.load(sys.stdin)["data"]["result"]
if field == "count": print(len(r))
elif field == "labels": print(" ".join(sorted("%s=%s" % kv for s in r for kv in s["metric"].items() if kv[0] != "__name__")))
elif r: print(r[0]["value"][1])
' "${2:-value}"
}
export -f q
# wait_for SECONDS EXPR OP VALUE: until q EXPR compares true (numeric), else fail with last value.
wait_for() {
	local deadline=$((SECONDS + $1)) v
	while :; do
		v=$(q "$2")
		if [ -n "$v" ] && python3 -c "import sys; sys.exit(0 if float('$v') $3 float('$4') else 1)"; then
			echo "$2 = $v"
			return 0
		fi
		[ $SECONDS -ge $deadline ] && { echo "$2 = ${v:-<none>} after $1s (want $3 $4)"; return 1; }
		sleep 0.5
	done
}
ready() {
	local deadline=$((SECONDS + 30))
	until curl -sf "http://127.0.0.1:$prom_port/-/ready" >/dev/null && curl -sf "http://127.0.0.1:$agent_port/readyz" >/dev/null; do
		[ $SECONDS -ge $deadline ] && { echo "not ready: agent log: $(tail -3 "$tmp/agent.log"); prometheus log: $(tail -3 "$tmp/prometheus.log")"; return 1; }
		sleep 0.3
	done
	echo "agent and prometheus ready"
}
check "agent and prometheus start" ready
check "target is up" wait_for 20 'up{job="sidecar-governor"}' == 1
check "two proxies governed" wait_for 20 'sidecar_governor_proxies' == 2
check "per-proxy series with labels" bash -c "
	l=\$(q 'sidecar_governor_cpu_quota_millicores' labels)
	echo \"\$l\" | grep -q 'pod_uid=$uid_idle' && echo \"\$l\" | grep -q 'pod_uid=$uid_hot' &&
	echo \"\$l\" | grep -q 'container_id=$id_idle' && echo \"\$l\" | grep -q 'node=e2e-node' && echo ok"
check "idle proxy reaches its floor (100m)" wait_for 30 "sidecar_governor_cpu_quota_millicores{pod_uid=\"$uid_idle\"}" == 100
check "original quota exported" wait_for 5 "sidecar_governor_cpu_original_millicores{pod_uid=\"$uid_idle\"}" == 2000
check "idle shrink counted" wait_for 10 'sum(sidecar_governor_actions_total{resource="cpu",direction="down",reason="idle"})' '>' 0
check "second proxy shrinks too" wait_for 30 "sidecar_governor_cpu_quota_millicores{pod_uid=\"$uid_hot\"}" '<' 1000
touch "$tmp/go-hot"
check "throttled proxy scaled up" wait_for 20 'sum(sidecar_governor_actions_total{resource="cpu",direction="up",reason="throttled"})' '>' 0
check "hot proxy back at its original (1 core)" wait_for 15 "sidecar_governor_cpu_quota_millicores{pod_uid=\"$uid_hot\"}" == 1000
check "throttled ratio seen" wait_for 10 "max_over_time(sidecar_governor_cpu_throttled_ratio{pod_uid=\"$uid_hot\"}[1m])" '>' 0.5
check "reclaimed CPU (original - quota) = 1900m" wait_for 10 'sum(sidecar_governor_cpu_original_millicores - sidecar_governor_cpu_quota_millicores)' == 1900
check "ticks about 2/s" wait_for 10 'rate(sidecar_governor_ticks_total[10s])' '>' 1
check "tick duration histogram" wait_for 10 'histogram_quantile(0.99, rate(sidecar_governor_tick_duration_seconds_bucket[30s]))' '>' 0
hash=$(python3 -c "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest()[:16])" "$tmp/config/policy.yaml")
check "config_info carries the policy hash" wait_for 10 "sidecar_governor_config_info{hash=\"$hash\"}" == 1
check "policy floor exported" wait_for 10 'sidecar_governor_policy_cpu_min_millicores' == 100

# Hot reload: a new floor applies; a bad policy is refused and the reload alert goes pending.
policy "$tmp/config/policy.yaml" 300m
hash2=$(python3 -c "import hashlib,sys;print(hashlib.sha256(open(sys.argv[1],'rb').read()).hexdigest()[:16])" "$tmp/config/policy.yaml")
check "reload: success counted" wait_for 15 'sidecar_governor_config_reloads_total{result="success"}' == 1
check "reload: new floor in force (300m)" wait_for 15 "sidecar_governor_cpu_quota_millicores{pod_uid=\"$uid_idle\"}" == 300
check "reload: one config_info series, the new hash" bash -c "[ \"\$(q 'sidecar_governor_config_info' count)\" = 1 ] && [ \"\$(q 'sidecar_governor_config_info{hash=\"$hash2\"}')\" = 1 ] && echo $hash2"
printf 'cpu:\n  min: "3"\n  max: "2"\n' >"$tmp/config/policy.yaml.tmp" && mv "$tmp/config/policy.yaml.tmp" "$tmp/config/policy.yaml"
check "reload: bad policy refused" wait_for 15 'sidecar_governor_config_reloads_total{result="failure"}' == 1
check "reload: last reload unsuccessful" wait_for 10 'sidecar_governor_config_last_reload_successful' == 0
check "reload: old policy stays live" wait_for 5 "sidecar_governor_config_info{hash=\"$hash2\"}" == 1
check "alert SidecarGovernorConfigReloadFailing pending" bash -c "
	deadline=\$((SECONDS + 20))
	until curl -sf '$api/alerts' | python3 -c '
import json, sys
a = json.load(sys.stdin)[\"data\"][\"alerts\"]
sys.exit(0 if any(x[\"labels\"][\"alertname\"] == \"SidecarGovernorConfigReloadFailing\" and x[\"state\"] in (\"pending\", \"firing\") for x in a) else 1)'; do
		[ \$SECONDS -ge \$deadline ] && exit 1; sleep 1
	done; echo pending"
check "every alert rule evaluates cleanly" bash -c "curl -sf '$api/rules' | python3 -c '
import json, sys
rules = [r for g in json.load(sys.stdin)[\"data\"][\"groups\"] for r in g[\"rules\"]]
bad = [(r[\"name\"], r.get(\"lastError\")) for r in rules if r[\"health\"] != \"ok\"]
print(len(rules), \"rules ok\") if rules and not bad else sys.exit(str(bad or \"no rules\"))'"
check "CRI fallback alert pending (--discovery procfs)" bash -c "curl -sf '$api/alerts' | grep -q '\"alertname\":\"SidecarGovernorCriFallback\"' && echo pending"
check "no other alert pending" bash -c "curl -sf '$api/alerts' | python3 -c '
import json, sys
names = {a[\"labels\"][\"alertname\"] for a in json.load(sys.stdin)[\"data\"][\"alerts\"]}
names -= {\"SidecarGovernorConfigReloadFailing\", \"SidecarGovernorCriFallback\"}
sys.exit(str(names)) if names else print(\"none\")'"

# Lint the exposition and the rules.
curl -sf "http://127.0.0.1:$agent_port/metrics" >"$tmp/metrics.txt"
# promtool (2.42) lints the Prometheus 0.0.4 text format; the agent serves OpenMetrics, where a
# counter's family is named without `_total` (`# HELP sidecar_governor_ticks` describes the
# sample `sidecar_governor_ticks_total`). promtool therefore reports "<name>_total no help text"
# for every counter that has samples: that finding, and only that one, is the format mismatch
# and is accepted when the family's HELP is there. Anything else fails.
lint_metrics() {
	local out line fam problems=0
	out=$(promtool check metrics <"$tmp/metrics.txt" 2>&1)
	while IFS= read -r line; do
		[ -z "$line" ] && continue
		fam=${line%_total no help text}
		if [ "$fam" != "$line" ] && grep -q "^# HELP $fam " "$tmp/metrics.txt" && grep -q "^# TYPE $fam counter" "$tmp/metrics.txt"; then
			continue
		fi
		echo "$line"
		problems=$((problems + 1))
	done <<<"$out"
	echo "$(grep -c '^# TYPE' "$tmp/metrics.txt") families, $(grep -vc '^#' "$tmp/metrics.txt") samples; only the OpenMetrics counter-HELP mismatch"
	[ "$problems" -eq 0 ]
}
check "promtool check metrics" lint_metrics
check "promtool check rules" promtool check rules "$tmp/rules.yaml"

# The status command against the live agent.
check "sidecar-governor status" bash -c "out=\$('$bin' status --endpoint http://127.0.0.1:$admin_port) && echo \"\$out\" | grep -q 'uid:$uid_idle' && echo \"\$out\" | grep -q 'LAST ACTION' && echo \"\$out\" | tail -1"

# A proxy that goes away: its series go too.
rm -rf "$proc/1002" "$hot"
check "vanished proxy's series removed" wait_for 20 'count(sidecar_governor_cpu_quota_millicores)' == 1
check "proxies gauge follows" wait_for 10 'sidecar_governor_proxies' == 1

# SIGTERM: restoreOnExit puts the original back.
kill -TERM "$agent_pid"
check "agent exits 0 on SIGTERM" bash -c "for i in \$(seq 50); do kill -0 $agent_pid 2>/dev/null || break; sleep 0.2; done; wait $agent_pid 2>/dev/null; ! kill -0 $agent_pid 2>/dev/null && grep -q '\"stopped\"' '$tmp/agent.log' && echo stopped"
check "original cpu.max restored" bash -c "[ \"\$(cat '$idle/cpu.max')\" = '200000 100000' ] && echo '200000 100000'"

if [ "$failed" -gt 0 ]; then
	echo "--- agent log (tail)"
	tail -20 "$tmp/agent.log"
	echo "--- prometheus log (tail)"
	tail -10 "$tmp/prometheus.log"
fi
echo "prometheus-e2e: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
