#!/bin/sh
# shellcheck shell=dash
# sg-vm-group: cri
# Issue 8, case 2, real kernel and real containerd: two governed proxies in ONE pod, made
# through CRI (cri_driver, as kubelet does): an istio-proxy container running the stand-in envoy
# and a linkerd-proxy container running it as linkerd2-proxy, 500m each, an app of 500m: the
# pod's cpu.max is 1500m. The agent discovers through CRI, so both have a runtime identity and
# cpu.allowAboveLimit applies. One turns hot and is raised with the pod; then the other turns
# hot and is raised too. The pod's original is the value kubelet wrote, not the one after the
# first raise: after SIGTERM (exit 0) the pod holds exactly 1500m again and both containers
# their own originals; while running the pod never exceeds 1500m + 2 x (2000m - 500m).
# The runtime picks the container ids; the proxy whose id sorts first is raised first, so the
# second raised sorts after it (an agent that restores per container in key order puts back
# the second's idea of the pod last).
# Runs in the cri boot (scripts/vm-e2e.sh routes `sg-vm-group: cri` scenarios there).
set -eu
. /sg/lib.sh
. /sg/cri-lib.sh

POD_ORIG="150000 100000"
C_ORIG="50000 100000"
BOUND=4500
UID_P=$(sg_uid own-two-in-pod)
sg_cri_start
echo idle >"$SG_RUN/ctl/own-two-envoy"
echo idle >"$SG_RUN/ctl/own-two-linkerd"
sg_cri_pod mesh two-1 "$UID_P" 1500 --mount "$SG_RUN/ctl:/ctl" \
	--container "istio-proxy|500|/bin/envoy --mode idle --control /ctl/own-two-envoy" \
	--container "linkerd-proxy|500|/bin/linkerd2-proxy --mode idle --control /ctl/own-two-linkerd" \
	--container "app|500|/bin/app --mode idle"
POD=$SG_POD_DIR
CID_E=$(sg_cri_cid two-1 istio-proxy)
CID_L=$(sg_cri_cid two-1 linkerd-proxy)
CE=$(sg_cri_cg "$UID_P" "$CID_E")
CL=$(sg_cri_cg "$UID_P" "$CID_L")
APP=$(sg_cri_cg "$UID_P" "$(sg_cri_cid two-1 app)")
sg_check "an envoy runs in the istio-proxy container" sg_wait 10 sg_cri_runs "$CE" envoy
sg_check "a linkerd2-proxy runs in the linkerd-proxy container" sg_wait 10 sg_cri_runs "$CL" linkerd2-proxy
if [ "$(printf '%s\n%s\n' "$CID_E" "$CID_L" | sort | head -n 1)" = "$CID_E" ]; then
	N1=envoy C1=$CE CTL1=$SG_RUN/ctl/own-two-envoy N2=linkerd2-proxy C2=$CL CTL2=$SG_RUN/ctl/own-two-linkerd
else
	N1=linkerd2-proxy C1=$CL CTL1=$SG_RUN/ctl/own-two-linkerd N2=envoy C2=$CE CTL2=$SG_RUN/ctl/own-two-envoy
fi
sg_log "first raised: $N1 (${C1##*/}), then $N2 (${C2##*/}): ids in sort order"
for d in "$C1" "$C2" "$POD"; do sg_save_dir "$d"; done
sg_expect "pod cpu.max as kubelet wrote it" "$(sg_cpu_max "$POD")" "$POD_ORIG"
sg_expect "envoy cpu.max as runc wrote it from the CRI limit" "$(sg_cpu_max "$CE")" "$C_ORIG"
sg_expect "linkerd2-proxy cpu.max as runc wrote it from the CRI limit" "$(sg_cpu_max "$CL")" "$C_ORIG"
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
export SG_TRACE="$N1=$C1 $N2=$C2 POD=$POD"
sg_trace_start
echo spin >"$CTL1"
sg_agent_start --discovery cri --cri-endpoint "$SG_CRI_SOCK"
sg_check "envoy governed under its runtime names (mesh/two-1/istio-proxy)" \
	sg_wait 30 sg_cri_named mesh two-1 istio-proxy
sg_check "linkerd2-proxy governed under its runtime names (mesh/two-1/linkerd-proxy)" \
	sg_wait 10 sg_cri_named mesh two-1 linkerd-proxy
first() { sg_quota_at_least "$C1" 50001 && sg_quota_at_least "$POD" 150001; }
if sg_wait 30 first; then
	sleep 2
	sg_ok "$N1 raised: $(sg_quota_m "$C1")m, pod $(sg_quota_m "$POD")m"
else
	sg_fail "$N1 not raised above its limit within 30 s ($(sg_cpu_max "$C1"), pod $(sg_cpu_max "$POD"))"
fi
echo spin >"$CTL2"
if sg_wait 30 sg_quota_at_least "$C2" 50001; then
	sleep 3
	sg_ok "$N2 raised: $(sg_quota_m "$C2")m; $N1 $(sg_quota_m "$C1")m, pod $(sg_quota_m "$POD")m"
else
	sg_fail "$N2 not raised above its limit within 30 s ($(sg_cpu_max "$C2"), pod $(sg_cpu_max "$POD"))"
fi
sg_trace_stop
sg_agent_stop TERM 10
peak=$(sg_trace_max POD)
sg_check "the pod's quota never above ${BOUND}m (peak ${peak}m)" [ "$peak" -le "$BOUND" ]
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "pod cpu.max after SIGTERM (its true original)" "$(sg_cpu_max "$POD")" "$POD_ORIG"
for f in $SG_GOVERNED_FILES; do
	sg_expect "$N1 $f after SIGTERM" "$(cat "$C1/$f")" "$(sg_orig "$C1" "$f")"
	sg_expect "$N2 $f after SIGTERM" "$(cat "$C2/$f")" "$(sg_orig "$C2" "$f")"
done
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.now"
sg_check "app container unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_cri_cleanup
sg_done
