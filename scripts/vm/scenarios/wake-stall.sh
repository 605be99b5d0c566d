#!/bin/sh
# shellcheck shell=dash
# Growth between ticks (issue 11): with a 5 s tick, an idle proxy at its 100m floor that
# starts spinning is raised by its PSI stall trigger within well under a second — before the
# next tick could have done it (ticks_total is unchanged across the raise) — first one step,
# then, on the second look one period later, to its busy level (>= 1 core). The kernel says
# so: cpu.max read from the cgroup, throttling from cpu.stat.
#   - every governed proxy is watched (sidecar_governor_stall_triggers = 2);
#   - the raise is counted as reason "stall" and a wake-up "raised";
#   - on SIGTERM the originals come back and nothing else was touched.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy_write <<EOF
interval: 5s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 3s
  stepDown: 0.9
EOF
sg_agent_start
if ! sg_wait 60 sg_file_is "$PROXY_A/cpu.max" "10000 100000"; then
	sg_fail "proxy A never reached the floor (cpu.max '$(sg_cpu_max "$PROXY_A")' after 60 s)"
	sg_agent_stop TERM 10
	sg_done
fi
sg_ok "proxy A at the floor: $(sg_cpu_max "$PROXY_A")"
sg_expect "proxies watched by a stall trigger" "$(sg_metric_sum sidecar_governor_stall_triggers)" 2

# Start the load just after a tick, so the next one is ~5 s away.
ticks0=$(sg_metric_sum sidecar_governor_ticks_total)
deadline=$(($(sg_now_ms) + 12000))
while [ "$(sg_metric_sum sidecar_governor_ticks_total)" = "$ticks0" ]; do
	[ "$(sg_now_ms)" -ge "$deadline" ] && break
	usleep 50000
done
ticks1=$(sg_metric_sum sidecar_governor_ticks_total)
sg_check "a tick seen (ticks_total $ticks0 -> $ticks1)" [ "$ticks1" -gt "$ticks0" ]
thr0=$(sg_stat "$PROXY_A" nr_throttled)
echo spin >"$CTL_A"
t0=$(sg_now_ms)
t_thr="" t_up="" q=""
while [ $(($(sg_now_ms) - t0)) -lt 4000 ]; do
	q=$(sg_quota "$PROXY_A")
	now=$(sg_now_ms)
	if [ -z "$t_thr" ] && [ "$(sg_stat "$PROXY_A" nr_throttled)" -gt "$thr0" ]; then
		t_thr=$now
	fi
	if [ "$q" != max ] && [ "$q" -gt 10000 ]; then
		t_up=$now
		break
	fi
	usleep 10000
done
ticks2=$(sg_metric_sum sidecar_governor_ticks_total)
if [ -z "$t_up" ]; then
	sg_fail "proxy A not raised within 4 s of turning hot (cpu.max '$(sg_cpu_max "$PROXY_A")')"
else
	t_thr=${t_thr:-$t_up}
	sg_log "reaction: load written at 0 ms, first throttled period seen at $((t_thr - t0)) ms, quota raised to $q at $((t_up - t0)) ms ($((t_up - t_thr)) ms after the first throttling; shell polling every ~10 ms plus its own cost under TCG)"
	sg_check "raised $((t_up - t0)) ms after the load was written (<= 1500 ms; the stand-in reads its control file every 200 ms)" [ $((t_up - t0)) -le 1500 ]
	sg_expect "no tick between the load and the raise (ticks_total)" "$ticks2" "$ticks1"
fi
# The second look, one period later, gives the busy level (the 2-core original, decayed).
if sg_wait 2 sg_quota_at_least "$PROXY_A" 100000; then
	sg_ok "proxy A at $(sg_cpu_max "$PROXY_A") after the second look"
else
	sg_fail "proxy A at $(sg_cpu_max "$PROXY_A") 2 s after the raise, want >= 1 core (its busy level)"
fi
ticks3=$(sg_metric_sum sidecar_governor_ticks_total)
sg_log "ticks_total $ticks1 at the load, $ticks3 after the second look"
sg_check "raises counted with reason stall" [ "$(sg_metric_sum sidecar_governor_actions_total resource=cpu reason=stall)" -ge 1 ]
sg_check "wake-ups counted as raised" [ "$(sg_metric_sum sidecar_governor_wakeups_total outcome=raised)" -ge 1 ]
sg_check "the journal holds proxy A's original" grep -q "$CID_A" "$SG_STATE/journal.json"
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_check_untouched
sg_done
