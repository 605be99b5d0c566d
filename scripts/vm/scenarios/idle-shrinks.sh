#!/bin/sh
# shellcheck shell=dash
# An idle proxy's cpu.max falls to the policy floor (100m = "10000 100000", period kept) within
# about 45 s, and stays low; the hot proxy beside it is not shrunk below its use.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_trace_start
t0=$(sg_now_ms)
sg_agent_start
if sg_wait 60 sg_file_is "$PROXY_A/cpu.max" "10000 100000"; then
	dt=$((($(sg_now_ms) - t0) / 1000))
	sg_check "idle proxy A reached the floor '10000 100000' in ${dt}s (<= 45s)" [ "$dt" -le 45 ]
	# It stays low. A few throttled periods at the floor make the controller step up at once
	# (fast up, as it should; under TCG on a busy host an idle stand-in does get throttled at
	# 100m), then it decays again: no runaway back towards the original 2 cores.
	high=0
	i=0
	while [ $i -lt 10 ]; do
		q=$(sg_quota "$PROXY_A")
		[ "$q" -gt "$high" ] && high=$q
		sleep 1
		i=$((i + 1))
	done
	sg_log "proxy A in the 10 s after reaching the floor: highest quota $high, throttled periods $(sg_stat "$PROXY_A" nr_throttled) in total"
	sg_check "proxy A stays low (highest quota $high <= 100000 in the next 10 s)" [ "$high" -le 100000 ]
else
	sg_fail "idle proxy A cpu.max is '$(sg_cpu_max "$PROXY_A")' after 60 s, want '10000 100000'"
fi
sg_check "hot proxy B quota >= 1 core ($(sg_cpu_max "$PROXY_B"))" sg_quota_at_least "$PROXY_B" 100000
sg_check "the journal holds something in $SG_STATE" [ -n "$(ls -A "$SG_STATE" 2>/dev/null)" ]
sg_trace_stop
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_untouched
sg_done
