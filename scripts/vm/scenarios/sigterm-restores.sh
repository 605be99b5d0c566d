#!/bin/sh
# shellcheck shell=dash
# After the agent has shrunk a proxy, SIGTERM makes it exit 0 within a few seconds with every
# proxy's cpu.max (and cpu.max.burst) back to what kubelet wrote.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_agent_start
if sg_wait 40 sg_quota_below "$PROXY_A" 200000; then
	sleep 2
	sg_ok "proxy A shrunk: $(sg_cpu_max "$PROXY_A")"
else
	sg_fail "proxy A not shrunk after 40 s ($(sg_cpu_max "$PROXY_A"))"
fi
sg_agent_stop TERM 10
sg_log "SIGTERM: exit ${SG_AGENT_RC} after ${SG_AGENT_STOP_MS} ms"
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check "agent exited within 5 s (${SG_AGENT_STOP_MS} ms)" [ "$SG_AGENT_STOP_MS" -le 5000 ]
sg_check_restored "after SIGTERM"
sg_check_untouched
sg_done
