#!/bin/sh
# shellcheck shell=dash
# A proxy spinning one thread (about 1 core) keeps a quota of at least 1 core the whole time,
# and once things settle the kernel throttles it in few periods.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_trace_start
sg_agent_start
# Sample proxy B's quota every second for 20 s (scaleDownAfter is 3 s: the agent has had every
# chance to shrink it), and remember the lowest.
low=999999999
i=0
while [ $i -lt 20 ]; do
	q=$(sg_quota "$PROXY_B")
	if [ "$q" != max ] && [ "$q" -lt "$low" ]; then low=$q; fi
	sleep 1
	i=$((i + 1))
done
sg_window "$PROXY_B" 10
sg_log "proxy B over 10 s: usage ${W_USAGE_M}m, throttled ${W_THROTTLED}/${W_PERIODS} periods, cpu.max $(sg_cpu_max "$PROXY_B")"
q=$(sg_quota "$PROXY_B")
if [ "$q" != max ] && [ "$q" -lt "$low" ]; then low=$q; fi
if [ "$low" = 999999999 ]; then low=max; fi
sg_check "proxy B lowest quota ${low} >= 95000 (1 core, the spinner's use)" sg_quota_value_at_least "$low" 95000
sg_check "proxy B still gets its core (${W_USAGE_M}m >= 800m)" [ "$W_USAGE_M" -ge 800 ]
# A single thread cannot use 2 cores; what throttling shows at 2 cores comes from TCG charging
# a descheduled vCPU's gap to the task on a busy host. Allow some.
sg_check "proxy B throttled in ${W_THROTTLED_PCT}% of periods (<= 15%)" [ "$W_THROTTLED_PCT" -le 15 ]
sg_trace_stop
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_check_untouched
sg_done
