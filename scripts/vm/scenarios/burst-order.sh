#!/bin/sh
# shellcheck shell=dash
# A proxy whose cpu.max.burst was set (150 ms of burst on a 200 ms quota): the kernel refuses a
# quota below the burst (EINVAL), so shrinking must lower the burst first, and restoring must raise
# the quota before the burst. Only a real kernel enforces this.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
echo 150000 >"$PROXY_A/cpu.max.burst"
sg_save_dir "$PROXY_A"
sg_expect "proxy A burst set" "$(cat "$PROXY_A/cpu.max.burst")" 150000
sg_policy 3s
sg_trace_start
sg_agent_start
if sg_wait 60 sg_quota_below "$PROXY_A" 100000; then
	sg_ok "proxy A shrunk below its old burst: cpu.max '$(sg_cpu_max "$PROXY_A")', burst $(cat "$PROXY_A/cpu.max.burst")"
else
	sg_fail "proxy A not shrunk below 1 core in 60 s: cpu.max '$(sg_cpu_max "$PROXY_A")', burst $(cat "$PROXY_A/cpu.max.burst")"
fi
sg_check "burst <= quota" [ "$(cat "$PROXY_A/cpu.max.burst")" -le "$(sg_quota "$PROXY_A")" ]
sg_http /metrics >"$SG_RUN/metrics.txt"
sg_expect "sidecar_governor_errors_total series (EINVAL would count)" \
	"$(grep '^sidecar_governor_errors_total' "$SG_RUN/metrics.txt" | grep -v ' 0$' | tr '\n' ' ')" ""
sg_trace_stop
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_check_untouched
sg_done
