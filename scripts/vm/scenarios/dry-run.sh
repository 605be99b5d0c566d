#!/bin/sh
# shellcheck shell=dash
# --dry-run: the agent decides and exports as usual but writes nothing: the idle proxy's cpu.max
# stays what kubelet wrote the whole time, while the metrics say dry run and count decisions.
set -eu
. /sg/lib.sh

sg_standard_pods idle spin
sg_policy 3s
sg_agent_start --dry-run
changed=0
i=0
while [ $i -lt 20 ]; do
	for d in $PROXIES; do
		[ "$(sg_cpu_max "$d")" = "$(sg_orig "$d" cpu.max)" ] || changed=$((changed + 1))
		[ "$(cat "$d/memory.high")" = "$(sg_orig "$d" memory.high)" ] || changed=$((changed + 1))
	done
	sleep 1
	i=$((i + 1))
done
sg_expect "proxy file values that differed from kubelet's over 20 s" "$changed" 0
sg_http /metrics >"$SG_RUN/metrics.txt"
sg_check "sidecar_governor_dry_run 1" grep -q '^sidecar_governor_dry_run 1$' "$SG_RUN/metrics.txt"
sg_log "actions: $(grep '^sidecar_governor_actions_total' "$SG_RUN/metrics.txt" | tr '\n' ' ')"
sg_check "a down decision on the idle proxy was counted" \
	sh -c "grep '^sidecar_governor_actions_total{' $SG_RUN/metrics.txt | grep -q 'direction=\"down\"'"
sg_log "state dir in dry run: $(find "$SG_STATE" -type f 2>/dev/null | tr '\n' ' ')"
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_check_untouched
sg_done
