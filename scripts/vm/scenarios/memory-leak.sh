#!/bin/sh
# shellcheck shell=dash
# Issue 11, real kernel: the leak shape. A proxy holds 100 MiB of real page cache (ext2 on a
# loop device) and 40 MiB of anonymous memory; once memory.high is placed and probing it down
# (the cache is what a probe asks the kernel to drop), its anon grows 2 MiB a second to 120 MiB
# (memory.growth: window 20s, minGrowth 16Mi). Asserted from the kernel's files (sampled every
# 250 ms), the agent's log and /metrics:
#   - memory.high was probed down before the growth (the control is live, not idle);
#   - the steady growth is found within 30 s of its start: the agent logs it and
#     sidecar_governor_memory_growing is 1, sidecar_governor_memory_growth_found_total 1;
#   - from then on, until the growth ends, memory.high never goes down (it is not squeezed);
#   - no memory.events max or oom_kill; the proxy holds its 120 MiB;
#   - once the growth stopped and the window forgot it, the agent logs the end and the gauge
#     is 0; SIGTERM puts back "max".
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

if ! sg_disk_up 160; then
	sg_fail "no block-backed file system (loop + ext2) in the VM"
	sg_done
fi
sg_one_pod mem-leak
GO=$SG_RUN/ctl/grow
mkdir -p "$(dirname "$GO")"
sg_spawn "$PROXY" proxy /bin/envoy --alloc-mib 40 --grow-to-mib 120 --grow-step-mib 2 \
	--grow-when "$GO" --page-cache-mib 100 --page-cache-dir "$SG_DISK"
PROXY_PID=$SG_PID
export SG_TRACE="P=$PROXY"
if ! sg_wait 90 sg_log_has "$SG_RUN/log/proxy.log" "page cache file" ||
	! sg_wait 30 sg_log_has "$SG_RUN/log/proxy.log" "holding 40 MiB"; then
	sg_fail "the stand-in did not fill its page cache and anon: $(tail -n 3 "$SG_RUN/log/proxy.log" | tr '\n' ' ')"
	sg_done
fi
sg_save_dir "$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.mem.before"
sg_mem_show "$PROXY"

mkdir -p "$(dirname "$SG_POLICY")"
cat >"$SG_POLICY" <<POLICY
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
memory:
  settleAfter: 3s
  scaleDownAfter: 3s
  probeInterval: 1s
  stepDown: 0.05
  growth:
    window: 20s
    minGrowth: 16Mi
POLICY
sg_mem_trace_start "$PROXY" 250000 stat
sg_agent_start
if ! sg_wait 30 sg_mem_placed "$PROXY"; then
	sg_fail "memory.high not placed 30 s after the agent started"
	sg_done
fi
placed=$(sg_mem_high "$PROXY")
# Probing down: memory.high below its placement.
if ! sg_wait 30 sg_mem_high_at_most "$PROXY" $((placed - 4 * MIB)); then
	sg_fail "memory.high not probed down from $(sg_mib "$placed") MiB within 30 s"
fi
sg_check "memory.high probed down before the growth ($(sg_mib "$placed") -> $(sg_mib "$(sg_mem_high "$PROXY")") MiB)" \
	sg_mem_high_at_most "$PROXY" $((placed - 4 * MIB))
sg_mem_show "$PROXY"

touch "$GO"
tg=$(sg_now_ms)
found() { sg_log_has "$SG_RUN/agent.log" "unreclaimable memory grows steadily"; }
if sg_wait 30 found; then
	sg_ok "steady growth found $((($(sg_now_ms) - tg) / 1000)) s after it started"
else
	sg_fail "steady growth not found within 30 s of its start"
fi
tf=$(sg_now_ms)
KEY=$(sg_http /metrics | awk '/^sidecar_governor_memory_growing\{/ { print $1 }' | head -n 1)
sg_expect "sidecar_governor_memory_growing while it grows" "$(sg_metric "$KEY")" 1
sg_expect "sidecar_governor_memory_growth_found_total" "$(sg_metric sidecar_governor_memory_growth_found_total)" 1
if ! sg_wait 90 sg_log_has "$SG_RUN/log/proxy.log" "grown to 120 MiB"; then
	sg_fail "growth to 120 MiB not finished 90 s after it started: $(grep 'grown to' "$SG_RUN/log/proxy.log" | tail -n 1)"
fi
te=$(sg_now_ms)
ended() { sg_log_has "$SG_RUN/agent.log" "unreclaimable memory stopped growing"; }
if ! sg_wait 60 ended; then
	sg_fail "the end of the growth not seen within 60 s of it"
fi
sg_expect "sidecar_governor_memory_growing after it stopped" "$(sg_metric "$KEY")" 0
sg_mem_trace_stop
sg_mem_trace_print
sg_mem_show "$PROXY"

# memory.high from the moment the growth was found to the moment it stopped: never lower.
t0=$(head -n 1 "$SG_RUN/memtrace.log" | cut -d' ' -f1)
drops=$(awk -v a="$tf" -v b="$te" '$1 >= a && $1 <= b && $3 >= 0 { if (last > 0 && $3 < last) n++; last = $3 } END { print n + 0 }' "$SG_RUN/memtrace.log")
sg_check "memory.high never lowered while the growth was reported (${drops} drops in t=$(((tf - t0) / 1000))..$(((te - t0) / 1000)) s)" [ "$drops" = 0 ]
sg_expect "memory.events max" "$(sg_mem_event "$PROXY" max)" 0
sg_expect "memory.events oom_kill" "$(sg_mem_event "$PROXY" oom_kill)" 0
anon=$(sg_mem_stat "$PROXY" anon)
sg_check "the proxy holds its 120 MiB (anon $(sg_mib "$anon") MiB >= 120)" [ "$anon" -ge $((120 * MIB)) ]
sg_check "the proxy still runs (pid $PROXY_PID in its cgroup)" grep -qx "$PROXY_PID" "$PROXY/cgroup.procs"
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.mem.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.mem.before" "$SG_RUN/untouched.mem.now"
sg_done
