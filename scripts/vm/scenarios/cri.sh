#!/bin/sh
# shellcheck shell=dash
# sg-vm-group: cri
# CRI discovery on a real runtime (issue 3): Debian's containerd 1.6 + runc run in the VM (cgroup
# v2, cgroupfs driver); pods are made through CRI as kubelet would (cri_driver). The agent, with
# --discovery cri, must label its series with the pods' namespace/pod/container names, shrink the
# idle sidecars (one only down to its pod's cpu-min annotation), leave the gateway and the app
# containers alone, govern a sidecar started after it within a tick or two, forget a removed one
# (series and journal entry) as fast, and, once containerd is stopped, keep governing through
# procfs and report discovery_source{source="procfs"} 1, and return to CRI when containerd is
# back. Prints the time from a container's start to its first governed tick, and the mean tick
# with CRI (which lists containers every tick: containerd 1.6 has no GetContainerEvents) and with
# procfs discovery.
# Runs in its own boot (scripts/vm-e2e.sh): its initramfs carries containerd and switches root.
set -eu
. /sg/lib.sh
. /sg/cri-lib.sh

UID_A=aaaaaaaa-0c01-4000-8000-00000000000a
UID_B=bbbbbbbb-0c02-4000-8000-00000000000b
UID_G=cccccccc-0c03-4000-8000-00000000000c
UID_C=dddddddd-0c04-4000-8000-00000000000d
SIDECAR=/usr/local/bin/pilot-agent

sg_cri_start

echo idle >"$SG_RUN/ctl/cart-a"
sg_cri_pod shop cart-a "$UID_A" 3000 --mount "$SG_RUN/ctl:/ctl" \
	--container "istio-proxy|2000|$SIDECAR proxy sidecar --control /ctl/cart-a" \
	--container "cart|1000|/bin/app --mode idle"
POD_A=$SG_POD_DIR
sg_cri_pod shop cart-b "$UID_B" 3000 --annotation sidecar-governor.io/cpu-min=500m \
	--container "istio-proxy|2000|$SIDECAR proxy sidecar" \
	--container "cart|1000|/bin/app --mode idle"
POD_B=$SG_POD_DIR
sg_cri_pod istio-system ingressgateway-1 "$UID_G" 2000 \
	--container "istio-proxy|2000|$SIDECAR proxy router"
POD_G=$SG_POD_DIR

CID_A=$(sg_cri_cid cart-a istio-proxy)
CID_B=$(sg_cri_cid cart-b istio-proxy)
CID_G=$(sg_cri_cid ingressgateway-1 istio-proxy)
SA=$(sg_cri_cg "$UID_A" "$CID_A")
SB=$(sg_cri_cg "$UID_B" "$CID_B")
SG=$(sg_cri_cg "$UID_G" "$CID_G")
AA=$(sg_cri_cg "$UID_A" "$(sg_cri_cid cart-a cart)")
AB=$(sg_cri_cg "$UID_B" "$(sg_cri_cid cart-b cart)")
for d in "$SA" "$SB" "$SG"; do
	sg_expect "runc set ${d#"$CG"/} cpu.max from the CRI limit" "$(sg_cpu_max "$d")" "200000 100000"
done
sg_expect "app container cpu.max" "$(sg_cpu_max "$AA")" "100000 100000"
envoy_in() {
	for _p in $(cat "$1/cgroup.procs"); do
		[ "$(cat "/proc/$_p/comm" 2>/dev/null)" = envoy ] && return 0
	done
	return 1
}
for d in "$SA" "$SB" "$SG"; do
	sg_check "an envoy runs in ${d#"$CG"/}" sg_wait 10 envoy_in "$d"
done
sg_show "$SA" "$SB" "$SG" "$AA" "$AB"
UNTOUCHED="$AA $AB $SG $POD_A $POD_B $POD_G $CG/kubepods/burstable $CG/kubepods"
# shellcheck disable=SC2086 # a list of directories
sg_untouched_snapshot $UNTOUCHED >"$SG_RUN/untouched.before"

mkdir -p "$(dirname "$SG_POLICY")"
cat >"$SG_POLICY" <<EOF
interval: 1s
match:
  rescanInterval: 60s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 3s
EOF
SG_TRACE="A=$SA B=$SB G=$SG"
sg_trace_start
sg_agent_start --discovery cri --cri-endpoint "$SG_CRI_SOCK"

