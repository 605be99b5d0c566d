#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 10, real kernel: a restart after a proxy was journaled (a CPU write) but before
# its memory.high was placed must still place it. cpu.scaleDownAfter 2s and memory.settleAfter
# 15s: the idle proxy (40 MiB of anonymous memory, 1 GiB limit) has its cpu.max lowered within
# a few seconds, and the agent is killed with SIGKILL before memory.high is placed. After the
# restart memory.high must be placed at about peak + headroom (the 40 MiB plus the 16 MiB
# margin: within 48..96 MiB), within settleAfter + 12 s of the restart, not left at the 1 GiB
# limit to creep down. SIGTERM (exit 0) puts back every original.
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

sg_one_pod own-placement-restart
sg_spawn "$PROXY" proxy /bin/envoy --mode idle --alloc-mib 40
sg_wait 20 sg_log_has "$SG_RUN/log/proxy.log" "holding 40 MiB" || sg_fail "the stand-in did not allocate 40 MiB"
sg_save_dir "$PROXY"
export SG_TRACE="P=$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.before"
sg_policy_write <<'EOT'
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 2s
  stepDown: 0.5
memory:
  settleAfter: 15s
EOT
sg_agent_start
if sg_wait 12 sg_quota_below "$PROXY" 200000; then
	sg_ok "cpu.max written: '$(sg_cpu_max "$PROXY")'"
else
	sg_fail "cpu.max not lowered within 12 s ('$(sg_cpu_max "$PROXY")')"
fi
sg_agent_stop KILL 5
sg_log "kill -9: cpu.max '$(sg_cpu_max "$PROXY")', memory.high '$(sg_mem_high "$PROXY")'"
sg_expect "memory.high not yet placed when the agent died" "$(sg_mem_high "$PROXY")" max
sg_agent_start
tr=$(sg_now_ms)
in_place() { sg_mem_high_at_most "$PROXY" $((96 * MIB)); }
if sg_wait 27 in_place; then
	h=$(sg_mem_high "$PROXY")
	sg_ok "memory.high placed at $(sg_mib "$h") MiB $((($(sg_now_ms) - tr) / 1000)) s after the restart"
	sg_check "placed at about peak + headroom ($(sg_mib "$h") MiB in 48..96)" sg_between "$((h / MIB))" 48 96
else
	sg_fail "memory.high not placed at peak + headroom within 27 s of the restart: '$(sg_mem_high "$PROXY")' ($(sg_mib "$(sg_mem_high "$PROXY")") MiB), the proxy uses $(sg_mib "$(sg_mem_current "$PROXY")") MiB"
fi
sg_mem_show "$PROXY"
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_done
