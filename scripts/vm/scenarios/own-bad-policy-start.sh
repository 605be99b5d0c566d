#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 5, real kernel: a restart on an invalid policy (a typo in the ConfigMap, then a
# pod restart or node reboot) must not leave proxies at the agent's values with nothing to grow
# them. The agent shrinks an idle proxy (cpu.max and memory.high), is killed with SIGKILL, the
# policy file is made invalid (`cpu: {min: banana}`), and the agent is started again. It must
# exit non-zero, and before exiting put back every journaled original: asserted from the cgroup
# files after it exited.
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

sg_one_pod own-bad-policy
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
  settleAfter: 3s
EOT
sg_agent_start
shrunk() { sg_quota_below "$PROXY" 50001 && sg_mem_placed "$PROXY"; }
if sg_wait 45 shrunk; then
	sleep 1
	sg_ok "shrunk: cpu.max '$(sg_cpu_max "$PROXY")', memory.high $(sg_mib "$(sg_mem_high "$PROXY")") MiB"
else
	sg_fail "proxy not shrunk within 45 s (cpu.max '$(sg_cpu_max "$PROXY")', memory.high '$(sg_mem_high "$PROXY")')"
fi
sg_agent_stop KILL 5
sg_log "kill -9: proxy left at cpu.max '$(sg_cpu_max "$PROXY")', memory.high '$(sg_mem_high "$PROXY")'"
sg_policy_write <<'EOT'
interval: 1s
cpu: {min: banana}
EOT
sg_agent_start
sg_agent_wait_exit 20
sg_log "agent on the invalid policy: exit $SG_AGENT_RC"
sg_check "the agent refused the invalid policy: non-zero exit within 20 s (exit $SG_AGENT_RC)" \
	[ "$SG_AGENT_RC" != timeout -a "$SG_AGENT_RC" != 0 ]
sg_agent_log_last >"$SG_RUN/agent.last.log"
sg_check "it named the bad field (cpu.min)" grep -q "cpu.min" "$SG_RUN/agent.last.log"
sg_check_restored "after the refused start"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
sg_done
