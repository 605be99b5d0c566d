#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 4, real kernel: switching to dry run puts back what the agent changed. The agent
# shrinks an idle proxy (cpu.max toward its floor, memory.high placed); then the policy file is
# rewritten with dryRun: true (hot reload, as a ConfigMap edit). Asserted: within a few ticks the
# proxy's cpu.max and memory.high are back at their originals and stay there;
# actions_total{direction="restore",reason="dry_run"} counts it; SIGTERM, still in dry run,
# exits 0 with everything original. SG_OWN_DRY_RUN_EXIT=1 (own-dry-run-exit) instead sends
# SIGTERM as soon as the dry-run policy is live: the exit restores what the journal holds.
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

EXIT_AT_ONCE=${SG_OWN_DRY_RUN_EXIT:-0}
sg_one_pod own-dry-run
sg_spawn "$PROXY" proxy /bin/envoy --mode idle --alloc-mib 40
sg_wait 20 sg_log_has "$SG_RUN/log/proxy.log" "holding 40 MiB" || sg_fail "the stand-in did not allocate 40 MiB"
sg_save_dir "$PROXY"
export SG_TRACE="P=$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.before"

policy() {
	sg_policy_write <<EOT
interval: 1s
dryRun: $1
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 2s
  stepDown: 0.5
memory:
  settleAfter: 3s
EOT
}
policy false
sg_agent_start --config-poll-seconds 2
shrunk() { sg_quota_below "$PROXY" 50001 && sg_mem_placed "$PROXY"; }
if sg_wait 45 shrunk; then
	sg_ok "shrunk: cpu.max '$(sg_cpu_max "$PROXY")', memory.high $(sg_mib "$(sg_mem_high "$PROXY")") MiB"
else
	sg_fail "proxy not shrunk within 45 s (cpu.max '$(sg_cpu_max "$PROXY")', memory.high '$(sg_mem_high "$PROXY")')"
fi
policy true
tp=$(sg_now_ms)
sg_log "policy rewritten with dryRun: true"
dry() { [ "$(sg_metric_sum sidecar_governor_dry_run)" = 1 ]; }
sg_check "the dry-run policy is live within 15 s (sidecar_governor_dry_run 1)" sg_wait 15 dry
sg_log "dry run live after $(($(sg_now_ms) - tp)) ms: cpu.max '$(sg_cpu_max "$PROXY")', memory.high '$(sg_mem_high "$PROXY")'"
original() {
	sg_file_is "$PROXY/cpu.max" "$(sg_orig "$PROXY" cpu.max)" &&
		sg_file_is "$PROXY/memory.high" "$(sg_orig "$PROXY" memory.high)"
}
if [ "$EXIT_AT_ONCE" = 1 ]; then
	sg_agent_stop TERM 10
	sg_expect "agent exit code on SIGTERM in dry run" "$SG_AGENT_RC" 0
	sg_check_restored "after SIGTERM in dry run"
else
	if sg_wait 10 original; then
		sg_ok "originals back $(($(sg_now_ms) - tp)) ms after the policy change"
	else
		sg_fail "10 s into dry run the proxy is still at the agent's values: cpu.max '$(sg_cpu_max "$PROXY")' (original '$(sg_orig "$PROXY" cpu.max)'), memory.high '$(sg_mem_high "$PROXY")' (original '$(sg_orig "$PROXY" memory.high)')"
	fi
	differ=0 i=0
	while [ $i -lt 10 ]; do
		original || differ=$((differ + 1))
		usleep 500000
		i=$((i + 1))
	done
	sg_check "the originals stay in dry run ($differ of 10 samples over 5 s differ)" [ "$differ" -eq 0 ]
	n=$(sg_metric_sum sidecar_governor_actions_total direction=restore reason=dry_run)
	sg_check "actions_total{direction=\"restore\",reason=\"dry_run\"} counted ($n >= 1)" [ "$n" -ge 1 ]
	sg_agent_stop TERM 10
	sg_expect "agent exit code on SIGTERM in dry run" "$SG_AGENT_RC" 0
	sg_check_restored "after SIGTERM in dry run"
fi
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_done
