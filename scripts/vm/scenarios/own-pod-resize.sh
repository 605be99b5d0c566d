#!/bin/sh
# shellcheck shell=dash
# sg-vm-group: cri
# Issue 8, case 3, real kernel and real containerd: the pod cgroup's cpu.max is an owned value
# too. The pod is made through CRI (cri_driver, as kubelet does: a sandbox, an istio-proxy
# container of 500m running the stand-in envoy, spinning, and an app of 500m; the pod's cpu.max
# 1000m) and the agent discovers through CRI, so the proxy has a runtime identity and
# cpu.allowAboveLimit applies: the proxy is raised above its limit with its pod. Then, while the
# agent runs, the pod's cpu.max is written from outside ("400000 100000", as kubelet's in-place
# resize of the pod does). Asserted: sidecar_governor_conflicts_total counts it; the agent never
# puts the pod below the resized value afterwards; after SIGTERM (exit 0) the pod holds the
# resized value, not the stale original, and the container its own original.
# Runs in the cri boot (scripts/vm-e2e.sh routes `sg-vm-group: cri` scenarios there).
set -eu
. /sg/lib.sh
. /sg/cri-lib.sh

RESIZED="400000 100000"
C_ORIG="50000 100000"
UID_P=$(sg_uid own-pod-resize)
sg_cri_start
sg_cri_mesh_pod resize-1 "$UID_P"
sg_expect "proxy cpu.max as runc wrote it from the CRI limit" "$(sg_cpu_max "$C")" "$C_ORIG"
sg_save_dir "$C"
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.before"

sg_policy_write <<'EOT'
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
  allowAboveLimit: true
  conflictBackoff: 5s
memory:
  enabled: false
EOT
export SG_TRACE="P=$C POD=$POD"
sg_trace_start
sg_agent_start --discovery cri --cri-endpoint "$SG_CRI_SOCK"
sg_check "the proxy is governed under its runtime names (mesh/resize-1/istio-proxy)" \
	sg_wait 30 sg_cri_named mesh resize-1 istio-proxy
# Write while the agent is not itself writing the pod (no compare-and-swap on cgroup files):
# raised, and the pod's cpu.max unchanged for 3 s.
raised_steady() { sg_quota_at_least "$POD" 100001 && sg_unchanged_for "$POD/cpu.max" 3000; }
if sg_wait 45 raised_steady; then
	sg_ok "pod raised with the proxy and steady: pod '$(sg_cpu_max "$POD")', proxy '$(sg_cpu_max "$C")'"
else
	sg_fail "pod not raised and steady within 45 s (pod '$(sg_cpu_max "$POD")', proxy '$(sg_cpu_max "$C")')"
fi
c0=$(sg_metric_sum sidecar_governor_conflicts_total)
echo "$RESIZED" >"$POD/cpu.max"
tw=$(sg_now_ms)
sg_log "wrote '$RESIZED' to the pod's cpu.max (conflicts so far: $c0)"
conflict() { [ "$(sg_metric_sum sidecar_governor_conflicts_total)" -gt "$c0" ]; }
if sg_wait 8 conflict; then
	sg_ok "the pod change was counted: conflicts_total $(sg_metric_sum sidecar_governor_conflicts_total) after $(($(sg_now_ms) - tw)) ms"
else
	sg_fail "sidecar_governor_conflicts_total did not increase within 8 s of the pod resize ($(sg_metric_sum sidecar_governor_conflicts_total), was $c0)"
fi
# Through the back-off and after it: the pod never below the resized value.
low=0 seen=""
while [ $(($(sg_now_ms) - tw)) -lt 10000 ]; do
	if ! sg_quota_at_least "$POD" 400000; then
		low=$((low + 1))
		seen=$(sg_cpu_max "$POD")
	fi
	usleep 250000
done
sg_check "the agent never put the pod below the resized value ($low samples below${seen:+, e.g. $seen})" [ "$low" -eq 0 ]
sg_agent_stop TERM 10
sg_trace_stop
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "pod cpu.max after SIGTERM (the resized value)" "$(sg_cpu_max "$POD")" "$RESIZED"
for f in $SG_GOVERNED_FILES; do
	sg_expect "proxy $f after SIGTERM" "$(cat "$C/$f")" "$(sg_orig "$C" "$f")"
done
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.now"
sg_check "app container unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_cri_cleanup
sg_done