metrics() { sg_http /metrics >"$SG_RUN/metrics.txt"; }
has() { metrics && grep -q -e "$1" "$SG_RUN/metrics.txt"; }
lacks() { metrics && [ "$SG_HTTP_STATUS" = 200 ] && ! grep -q -e "$1" "$SG_RUN/metrics.txt"; }
series() { printf 'namespace="%s",pod="%s",container="%s",pod_uid="%s",container_id="%s"' "$@"; }
# tick_mean SECONDS LABEL: the agent's mean tick wall time over a window, from its histogram.
tick_mean() {
	metrics
	_s0=$(awk '/^sidecar_governor_tick_duration_seconds_sum /{ print $2 }' "$SG_RUN/metrics.txt")
	_c0=$(awk '/^sidecar_governor_tick_duration_seconds_count /{ print $2 }' "$SG_RUN/metrics.txt")
	sleep "$1"
	metrics
	_s1=$(awk '/^sidecar_governor_tick_duration_seconds_sum /{ print $2 }' "$SG_RUN/metrics.txt")
	_c1=$(awk '/^sidecar_governor_tick_duration_seconds_count /{ print $2 }' "$SG_RUN/metrics.txt")
	sg_log "TIMING mean tick $2: $(awk -v a="$_s0" -v b="$_s1" -v c="$_c0" -v d="$_c1" 'BEGIN { if (d > c) printf "%.1f ms over %d ticks", (b - a) * 1000 / (d - c), d - c; else print "no ticks" }')"
}

sg_check "2 proxies governed (the gateway and the apps are not)" sg_wait 30 has '^sidecar_governor_proxies 2$'
sg_check 'discovery_source{source="cri"} 1' has '^sidecar_governor_discovery_source{source="cri"} 1$'
for p in "cart-a $UID_A $CID_A" "cart-b $UID_B $CID_B"; do
	# shellcheck disable=SC2086 # split into pod, uid, id
	set -- $p
	sg_check "quota series labelled shop/$1/istio-proxy" \
		grep -q "^sidecar_governor_cpu_quota_millicores{$(series shop "$1" istio-proxy "$2" "$3")} " "$SG_RUN/metrics.txt"
done
sg_check "no series for the gateway pod" sh -c "! grep -q -e ingressgateway -e $CID_G $SG_RUN/metrics.txt"
sg_check "no series for the app containers" sh -c "! grep -q 'container=\"cart\"' $SG_RUN/metrics.txt"
sg_log "metrics (per-proxy quota):"
grep '^sidecar_governor_cpu_quota_millicores{' "$SG_RUN/metrics.txt" | sed 's/^/    /'

sg_check "idle sidecar cart-a shrinks below 2 cores" sg_wait 30 sg_quota_below "$SA" 200000
sg_check "idle sidecar cart-b shrinks below 2 cores" sg_wait 30 sg_quota_below "$SB" 200000
sg_check "cart-b stops at its pod's cpu-min annotation (500m)" sg_wait 60 sg_file_is "$SB/cpu.max" "50000 100000"
sg_check "cart-a reaches the policy floor (100m)" sg_wait 60 sg_file_is "$SA/cpu.max" "10000 100000"
sg_expect "gateway untouched" "$(sg_cpu_max "$SG")" "200000 100000"
# Without GetContainerEvents (containerd 1.6) every tick lists the running containers.
tick_mean 10 "with CRI discovery (ListContainers every tick, 2 proxies)"

# A sidecar started after the agent: governed within a tick or two of its start.
echo idle >"$SG_RUN/ctl/cart-c"
sg_cri_pod shop cart-c "$UID_C" 3000 \
	--container "istio-proxy|2000|$SIDECAR proxy sidecar" \
	--container "cart|1000|/bin/app --mode idle" &
pod_up=$!
seen=""
deadline=$(($(sg_now_ms) + 60000))
while [ "$(sg_now_ms)" -lt "$deadline" ]; do
	if has 'pod="cart-c",container="istio-proxy"'; then
		seen=$(sg_now_ms)
		break
	fi
	usleep 100000
