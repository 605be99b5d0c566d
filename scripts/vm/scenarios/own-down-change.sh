#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 6, real kernel: a change made while the agent is down is an outside change, not
# the agent's own write. The agent shrinks an idle proxy (original "200000 100000", 2 cores), is killed
# with SIGKILL, and "300000 100000" is written to the proxy's cpu.max while it is down (a kubelet
# resize to 3 cores; the policy's cpu.max is 4 cores, so 3 is within every bound). The agent is
# started again (cpu.conflictBackoff 5s). Asserted: conflicts_total >= 1
# after the restart; the value is left alone through the back-off; the agent then governs within
# it (the idle proxy shrinks again, never above 3000m); after SIGTERM (exit 0) cpu.max is exactly
# "300000 100000".
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

RESIZED="300000 100000"
sg_one_pod own-down-change
sg_spawn "$PROXY" proxy /bin/envoy --mode idle
sg_save_dir "$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.before"
sg_policy_write <<'EOT'
interval: 1s
cpu:
  min: 100m
  max: "4"
  scaleDownAfter: 2s
  stepDown: 0.5
  conflictBackoff: 5s
memory:
  enabled: false
EOT
sg_agent_start
if sg_wait 40 sg_quota_below "$PROXY" 100001; then
	sleep 1
	sg_ok "shrunk: cpu.max '$(sg_cpu_max "$PROXY")'"
else
	sg_fail "proxy not shrunk within 40 s (cpu.max '$(sg_cpu_max "$PROXY")')"
fi
sg_agent_stop KILL 5
echo "$RESIZED" >"$PROXY/cpu.max"
sg_log "kill -9, then '$RESIZED' written to the proxy's cpu.max while the agent is down"
export SG_TRACE="P=$PROXY"
sg_trace_start
sg_agent_start
ts=$(sg_now_ms)
# The back-off (5 s from the first tick): sampled for 4 s after the start.
changed=0 seen=""
while [ $(($(sg_now_ms) - ts)) -lt 4000 ]; do
	v=$(sg_cpu_max "$PROXY")
	if [ "$v" != "$RESIZED" ]; then
		changed=$((changed + 1))
		seen=$v
	fi
	usleep 250000
done
sg_check "the restarted agent left the new value alone for 4 s ($changed samples differ${seen:+, e.g. $seen})" [ "$changed" -eq 0 ]
n=$(sg_metric_sum sidecar_governor_conflicts_total)
sg_check "the change made while down was counted: conflicts_total $n >= 1" [ "$n" -ge 1 ]
if sg_wait 25 sg_quota_below "$PROXY" 300000; then
	sleep 2
	sg_ok "governed within the new value after the back-off: cpu.max '$(sg_cpu_max "$PROXY")'"
else
	sg_fail "the idle proxy was not shrunk below 300000 within 29 s of the restart (cpu.max '$(sg_cpu_max "$PROXY")')"
fi
sg_trace_stop
peak=$(sg_trace_max P)
sg_check "never above the adopted 3000m after the restart (peak ${peak}m)" [ "$peak" -le 3000 ]
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_expect "proxy cpu.max after SIGTERM (the value written while the agent was down)" "$(sg_cpu_max "$PROXY")" "$RESIZED"
sg_expect "proxy cpu.max.burst after SIGTERM" "$(cat "$PROXY/cpu.max.burst")" "$(sg_orig "$PROXY" cpu.max.burst)"
sg_expect "proxy memory.high after SIGTERM" "$(sg_mem_high "$PROXY")" "$(sg_orig "$PROXY" memory.high)"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_done
