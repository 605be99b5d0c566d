#!/bin/sh
# shellcheck shell=dash
# What this kernel offers the agent (issue 11's kernel matrix), one line per fact:
#   KERNEL-FEATURE kernel=VERSION name=NAME value=VALUE
# The scenario asserts only what holds on every kernel the matrix boots (Debian bookworm's 6.1
# and trixie's 6.12) and could still fail: the cgroup files the agent relies on exist, a PSI
# trigger on a cgroup's cpu.pressure is taken from root, a 2 s-window trigger from a writer
# without CAP_SYS_RESOURCE, memory.reclaim parses "1M". Everything that differs between kernels
# is printed, never asserted:
#   cpu.stat.local (6.8+) and its fields; memory.peak, and whether a write through a descriptor
#   resets the peak seen through that descriptor only (6.12+); whether memory.reclaim takes
#   "swappiness=0"; whether a writer without CAP_SYS_RESOURCE gets a 500 ms window (6.5+ takes
#   only multiples of 2 s); cpu.max.burst; memory.events.local.
# One descriptor's write-then-read is fd_probe (examples/fd_probe.rs): busybox cannot seek back
# on a descriptor it wrote to, and a reopen is a new description.
set -eu
. /sg/lib.sh

K=$(uname -r)
fact() { echo "KERNEL-FEATURE kernel=$K name=$1 value=$2"; }
# fd_probe's output on stdin -> the errno of its first failed step, "ok" when it opened the
# file and every step succeeded, "noresult:..." when it did not run.
probe_result() {
	_o=$(cat)
	_e=$(echo "$_o" | sed -n 's/^[a-z]*=err:\(.*\)$/\1/p' | head -n 1)
	if [ -n "$_e" ]; then
		echo "$_e"
	elif echo "$_o" | grep -q '^open=ok$'; then
		echo ok
	else
		echo "noresult:$(echo "$_o" | head -n 1 | tr ' ' _)"
	fi
}

sg_check "fd_probe installed" command -v fd_probe
# Debian's package version names the upstream release (uname -r gives only the ABI: 6.1.0-57).
fact debian-version "$(sed -n 's/.* Debian \([^ ]*\) .*/\1/p' /proc/version)"
D=$(sg_mkcg sg-features)
sg_enable_controllers "$D"
L=$(sg_mkcg sg-features/leaf)

# --- cgroup files present on both kernels
for f in cpu.max.burst memory.events.local memory.peak memory.reclaim cpu.pressure; do
	if [ -e "$L/$f" ]; then v=yes; else v=no; fi
	fact "$f" "$v"
	sg_check "$f present" [ "$v" = yes ]
done

# --- cpu.stat.local: Linux 6.8+ (throttled_usec of this cgroup's own cpu.max, not its ancestors')
if [ -e "$L/cpu.stat.local" ]; then
	fact cpu.stat.local yes
	fact cpu.stat.local.fields "$(awk '{ print $1 }' "$L/cpu.stat.local" | tr '\n' ',' | sed 's/,$//')"
else
	fact cpu.stat.local no
fi
fact cpu.stat.fields "$(awk '{ print $1 }' "$L/cpu.stat" | tr '\n' ',' | sed 's/,$//')"

# --- memory.peak: the peak of a 64 MiB allocation gone, then a write through a descriptor
sg_spawn "$L" peak /bin/app --mode idle --alloc-mib 64
pid=$SG_PID
sg_wait 60 sh -c "[ \$(cat $L/memory.current) -ge $((60 * 1024 * 1024)) ]" ||
	sg_fail "the 64 MiB allocation never showed in memory.current ($(cat "$L/memory.current"))"
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
sg_wait 20 sh -c "[ \$(cat $L/memory.current) -lt $((8 * 1024 * 1024)) ]" ||
	sg_fail "memory.current stayed at $(cat "$L/memory.current") after the allocator's end"
