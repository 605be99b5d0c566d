#!/bin/sh
# shellcheck shell=dash
# An idle proxy shrunk to the floor, then switched to spinning one thread, regains >= 1 core of
# quota within about 5 s, and then is not throttled much.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_trace_start
sg_agent_start
if ! sg_wait 90 sg_file_is "$PROXY_A/cpu.max" "10000 100000"; then
	sg_fail "proxy A never reached the floor (cpu.max '$(sg_cpu_max "$PROXY_A")' after 90 s)"
	sg_trace_stop
	sg_done
fi
sg_ok "proxy A at the floor: $(sg_cpu_max "$PROXY_A")"
sleep 2
echo spin >"$CTL_A"
t0=$(sg_now_ms)
if sg_wait 20 sg_quota_at_least "$PROXY_A" 100000; then
	dt=$(($(sg_now_ms) - t0))
	sg_check "proxy A regained >= 1 core ($(sg_cpu_max "$PROXY_A")) in ${dt} ms (<= 6000 ms)" [ "$dt" -le 6000 ]
else
	sg_fail "proxy A cpu.max is '$(sg_cpu_max "$PROXY_A")' 20 s after turning hot, want >= 100000"
fi
sleep 3
sg_window "$PROXY_A" 10
sg_log "proxy A hot over 10 s: usage ${W_USAGE_M}m, throttled ${W_THROTTLED}/${W_PERIODS}, cpu.max $(sg_cpu_max "$PROXY_A")"
sg_check "proxy A keeps >= 1 core ($(sg_cpu_max "$PROXY_A"))" sg_quota_at_least "$PROXY_A" 100000
sg_check "proxy A gets its core (${W_USAGE_M}m >= 700m, two spinners share 2 vCPUs)" [ "$W_USAGE_M" -ge 700 ]
sg_check "proxy A throttled in ${W_THROTTLED_PCT}% of periods (<= 15%)" [ "$W_THROTTLED_PCT" -le 15 ]
sg_trace_stop
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_check_untouched
sg_done
