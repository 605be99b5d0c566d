#!/bin/sh
# shellcheck shell=dash
# Issue 8, case 7, real kernel: a memory.high write that times out is never taken as an outside
# change, and never becomes the original. With memory.writeTimeout 10ms (the policy's minimum)
# writes time out on this kernel under TCG while still landing: measured, a write that lowers
# memory.high below memory.current reclaims inside the writer and takes 90-180 ms (8-48 MiB of
# clean ext2 page cache), and even the placement (above the usage, nothing to reclaim) timed out.
# The proxy holds 48 MiB of page cache (ext2 on a loop device) and 24 MiB of anon memory; the
# agent places memory.high (~1.25 x 80 MiB), probes down by half (stepDown 0.5), and writes time
# out (errors_total{kind="write_timeout"} >= 1: a precondition, checked). Then the proxy's anon
# memory grows to 160 MiB, above every value the agent wrote, at 8 MiB a second. Asserted: the
# agent raises memory.high with it (>= 160 MiB; the growth completes within 60 s) - an agent
# that took its own timed-out value for the original caps memory.high there and the proxy
# stalls; conflicts_total stays 0; after SIGTERM (exit 0) memory.high is its true original
# ("max") and cpu.max its own.
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

GROW_TO=160
if ! sg_disk_up 96; then
	sg_fail "no block-backed file system (loop + ext2) in the VM"
	sg_done
fi
sg_one_pod own-memory-timeout
GO=$SG_RUN/ctl/own-grow
sg_spawn "$PROXY" proxy /bin/envoy --alloc-mib 24 --page-cache-mib 48 --page-cache-dir "$SG_DISK" \
	--grow-to-mib "$GROW_TO" --grow-step-mib 8 --grow-when "$GO"
PROXY_PID=$SG_PID
export SG_TRACE="P=$PROXY"
if ! sg_wait 90 sg_log_has "$SG_RUN/log/proxy.log" "holding 24 MiB"; then
	sg_fail "the stand-in did not fill its page cache and allocate 24 MiB in 90 s"
	sg_done
fi
sleep 1
sg_save_dir "$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.before"
sg_mem_show "$PROXY"
sg_policy_write <<'EOT'
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
memory:
  settleAfter: 2s
  scaleDownAfter: 2s
  probeInterval: 1s
  stepDown: 0.5
  writeTimeout: 10ms
  timeoutBackoff: 1s
EOT
sg_mem_trace_start "$PROXY" 500000 stat
sg_agent_start
timed_out() { [ "$(sg_metric_sum sidecar_governor_errors_total kind=write_timeout)" -ge 1 ]; }
if sg_wait 30 timed_out; then
	sg_ok "a memory.high write timed out (errors_total{kind=\"write_timeout\"} $(sg_metric_sum sidecar_governor_errors_total kind=write_timeout)); memory.high now $(sg_mib "$(sg_mem_high "$PROXY")") MiB"
else
	sg_fail "precondition: no memory write timed out within 30 s (memory.high '$(sg_mem_high "$PROXY")')"
fi
sleep 3 # further probes (and time-outs) down toward the floor
sg_mem_show "$PROXY"
low=$(sg_mem_high "$PROXY")
touch "$GO"
tg=$(sg_now_ms)
sg_log "growth to $GROW_TO MiB starts with memory.high at $(sg_mib "$low") MiB"
if sg_wait 60 sg_log_has "$SG_RUN/log/proxy.log" "grown to $GROW_TO MiB"; then
	sg_ok "the proxy grew to $GROW_TO MiB in $((($(sg_now_ms) - tg) / 1000)) s"
else
	sg_fail "the proxy did not grow to $GROW_TO MiB within 60 s ($(grep 'grown to' "$SG_RUN/log/proxy.log" | tail -n 1 | sed 's/^stand-in: //'); memory.high $(sg_mib "$(sg_mem_high "$PROXY")") MiB)"
fi
sleep 3
sg_mem_trace_stop
sg_mem_trace_print
sg_mem_show "$PROXY"
high=$(sg_mem_high "$PROXY")
sg_check "memory.high raised with the growth ($(sg_mib "$high") MiB >= $GROW_TO)" [ "$high" = max -o "$high" -ge $((GROW_TO * MIB)) ]
sg_expect "sidecar_governor_conflicts_total (timed-out writes are the agent's own)" "$(sg_metric_sum sidecar_governor_conflicts_total)" 0
sg_log "errors: $(sg_http /metrics | grep '^sidecar_governor_errors_total' | grep -v ' 0$' | tr '\n' ' ')"
sg_agent_stop TERM 15
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.own.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.own.before" "$SG_RUN/untouched.own.now"
kill "$PROXY_PID" 2>/dev/null || true
sg_wait 5 sh -c "! kill -0 $PROXY_PID 2>/dev/null" || true
sg_disk_down
sg_done