peak0=$(cat "$L/memory.peak")
sg_log "memory.peak $peak0 (lifetime), memory.current $(cat "$L/memory.current")"
sg_check "memory.peak holds the 64 MiB peak ($peak0)" [ "$peak0" -ge $((60 * 1024 * 1024)) ]
out=$(fd_probe "$L/memory.peak" w:reset r 2>&1 || true)
sg_log "fd_probe memory.peak w:reset r: $(echo "$out" | tr '\n' ' ')"
r=$(echo "$out" | probe_result)
if [ "$r" = ok ]; then
	fdpeak=$(echo "$out" | sed -n 's/^read=//p')
	peak1=$(cat "$L/memory.peak")
	sg_log "after the write: through that descriptor $fdpeak, through a new one $peak1"
	if [ "$fdpeak" -lt $((8 * 1024 * 1024)) ] && [ "$peak1" -ge $((60 * 1024 * 1024)) ]; then
		fact memory.peak.fd_reset yes
	else
		fact memory.peak.fd_reset "write-accepted-but-fd=$fdpeak,global=$peak1"
	fi
else
	fact memory.peak.fd_reset "no($r)"
fi

# --- memory.reclaim: "1M", and "1M swappiness=0" (EAGAIN: parsed, nothing reclaimable here;
# EINVAL: the argument refused)
r=$(fd_probe "$L/memory.reclaim" w:1M 2>&1 | probe_result)
fact memory.reclaim.1M "$r"
sg_check "memory.reclaim parses 1M ($r)" sh -c "[ $r = ok ] || [ $r = EAGAIN ]"
r=$(fd_probe "$L/memory.reclaim" "w:1M swappiness=0" 2>&1 | probe_result)
case $r in ok | EAGAIN) v="yes($r)" ;; *) v="no($r)" ;; esac
fact memory.reclaim.swappiness "$v"
# The control: a key no kernel knows is refused, so EAGAIN above means the key was understood.
r=$(fd_probe "$L/memory.reclaim" "w:1M sg_bogus=1" 2>&1 | probe_result)
fact memory.reclaim.unknown_key "$r"
sg_check "memory.reclaim refuses '1M sg_bogus=1' ($r)" [ "$r" = EINVAL ]

# --- PSI triggers on the cgroup's cpu.pressure, through an open read-write descriptor
r=$(fd_probe "$L/cpu.pressure" "w:some 30000 500000" sleep:200 2>&1 | probe_result)
fact psi.cgroup_trigger.root.500ms "$r"
sg_check "root: PSI trigger 'some 30000 500000' on cpu.pressure ($r)" [ "$r" = ok ]
# The same without CAP_SYS_RESOURCE: a user of its own (busybox su drops every capability with
# the uid) that owns the file, as a delegated cgroup's owner does.
# The initramfs root is a mktemp -d (0700): let the user reach /bin and /usr/local/bin.
chmod 0755 /
if ! grep -q '^sgprobe:' /etc/passwd; then echo 'sgprobe:x:1000:1000::/:/bin/sh' >>/etc/passwd; fi
chown 1000:1000 "$L/cpu.pressure"
caps=$(su -s /bin/sh sgprobe -c 'grep ^CapEff: /proc/self/status' 2>&1 | awk '{ print $2 }')
sg_check "sgprobe runs without capabilities (CapEff $caps)" [ "$caps" = 0000000000000000 ]
r=$(su -s /bin/sh sgprobe -c "fd_probe $L/cpu.pressure 'w:some 30000 500000' sleep:200" 2>&1 | probe_result)
fact psi.cgroup_trigger.nocap.500ms "$r"
r=$(su -s /bin/sh sgprobe -c "fd_probe $L/cpu.pressure 'w:some 30000 2000000' sleep:200" 2>&1 | probe_result)
fact psi.cgroup_trigger.nocap.2s "$r"
sg_check "no CAP_SYS_RESOURCE: PSI trigger 'some 30000 2000000' on cpu.pressure ($r)" [ "$r" = ok ]
chown 0:0 "$L/cpu.pressure"

# --- cpu.max.burst: taken up to the quota
echo "50000 100000" >"$L/cpu.max"
r=$(fd_probe "$L/cpu.max.burst" w:20000 2>&1 | probe_result)
fact cpu.max.burst.write "$r"
sg_check "cpu.max.burst takes 20000 under a 50000 quota ($r)" [ "$r" = ok ]
echo 0 >"$L/cpu.max.burst"
echo "max 100000" >"$L/cpu.max"

# --- memory.events.local's fields
fact memory.events.local.fields "$(awk '{ print $1 }' "$L/memory.events.local" | tr '\n' ',' | sed 's/,$//')"

sg_done
