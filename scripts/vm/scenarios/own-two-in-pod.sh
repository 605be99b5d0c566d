#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 2, real kernel: two governed proxies in ONE pod (an envoy and a linkerd2-proxy,
# 500m each, an app of 500m: the pod's cpu.max is 1500m) under cpu.allowAboveLimit. The first
# turns hot and is raised with the pod; then the second turns hot and is raised too. The pod's
# original is the value kubelet wrote, not the one after the first raise: after SIGTERM (exit 0)
# the pod holds exactly 1500m again and both containers their own originals; while running the
# pod never exceeds 1500m + 2 x (2000m - 500m).
# The container ids are chosen so that the second proxy sorts after the first (an agent that
# restores per container in key order puts back the second's idea of the pod last).
set -eu
. /sg/lib.sh

POD_ORIG="150000 100000"
C_ORIG="50000 100000"
BOUND=4500
POD=$(sg_pod cgroupfs burstable "$(sg_uid own-two-in-pod)")
C1=$(sg_container "$POD" containerd "0$(sg_cid own-two-envoy | cut -c2-64)" 500 100 256)
C2=$(sg_container "$POD" containerd "f$(sg_cid own-two-linkerd | cut -c2-64)" 500 100 256)
APP=$(sg_container "$POD" containerd "$(sg_cid own-two-app)" 500 250 256)
sg_pod_limits "$POD" 1500 450 768
CTL1=$SG_RUN/ctl/own-two-1
CTL2=$SG_RUN/ctl/own-two-2
echo spin >"$CTL1"
echo idle >"$CTL2"
sg_spawn "$C1" envoy /bin/envoy --mode idle --control "$CTL1"
sg_spawn "$C2" linkerd /usr/local/bin/linkerd2-proxy --mode idle --control "$CTL2"
sg_spawn "$APP" app /bin/app --mode idle
for d in "$C1" "$C2" "$POD"; do sg_save_dir "$d"; done
sg_expect "pod cpu.max as kubelet wrote it" "$(sg_cpu_max "$POD")" "$POD_ORIG"
sg_expect "envoy cpu.max as kubelet wrote it" "$(sg_cpu_max "$C1")" "$C_ORIG"
sg_expect "linkerd2-proxy cpu.max as kubelet wrote it" "$(sg_cpu_max "$C2")" "$C_ORIG"
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.before"

sg_policy_write <<'EOT'
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
  allowAboveLimit: true
memory:
  enabled: false
EOT
export SG_TRACE="envoy=$C1 linkerd=$C2 POD=$POD"
sg_trace_start
sg_agent_start
first() { sg_quota_at_least "$C1" 50001 && sg_quota_at_least "$POD" 150001; }
if sg_wait 30 first; then
	sleep 2
	sg_ok "envoy raised: $(sg_quota_m "$C1")m, pod $(sg_quota_m "$POD")m"
else
	sg_fail "envoy not raised above its limit within 30 s ($(sg_cpu_max "$C1"), pod $(sg_cpu_max "$POD"))"
fi
echo spin >"$CTL2"
if sg_wait 30 sg_quota_at_least "$C2" 50001; then
	sleep 3
	sg_ok "linkerd2-proxy raised: $(sg_quota_m "$C2")m; envoy $(sg_quota_m "$C1")m, pod $(sg_quota_m "$POD")m"
else
	sg_fail "linkerd2-proxy not raised above its limit within 30 s ($(sg_cpu_max "$C2"), pod $(sg_cpu_max "$POD"))"
fi
sg_trace_stop
sg_agent_stop TERM 10
peak=$(sg_trace_max POD)
sg_check "the pod's quota never above ${BOUND}m (peak ${peak}m)" [ "$peak" -le "$BOUND" ]
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "pod cpu.max after SIGTERM (its true original)" "$(sg_cpu_max "$POD")" "$POD_ORIG"
for f in $SG_GOVERNED_FILES; do
	sg_expect "envoy $f after SIGTERM" "$(cat "$C1/$f")" "$(sg_orig "$C1" "$f")"
	sg_expect "linkerd2-proxy $f after SIGTERM" "$(cat "$C2/$f")" "$(sg_orig "$C2" "$f")"
done
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.now"
sg_check "app container unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_done
