#!/bin/sh
# shellcheck shell=dash
# The harness itself, without the agent: cgroup2 with the cpu, memory and pids controllers, PSI
# readable, cpu.max throttling a spinner as expected, the files the agent needs present, the
# kubelet-shaped hierarchy built in both driver shapes, stand-ins named as the agent expects.
set -eu
. /sg/lib.sh

sg_check "cgroup2 mounted" grep -q ' /sys/fs/cgroup cgroup2 ' /proc/mounts
for c in cpu memory pids; do
	sg_check "root offers $c" grep -qw "$c" "$CG/cgroup.controllers"
done
sg_check "PSI enabled (/proc/pressure/cpu)" grep -q '^some avg10=' /proc/pressure/cpu

sg_standard_pods idle spin
for d in "$PROXY_A" "$PROXY_B" "$APP_A" "$APP_B"; do
	for f in cpu.max cpu.max.burst cpu.stat cpu.pressure memory.pressure memory.high memory.max \
		memory.reclaim memory.events memory.stat memory.current; do
		[ -e "$d/$f" ] || sg_fail "missing ${d#"$CG"/}/$f"
	done
done
sg_expect "proxy A cpu.max" "$(sg_cpu_max "$PROXY_A")" "200000 100000"
sg_expect "pod A cpu.max" "$(sg_cpu_max "$POD_A")" "300000 100000"
sg_expect "pod B cpu.max" "$(sg_cpu_max "$POD_B")" "250000 100000"
sg_expect "proxy A memory.max" "$(cat "$PROXY_A/memory.max")" "1073741824"
sg_expect "proxy cpu.weight (100m request)" "$(cat "$PROXY_A/cpu.weight")" "4"
sg_check "cpu.pressure has some/full totals" grep -q '^full avg10=.* total=' "$PROXY_A/cpu.pressure"

# comm and /proc/PID/cgroup as the agent will see them
n=0
for p in $(cat "$PROXY_A/cgroup.procs"); do
	n=$((n + 1))
	sg_log "proxy A pid $p comm=$(cat "/proc/$p/comm") cgroup=$(cat "/proc/$p/cgroup")"
done
sg_expect "processes in proxy A" "$n" 2
sg_check "an envoy in proxy A" sh -c "for p in \$(cat $PROXY_A/cgroup.procs); do grep -qx envoy /proc/\$p/comm && exit 0; done; exit 1"
p=$(head -n 1 "$PROXY_B/cgroup.procs")
sg_expect "proxy B /proc/PID/cgroup" "$(cat "/proc/$p/cgroup")" "0::${PROXY_B#"$CG"}"

# The spinner in proxy B uses about one core when unthrottled.
u0=$(sg_stat "$PROXY_B" usage_usec)
t0=$(sg_now_ms)
sleep 3
u1=$(sg_stat "$PROXY_B" usage_usec)
t1=$(sg_now_ms)
m=$(((u1 - u0) / (t1 - t0)))
sg_log "spinner unthrottled: ${m}m"
sg_check "unthrottled spinner uses >= 700m (${m}m)" [ "$m" -ge 700 ]

# cpu.max 20000 100000 holds it near 200m and throttles it.
echo "20000 100000" >"$PROXY_B/cpu.max"
sleep 1
u0=$(sg_stat "$PROXY_B" usage_usec)
th0=$(sg_stat "$PROXY_B" nr_throttled)
t0=$(sg_now_ms)
sleep 3
u1=$(sg_stat "$PROXY_B" usage_usec)
th1=$(sg_stat "$PROXY_B" nr_throttled)
t1=$(sg_now_ms)
m=$(((u1 - u0) / (t1 - t0)))
sg_log "spinner at 20000/100000: ${m}m, throttled $((th1 - th0)) periods"
sg_check "throttled spinner near 200m (${m}m)" sg_between "$m" 120 300
sg_check "nr_throttled grows ($((th1 - th0)))" [ "$((th1 - th0))" -ge 10 ]
sg_check "cpu.pressure some total grows" [ "$(sed -n 's/^some .*total=//p' "$PROXY_B/cpu.pressure")" -gt 0 ]

# cpu.max.burst: must stay <= quota
sg_check "cpu.max.burst accepts 10000 (<= quota)" sh -c "echo 10000 >$PROXY_B/cpu.max.burst"
sg_check "cpu.max.burst rejects 30000 (> quota)" sh -c "! echo 30000 >$PROXY_B/cpu.max.burst 2>/dev/null"
echo 0 >"$PROXY_B/cpu.max.burst"
sg_check "cpu.max rejects quota < 1000" sh -c "! echo '999 100000' >$PROXY_B/cpu.max 2>/dev/null"

# The control file switches the stand-in live.
echo idle >"$CTL_B"
echo "max 100000" >"$PROXY_B/cpu.max"
sleep 1
u0=$(sg_stat "$PROXY_B" usage_usec)
sleep 2
u1=$(sg_stat "$PROXY_B" usage_usec)
sg_check "idle after control switch ($(((u1 - u0) / 2000))m)" [ $(((u1 - u0) / 2000)) -lt 50 ]

sg_check "snapshot of kubelet's files" test "$(sg_untouched_snapshot "$APP_A" "$POD_A" | wc -l)" -ge 10
sg_done
