#!/bin/sh
# shellcheck shell=dash
# After a shrink, kill -9 the agent (no chance to restore), start it again, let it run, then
# SIGTERM: the originals come back, so the restarted agent took them from its journal and not
# from the shrunken values it found in cpu.max.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_agent_start
if sg_wait 40 sg_quota_below "$PROXY_A" 200000; then
	sleep 3
else
	sg_fail "proxy A not shrunk after 40 s ($(sg_cpu_max "$PROXY_A"))"
fi
sg_agent_stop KILL 5
shrunk=$(sg_cpu_max "$PROXY_A")
sg_log "kill -9: exit $SG_AGENT_RC; proxy A left at '$shrunk'"
sg_check "proxy A left shrunk by the killed agent ($shrunk)" sg_quota_below "$PROXY_A" 200000
sg_agent_start
sleep 8
sg_check "restarted agent still running" sh -c "! test -s $SG_RUN/agent.rc"
sg_log "restarted agent has proxy A at '$(sg_cpu_max "$PROXY_A")'"
sg_agent_stop TERM 10
sg_expect "restarted agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after restart and SIGTERM"
sg_check_untouched
sg_done
