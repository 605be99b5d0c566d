#!/bin/sh
# shellcheck shell=dash
# Issue 4, real kernel: a proxy holding 100 MiB of anonymous memory gets memory.high placed at
# its peak + 25% (~125 MiB, settleAfter 5s), then grows to 300 MiB in 8 MiB steps (one a
# second, ~25 s). Anonymous memory without swap cannot be reclaimed: if memory.high fell behind,
# the kernel would throttle the proxy (memory.events `high` climbing, allocations stalling).
# Asserted from the kernel's files, sampled every 250 ms:
#   - memory.current never sits above memory.high for more than two ticks (2.5 s with sampling);
#   - memory.events `high` grows by at most 32. The kernel adds one `high` event per charge batch
#     (64 pages, 256 KiB) charged above memory.high, plus one per reclaim retry, so 32 is at most
#     8 MiB charged over the limit - less than one step of this growth - whereas a proxy left
#     throttled for two ticks at 8 MiB a second would log 64 or more; `max` and `oom_kill` stay 0;
#   - the allocations keep pace: the proxy reaches 300 MiB no later than an identical stand-in
#     growing at the same moment in an ungoverned app container (plus 25% and 3 s), and within 60 s;
#   - memory.high ends >= 300 MiB; SIGTERM puts back "max".
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

STEP=8
HIGH_EVENTS_MAX=32
sg_disk_down # an earlier scenario's disk image would take 192 MiB of this VM's RAM
sg_one_pod mem-growth
GO=$SG_RUN/ctl/grow
grow_args="--alloc-mib 100 --grow-to-mib 300 --grow-step-mib $STEP --grow-when $GO"
# shellcheck disable=SC2086 # word splitting of grow_args is meant
sg_spawn "$PROXY" proxy /bin/envoy $grow_args
PROXY_PID=$SG_PID
# shellcheck disable=SC2086
sg_spawn "$APP" app /bin/app $grow_args
export SG_TRACE="P=$PROXY"
if ! sg_wait 30 sg_log_has "$SG_RUN/log/proxy.log" "holding 100 MiB" ||
	! sg_wait 30 sg_log_has "$SG_RUN/log/app.log" "holding 100 MiB"; then
	sg_fail "the stand-ins did not allocate 100 MiB in 30 s"
	sg_done
fi
sg_save_dir "$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.mem.before"
sg_mem_show "$PROXY"

mkdir -p "$(dirname "$SG_POLICY")"
# CPU is left at its limit (scaleDownAfter 10m) so only memory control can slow the proxy.
cat >"$SG_POLICY" <<EOF
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
memory:
  settleAfter: 5s
EOF
sg_agent_start
t0=$(sg_now_ms)
if ! sg_wait 30 sg_mem_placed "$PROXY"; then
	sg_fail "memory.high not placed 30 s after the agent started"
	sg_done
fi
placed=$(sg_mem_high "$PROXY")
sg_log "memory.high placed after $((($(sg_now_ms) - t0) / 1000)) s:"
sg_mem_show "$PROXY"
sg_check "memory.high placed at ~125 MiB while the proxy holds 100 MiB ($(sg_mib "$placed") MiB in 115..145)" \
	sg_between "$((placed / MIB))" 115 145

events0=$(sg_mem_event "$PROXY" high)
sg_mem_trace_start "$PROXY" 250000
sleep 1
touch "$GO"
tg=$(sg_now_ms)
done_growing() {
	sg_log_has "$SG_RUN/log/proxy.log" "grown to 300 MiB" && sg_log_has "$SG_RUN/log/app.log" "grown to 300 MiB"
}
if ! sg_wait 90 done_growing; then
	sg_fail "growth to 300 MiB not finished 90 s after it started (proxy: $(grep 'grown to' "$SG_RUN/log/proxy.log" | tail -n 1); app: $(grep 'grown to' "$SG_RUN/log/app.log" | tail -n 1))"
fi
sleep 3
sg_mem_trace_stop
sg_mem_trace_print
sg_mem_show "$PROXY"

# Time to 300 MiB, as the stand-ins print it (seconds from their first growth step).
t300() { sed -n 's/^stand-in: grown to 300 MiB at \([0-9.]*\) s$/\1/p' "$1" | cut -d. -f1; }
tp=$(t300 "$SG_RUN/log/proxy.log")
ta=$(t300 "$SG_RUN/log/app.log")
sg_log "time from 100 to 300 MiB: proxy ${tp:-?} s, ungoverned app ${ta:-?} s (wall $((($(sg_now_ms) - tg) / 1000)) s incl. 3 s after)"
if [ -n "$tp" ] && [ -n "$ta" ]; then
	sg_check "the proxy's allocations kept pace: ${tp} s <= ${ta} s * 1.25 + 3 s, and <= 60 s" \
		[ "$tp" -le $((ta * 5 / 4 + 3)) -a "$tp" -le 60 ]
else
	sg_fail "no 'grown to 300 MiB' line (proxy '${tp:-}', app '${ta:-}')"
fi

# The longest stretch with memory.current above memory.high, from the 250 ms samples.
over_ms=$(awk '{ over = ($3 >= 0 && $2 > $3) }
	over && !start { start = $1 } over { last = $1 }
	!over && start { d = last - start + 250; if (d > m) m = d; start = 0 }
	END { if (start) { d = last - start + 250; if (d > m) m = d } print m + 0 }' "$SG_RUN/memtrace.log")
samples=$(wc -l <"$SG_RUN/memtrace.log")
over_n=$(awk '$3 >= 0 && $2 > $3 { n++ } END { print n + 0 }' "$SG_RUN/memtrace.log")
sg_check "memory.current above memory.high for at most two ticks (longest ${over_ms} ms <= 2500; $over_n of $samples samples above)" \
	[ "$over_ms" -le 2500 ]
events=$(($(sg_mem_event "$PROXY" high) - events0))
sg_check "memory.events high grew by $events during the growth (<= $HIGH_EVENTS_MAX)" [ "$events" -le "$HIGH_EVENTS_MAX" ]
sg_expect "memory.events max" "$(sg_mem_event "$PROXY" max)" 0
sg_expect "memory.events oom_kill" "$(sg_mem_event "$PROXY" oom_kill)" 0
high1=$(sg_mem_high "$PROXY")
sg_check "memory.high ends >= 300 MiB ($(sg_mib "$high1") MiB)" [ "$high1" != max -a "$high1" -ge $((300 * MIB)) ]
anon=$(sg_mem_stat "$PROXY" anon)
sg_check "the proxy holds its 300 MiB (anon $(sg_mib "$anon") MiB >= 300)" [ "$anon" -ge $((300 * MIB)) ]
sg_check "the proxy still runs (pid $PROXY_PID in its cgroup)" grep -qx "$PROXY_PID" "$PROXY/cgroup.procs"
sg_log "agent memory actions: $(grep -c ' memory cgroup=' "$SG_RUN/agent.log" || true) ($(grep ' memory cgroup=' "$SG_RUN/agent.log" | sed -n 's/.*reason="\([a-z_]*\)".*from="\([^"]*\)" to="\([^"]*\)".*/\1 \2->\3/p' | tr '\n' ',' | sed 's/,$//'))"
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.mem.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.mem.before" "$SG_RUN/untouched.mem.now"
sg_done
