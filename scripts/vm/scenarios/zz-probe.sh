#!/bin/sh
# scratch: how long does a memory.high write that reclaims page cache take on this kernel/TCG?
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh
sg_disk_up 192 || { sg_fail "no disk"; sg_done; }
sg_one_pod zz-probe
sg_spawn "$PROXY" proxy /bin/envoy --alloc-mib 24 --page-cache-mib 120 --page-cache-dir "$SG_DISK"
sg_wait 90 sg_log_has "$SG_RUN/log/proxy.log" "page cache file" || { sg_fail "no cache"; sg_done; }
sleep 1
sg_mem_show "$PROXY"
cur=$(sg_mem_current "$PROXY")
for d in 8 16 32 48; do
	t=$(( (cur - d * MIB) & ~4095 ))
	cur=$t
	echo "--- write memory.high=$((t / MIB)) MiB (reclaim ~$d MiB)"
	time sh -c "echo $t >$PROXY/memory.high" 2>&1
	sg_mem_show "$PROXY"
done
echo max >"$PROXY/memory.high"
# Refill (read the file again inside the cgroup), then one big step.
f=$(ls "$SG_DISK"/stand-in-*.cache)
sh -c "echo \$\$ >$PROXY/cgroup.procs; exec cat $f >/dev/null"
sg_mem_show "$PROXY"
cur=$(sg_mem_current "$PROXY")
t=$(( (cur / 2) & ~4095 ))
echo "--- write memory.high=$((t / MIB)) MiB (half)"
time sh -c "echo $t >$PROXY/memory.high" 2>&1
sg_mem_show "$PROXY"
echo max >"$PROXY/memory.high"
sh -c "echo \$\$ >$PROXY/cgroup.procs; exec cat $f >/dev/null"
# The agent with a 10 ms write timeout, probing down by half.
sg_policy_write <<'EOT'
interval: 1s
cpu:
  scaleDownAfter: 10m
memory:
  settleAfter: 2s
  scaleDownAfter: 2s
  probeInterval: 1s
  stepDown: 0.5
  writeTimeout: 10ms
  timeoutBackoff: 3s
EOT
sg_mem_trace_start "$PROXY" 500000 stat
sg_agent_start
sleep 25
sg_mem_trace_stop
sg_mem_trace_print
sg_log "errors: $(sg_http /metrics | grep -E '^sidecar_governor_(errors_total|conflicts_total|actions_total)' | tr '\n' ' ')"
grep -E 'memory|timed out|timeout' "$SG_RUN/agent.log" | cut -c1-300 | tail -n 20
sg_agent_stop TERM 10
sg_mem_show "$PROXY"
kill -9 $(cat "$PROXY/cgroup.procs") 2>/dev/null || true
sleep 1
sg_disk_down
sg_done
