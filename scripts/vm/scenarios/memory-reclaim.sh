#!/bin/sh
# shellcheck shell=dash
# Issue 4, real kernel: an idle proxy with reclaimable page cache (a 150 MiB file written and
# read back on ext2 on a loop device, so real page cache, not tmpfs shmem) and a small anon set
# (24 MiB) has its memory.high placed and then lowered step by step (memory.shrinkWith: high);
# the kernel reclaims its cache while its anon memory stays untouched, and memory.high never
# goes below anon + the 16 MiB margin. SG_MEM_SHRINK=reclaim (memory-reclaim-api) runs the same
# with memory.reclaim: the cache goes while memory.high stays where it was placed.
set -eu
. /sg/lib.sh
. /sg/mem-lib.sh

SHRINK=${SG_MEM_SHRINK:-high}
MARGIN=$((16 * MIB))

if ! sg_disk_up 192; then
	sg_fail "no block-backed file system (loop + ext2) in the VM"
	sg_done
fi
sg_one_pod "mem-reclaim-$SHRINK"
sg_spawn "$PROXY" proxy /bin/envoy --alloc-mib 24 --page-cache-mib 150 --page-cache-dir "$SG_DISK"
PROXY_PID=$SG_PID
export SG_TRACE="P=$PROXY"
if ! sg_wait 90 sg_log_has "$SG_RUN/log/proxy.log" "page cache file"; then
	sg_fail "the stand-in did not fill its page cache in 90 s: $(tail -n 3 "$SG_RUN/log/proxy.log" | tr '\n' ' ')"
	sg_done
fi
sleep 1
sg_save_dir "$PROXY"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.mem.before"
current0=$(sg_mem_current "$PROXY")
steal0=$(($(sg_mem_stat "$PROXY" pgsteal_direct) + $(sg_mem_stat "$PROXY" pgsteal_kswapd)))
kswapd0=$(sg_mem_stat "$PROXY" pgscan_kswapd)
anon0=$(sg_mem_stat "$PROXY" anon)
file0=$(sg_mem_stat "$PROXY" file)
shmem0=$(sg_mem_stat "$PROXY" shmem)
sg_log "before the agent:"
sg_mem_show "$PROXY"
sg_check "the proxy's page cache is charged to it and not shmem (file $(sg_mib "$file0") MiB >= 140, shmem $(sg_mib "$shmem0") MiB <= 4)" \
	[ "$file0" -ge $((140 * MIB)) -a "$shmem0" -le $((4 * MIB)) ]
sg_expect "memory.high before the agent" "$(sg_mem_high "$PROXY")" max

mkdir -p "$(dirname "$SG_POLICY")"
cat >"$SG_POLICY" <<EOF
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 10m
memory:
  settleAfter: 5s
  scaleDownAfter: 5s
  probeInterval: 1s
  stepDown: 0.1
  shrinkWith: $SHRINK
EOF
sg_mem_trace_start "$PROXY" 1000000 stat
sg_agent_start
t0=$(sg_now_ms)
if ! sg_wait 30 sg_mem_placed "$PROXY"; then
	sg_fail "memory.high not placed 30 s after the agent started"
fi
placed=$(sg_mem_high "$PROXY")
sg_log "memory.high placed at $(sg_mib "$placed") MiB after $((($(sg_now_ms) - t0) / 1000)) s (peak $(sg_mib "$current0") MiB + 25%)"

# Shrinking is done when the cache is mostly gone and nothing changed for 4 s.
settled() {
	_f=$(sg_mem_stat "$PROXY" file)
	_k="$(sg_mem_high "$PROXY") $(($(sg_mem_current "$PROXY") / MIB))"
	if [ "$_f" -le $((file0 / 4)) ] && [ "$_k" = "${_last_k:-}" ]; then
		_same=$((${_same:-0} + 1))
	else
		_same=0
	fi
	_last_k=$_k
	[ "$_same" -ge 8 ]
}
if ! sg_wait 90 settled; then
	sg_fail "memory did not settle 90 s after placement (file $(sg_mib "$(sg_mem_stat "$PROXY" file)") MiB of $(sg_mib "$file0"))"