done
wait "$pod_up" || sg_fail "pod shop/cart-c did not start"
CID_C=$(sg_cri_cid cart-c istio-proxy)
SC=$(sg_cri_cg "$UID_C" "$CID_C")
started=$(sg_cri_started cart-c istio-proxy)
if [ -n "$seen" ] && [ -n "$started" ]; then
	dt=$((seen - started))
	sg_log "TIMING cart-c istio-proxy: in /metrics ${dt} ms after StartContainer returned (polled every 100 ms)"
	sg_check "new sidecar governed within 3 s of its start (${dt} ms)" [ "$dt" -le 3000 ]
else
	sg_fail "new sidecar cart-c not in /metrics within 60 s"
fi
since=$(grep 'governing proxy' "$SG_RUN/agent.log" | grep 'cart-c' | sed -n 's/.*since_start_ms=\([0-9]*\).*/\1/p' | head -n 1)
sg_log "TIMING cart-c istio-proxy: agent adopted it ${since:-?} ms after the runtime's started_at (agent log since_start_ms)"
sg_check "has 3 proxies" sg_wait 5 has '^sidecar_governor_proxies 3$'

# A sidecar removed: its series and journal entry gone within a tick or two.
sg_check "the journal holds cart-b's original (it was shrunk)" grep -q "$CID_B" "$SG_STATE/journal.json"
t0=$(sg_now_ms)
sg_cri rm-container "$CID_B" || sg_fail "rm-container cart-b failed"
t1=$(sg_now_ms)
if sg_wait 10 lacks 'pod="cart-b"'; then
	sg_log "TIMING cart-b istio-proxy: series gone $(($(sg_now_ms) - t1)) ms after RemoveContainer returned ($((t1 - t0)) ms for Stop+Remove)"
	sg_ok "removed sidecar's series gone"
else
	sg_fail "cart-b's series still in /metrics 10 s after its removal"
fi
sg_check "proxies back to 2" has '^sidecar_governor_proxies 2$'
sg_check "cart-b's journal entry pruned" sg_wait 5 sh -c "! grep -q $CID_B $SG_STATE/journal.json"

# The runtime goes away: procfs carries on, names kept, the source reported.
sg_cri_stop
sg_log "containerd stopped (its shims and the containers keep running)"
sg_check 'discovery_source{source="procfs"} 1 after containerd stopped' \
	sg_wait 20 has '^sidecar_governor_discovery_source{source="procfs"} 1$'
sg_check "still 2 proxies" has '^sidecar_governor_proxies 2$'
sg_check "names kept through the fallback (cart-a)" has 'pod="cart-a",container="istio-proxy"'
echo spin >"$SG_RUN/ctl/cart-a"
if sg_wait 30 sg_quota_at_least "$SA" 100000; then
	sg_ok "cart-a turned hot is given room through procfs discovery ($(sg_cpu_max "$SA"))"
else
	sg_fail "cart-a hot but its quota is $(sg_cpu_max "$SA") after 30 s without CRI"
fi
echo idle >"$SG_RUN/ctl/cart-a"
tick_mean 10 "with procfs discovery (rescan every 60 s, 2 proxies)"

# The runtime comes back (its containers survived): discovery returns to CRI.
sg_cri_daemon
sg_check 'discovery_source{source="cri"} 1 again once containerd answers' \
	sg_wait 40 has '^sidecar_governor_discovery_source{source="cri"} 1$'
sg_check "still 2 proxies, named (cart-c)" has 'pod="cart-c",container="istio-proxy"'
sg_check "proxies 2" has '^sidecar_governor_proxies 2$'
grep -E 'CRI|discovery' "$SG_RUN/agent.log" | grep -v 'governing proxy' | cut -c1-300 | sed 's/^/  agent| /' | tail -n 8

sg_trace_stop
sg_agent_stop TERM 15
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "cart-a restored on exit" "$(sg_cpu_max "$SA")" "200000 100000"
sg_expect "cart-c restored on exit" "$(sg_cpu_max "$SC")" "200000 100000"
# shellcheck disable=SC2086 # a list of directories
sg_untouched_snapshot $UNTOUCHED >"$SG_RUN/untouched.now"
if cmp -s "$SG_RUN/untouched.before" "$SG_RUN/untouched.now"; then
	sg_ok "gateway, app, pod and QoS cgroups unchanged ($(wc -l <"$SG_RUN/untouched.before") values)"
else
	sg_fail "changed: $(diff "$SG_RUN/untouched.before" "$SG_RUN/untouched.now" | grep '^[-+][^-+]' | tr '\n' ' ')"
fi
sg_cri_cleanup
sg_done
