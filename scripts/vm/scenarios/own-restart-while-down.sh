#!/bin/sh
# shellcheck shell=dash
# Issue 8, cases 1 and 6 together (not in the issue's list), real kernel: the sidecar container
# restarts while the agent is down. With cpu.allowAboveLimit a hot proxy (limit 500m, pod 1000m)
# is raised with its pod; the agent is killed with SIGKILL; the container goes (its cgroup with
# its process) and a new one (new id, same limits, idle) takes its place; the agent is started
# again. The pod still holds the agent's last write and no governed container of it is left
# that the agent raised: the restarted agent must give the pod back (its cpu.max at the
# original within 10 s, before the new proxy is ever raised) and must not journal the raised pod
# as the new container's pod original. The new proxy then turns hot and is raised: the pod stays
# within original + (policy cpu.max - limit) = 2500m; after SIGTERM (exit 0) pod and container
# are exactly their originals.
set -eu
. /sg/lib.sh

POD_ORIG="100000 100000"
C_ORIG="50000 100000"
BOUND=2500
POD=$(sg_pod cgroupfs burstable "$(sg_uid own-restart-while-down)")
APP=$(sg_container "$POD" containerd "$(sg_cid own-rwd-app)" 500 250 256)
sg_pod_limits "$POD" 1000 350 512
sg_spawn "$APP" app /bin/app --mode idle
C=$(sg_container "$POD" containerd "$(sg_cid own-rwd-proxy-1)" 500 100 256)
sg_spawn "$C" proxy-1 /bin/envoy --mode spin
sg_expect "pod cpu.max as kubelet wrote it" "$(sg_cpu_max "$POD")" "$POD_ORIG"
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.before"
sg_policy_write <<'EOT'
interval: 1s
match:
  rescanInterval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
  allowAboveLimit: true
memory:
  enabled: false
EOT
export SG_TRACE="POD=$POD"
sg_trace_start
sg_agent_start
raised() { sg_quota_at_least "$C" 50001 && sg_quota_at_least "$POD" 100001; }
if sg_wait 30 raised; then
	sleep 2
	sg_ok "raised: container $(sg_quota_m "$C")m, pod $(sg_quota_m "$POD")m"
else
	sg_fail "not raised within 30 s (container $(sg_cpu_max "$C"), pod $(sg_cpu_max "$POD"))"
fi
sg_agent_stop KILL 5
sg_container_gone "$C" || sg_fail "could not remove the container's cgroup"
CTL=$SG_RUN/ctl/own-rwd-2
echo idle >"$CTL"
C=$(sg_container "$POD" containerd "$(sg_cid own-rwd-proxy-2)" 500 100 256)
sg_save_dir "$C"
sg_spawn "$C" proxy-2 /bin/envoy --mode idle --control "$CTL"
sg_log "kill -9, container restarted while the agent was down; pod cpu.max '$(sg_cpu_max "$POD")'"
sg_agent_start
if sg_wait 10 sg_file_is "$POD/cpu.max" "$POD_ORIG"; then
	sg_ok "the restarted agent gave the pod back: '$POD_ORIG'"
else
	sg_fail "pod cpu.max '$(sg_cpu_max "$POD")' 10 s after the restart, want its original '$POD_ORIG' (its raised container is gone)"
fi
echo spin >"$CTL"
if sg_wait 30 raised; then
	sleep 3
	sg_ok "the new proxy raised: container $(sg_quota_m "$C")m, pod $(sg_quota_m "$POD")m"
else
	sg_fail "the new proxy not raised within 30 s (container $(sg_cpu_max "$C"), pod $(sg_cpu_max "$POD"))"
fi
sg_trace_stop
peak=$(sg_trace_max POD)
sg_check "the pod's quota never above ${BOUND}m (peak ${peak}m)" [ "$peak" -le "$BOUND" ]
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "pod cpu.max after SIGTERM" "$(sg_cpu_max "$POD")" "$POD_ORIG"
for f in $SG_GOVERNED_FILES; do
	sg_expect "new container $f after SIGTERM" "$(cat "$C/$f")" "$(sg_orig "$C" "$f")"
done
sg_expect "new container cpu.max is kubelet's" "$(sg_orig "$C" cpu.max)" "$C_ORIG"
sg_untouched_snapshot "$APP" >"$SG_RUN/untouched.own.now"
sg_check "app container unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_done