fi
dt=$((($(sg_now_ms) - t0) / 1000))
sg_mem_trace_stop
sg_mem_trace_print
high1=$(sg_mem_high "$PROXY")
current1=$(sg_mem_current "$PROXY")
anon1=$(sg_mem_stat "$PROXY" anon)
file1=$(sg_mem_stat "$PROXY" file)
stolen=$((($(sg_mem_stat "$PROXY" pgsteal_direct) + $(sg_mem_stat "$PROXY" pgsteal_kswapd) - steal0) * 4096))
kswapd=$(($(sg_mem_stat "$PROXY" pgscan_kswapd) - kswapd0))
sg_log "after ${dt} s:"
sg_mem_show "$PROXY"

sg_check "page cache reclaimed: file $(sg_mib "$file0") -> $(sg_mib "$file1") MiB (<= 25%)" [ "$file1" -le $((file0 / 4)) ]
sg_check "the kernel reclaimed $(sg_mib "$stolen") MiB from the cgroup (memory.stat pgsteal; >= 100 MiB), none by kswapd ($kswapd pages scanned)" \
	[ "$stolen" -ge $((100 * MIB)) -a "$kswapd" -eq 0 ]
sg_check "memory.current $(sg_mib "$current0") -> $(sg_mib "$current1") MiB (<= half)" [ "$current1" -le $((current0 / 2)) ]
d=$((anon1 - anon0))
[ "$d" -lt 0 ] && d=$((-d))
sg_check "anon untouched: $(sg_mib "$anon0") -> $(sg_mib "$anon1") MiB (within 2 MiB)" [ "$d" -le $((2 * MIB)) ]
sg_check "the proxy still runs (pid $PROXY_PID in its cgroup)" grep -qx "$PROXY_PID" "$PROXY/cgroup.procs"
sg_expect "memory.events oom_kill" "$(sg_mem_event "$PROXY" oom_kill)" 0
sg_expect "memory.events max" "$(sg_mem_event "$PROXY" max)" 0
# memory.high, sampled every second while shrinking, never below anon + margin.
low=$(awk -v m="$MARGIN" '$3 >= 0 && $3 < $7 + m { n++ } END { print n + 0 }' "$SG_RUN/memtrace.log")
samples=$(wc -l <"$SG_RUN/memtrace.log")
sg_check "memory.high never below anon + 16 MiB ($low of $samples samples below)" [ "$low" -eq 0 ]
if [ "$SHRINK" = high ]; then
	sg_check "memory.high lowered well below the initial usage: $(sg_mib "$high1") MiB <= half of $(sg_mib "$current0") MiB" \
		[ "$high1" != max -a "$high1" -le $((current0 / 2)) ]
	sg_check "memory.high >= anon + margin now ($(sg_mib "$high1") >= $(sg_mib $((anon1 + MARGIN))) MiB)" [ "$high1" -ge $((anon1 + MARGIN)) ]
else
	# memory.reclaim leaves no limit behind: memory.high stays at its placement all along.
	changed=$(awk -v p="$placed" '$3 >= 0 && $3 != p { n++ } END { print n + 0 }' "$SG_RUN/memtrace.log")
	sg_check "memory.high stayed at its placement $(sg_mib "$placed") MiB ($changed samples differ, now $(sg_mib "$high1") MiB)" \
		[ "$changed" -eq 0 -a "$high1" = "$placed" ]
	sg_log "the agent logged $(grep -c 'to="-' "$SG_RUN/agent.log" || true) memory.reclaim writes"
fi
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_check_restored "after SIGTERM"
sg_untouched_snapshot "$APP" "$POD" >"$SG_RUN/untouched.mem.now"
sg_check "app and pod cgroups unchanged" cmp -s "$SG_RUN/untouched.mem.before" "$SG_RUN/untouched.mem.now"
# Give the image's RAM back to the scenarios that follow.
kill "$PROXY_PID" 2>/dev/null || true
sg_wait 5 sh -c "! kill -0 $PROXY_PID 2>/dev/null" || true
sg_disk_down
sg_done
