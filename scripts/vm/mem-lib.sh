# shellcheck shell=dash
# VM-side helpers of the memory and CPU-control scenarios of issue 4 (memory-growth,
# memory-reclaim, memory-reclaim-api, concurrency-floor, external-write, push-storm, burst).
# Sourced after /sg/lib.sh. Every value read here comes from the kernel's own files.
# shellcheck disable=SC2034 # variables set here are read by the scenarios

MIB=1048576
SG_DISK=${SG_DISK:-/mnt/sg-disk}
SG_DISK_IMG=${SG_DISK_IMG:-/tmp/sg-disk.img}
SG_DISK_DEV=${SG_DISK_DEV:-/dev/loop0}

# ---------------------------------------------------------------------------------------------
# Reading memory files

# Bytes to whole MiB ("max" stays "max").
sg_mib() {
	if [ "$1" = max ]; then echo max; else echo $(($1 / MIB)); fi
}
sg_mem_current() { cat "$1/memory.current"; }
sg_mem_high() { cat "$1/memory.high"; }
# sg_mem_stat DIR FIELD: a memory.stat field, in bytes.
sg_mem_stat() { awk -v k="$2" '$1 == k { print $2 }' "$1/memory.stat"; }
# sg_mem_event DIR FIELD: a memory.events counter (low high max oom oom_kill).
sg_mem_event() { awk -v k="$2" '$1 == k { print $2 }' "$1/memory.events"; }
sg_mem_placed() { [ "$(cat "$1/memory.high")" != max ]; }
# sg_mem_high_at_most DIR BYTES
sg_mem_high_at_most() { _h=$(cat "$1/memory.high") && [ "$_h" != max ] && [ "$_h" -le "$2" ]; }
# sg_log_has FILE TEXT: the stand-in's log holds TEXT.
sg_log_has() { grep -q -F -- "$2" "$1" 2>/dev/null; }
# The `some total` of memory.pressure, in microseconds.
sg_mem_pressure_total() { awk '$1 == "some" { sub("total=", "", $5); print $5 }' "$1/memory.pressure"; }

# One line of memory state for the console.
sg_mem_show() {
	sg_log "  memory: current $(sg_mib "$(sg_mem_current "$1")") MiB, high $(sg_mib "$(sg_mem_high "$1")") MiB, anon $(sg_mib "$(sg_mem_stat "$1" anon)") MiB, file $(sg_mib "$(sg_mem_stat "$1" file)") MiB, shmem $(sg_mib "$(sg_mem_stat "$1" shmem)") MiB, events: $(tr '\n' ' ' <"$1/memory.events")"
}

# sg_mem_trace_start DIR PERIOD_US [stat]: log the cgroup's memory every PERIOD_US in the
# background into $SG_RUN/memtrace.log, one line per sample:
#   MS CURRENT HIGH EVENTS_HIGH EVENTS_MAX EVENTS_OOM_KILL [ANON FILE]
# HIGH is -1 for "max". With "stat", memory.stat's anon and file are logged too.
sg_mem_trace_start() {
	: >"$SG_RUN/memtrace.log"
	(
		while :; do
			_h=$(cat "$1/memory.high" 2>/dev/null) || break
			[ "$_h" = max ] && _h=-1
			_l="$(sg_now_ms) $(cat "$1/memory.current") $_h $(awk '$1 == "high" { h = $2 } $1 == "max" { m = $2 } $1 == "oom_kill" { k = $2 } END { print h, m, k }' "$1/memory.events")"
			if [ "${3:-}" = stat ]; then
				_l="$_l $(awk '$1 == "anon" { a = $2 } $1 == "file" { f = $2 } END { print a, f }' "$1/memory.stat")"
			fi
			echo "$_l" >>"$SG_RUN/memtrace.log"
			usleep "$2"
		done
	) &
	SG_MEM_TRACE_PID=$!
}
sg_mem_trace_stop() {
	kill "$SG_MEM_TRACE_PID" 2>/dev/null || true
	wait "$SG_MEM_TRACE_PID" 2>/dev/null || true
}
# Print the trace's lines where memory.high or the high-event count changed (and every 5 s),
# in MiB, relative to the first sample's time.
sg_mem_trace_print() {
	sg_log "memory trace (t, current, high, memory.events high/max/oom_kill[, anon, file]), MiB:"
	awk -v M="$MIB" 'NR == 1 { t0 = $1 }
		{ h = ($3 < 0) ? "max" : int($3 / M); key = h " " $4 " " $5 " " $6
		  if (key != last || $1 - lastp >= 5000) {
			line = sprintf("    t=%5.1fs current=%d high=%s events=%s/%s/%s", ($1 - t0) / 1000, $2 / M, h, $4, $5, $6)
			if (NF >= 8) line = line sprintf(" anon=%d file=%d", $7 / M, $8 / M)
			print line; last = key; lastp = $1 } }' "$SG_RUN/memtrace.log"
}

# ---------------------------------------------------------------------------------------------
# A real block-backed file system for page cache the kernel can reclaim
#
# /, /tmp and /run are tmpfs/ramfs: their files are shmem, which cannot be reclaimed without
# swap. sg_disk_up loads loop and ext4 (modules from Debian's kernel package, copied by
# scripts/vm/mem-host.sh), fills an image file (every page allocated now, outside the proxies'
# cgroups, so the loop device's writes never charge new tmpfs pages to a proxy), attaches it to
# /dev/loop0, makes an ext2 file system and mounts it on $SG_DISK. Fresh each call.

sg_disk_modules() {
	if [ ! -f /lib/modules/sg/order ]; then
		if grep -qw ext2 /proc/filesystems && [ -e /dev/loop-control ]; then return 0; fi
		echo "sg_disk: no modules in /lib/modules/sg (a kernel of your own needs loop and ext4 built in)" >&2
		return 1
	fi
	for _m in $(cat /lib/modules/sg/order); do
		_n=${_m%.ko}
		[ -d "/sys/module/$_n" ] && continue
		insmod "/lib/modules/sg/$_m" || {
			echo "sg_disk: insmod $_m failed" >&2
			return 1
		}
	done
	grep -qw ext2 /proc/filesystems
}

# sg_disk_up [MIB]: a fresh ext2 file system of MIB (default 192) on $SG_DISK.
sg_disk_up() {
	sg_disk_down
	sg_disk_modules || return 1
	[ -b "$SG_DISK_DEV" ] || mknod "$SG_DISK_DEV" b 7 0
	dd if=/dev/zero of="$SG_DISK_IMG" bs=1M count="${1:-192}" 2>/dev/null
	losetup "$SG_DISK_DEV" "$SG_DISK_IMG" || return 1
	mke2fs -q -m 0 "$SG_DISK_DEV" >/dev/null || return 1
	mkdir -p "$SG_DISK"
	mount -t ext2 "$SG_DISK_DEV" "$SG_DISK" || return 1
	sg_log "ext2 on $SG_DISK_DEV (${1:-192} MiB image in $SG_DISK_IMG) mounted on $SG_DISK"
}

# Undo sg_disk_up (when it was done) and give the image's RAM back.
sg_disk_down() {
	if grep -q " $SG_DISK " /proc/mounts; then
		umount "$SG_DISK" || umount -l "$SG_DISK" || true
	fi
	if [ -e "$SG_DISK_IMG" ]; then
		losetup -d "$SG_DISK_DEV" 2>/dev/null || true
		rm -f "$SG_DISK_IMG"
	fi
}

# ---------------------------------------------------------------------------------------------
# Pods

# sg_one_pod TAG: a cgroupfs burstable pod with a proxy container (limit 2 cores, request 100m,
# 1 GiB) and an app container (1 core, request 500m, 512 MiB). Sets POD, PROXY, APP.
sg_one_pod() {
	_uid=$(printf '%s' "$1" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/')
	POD=$(sg_pod cgroupfs burstable "$_uid")
	PROXY=$(sg_container "$POD" containerd "$(sg_cid "$1-proxy")" 2000 100 1024)
	APP=$(sg_container "$POD" containerd "$(sg_cid "$1-app")" 1000 500 512)
	sg_pod_limits "$POD" 3000 600 1536
}

# sg_storm_policy_write: the push-storm scenarios' policy (cpu.pushStorm at its defaults).
# throttledRatio 0.5: under TCG an idle task is now and then throttled (a vCPU preempted on the
# host looks like a burst), in one or two of its few active periods; at the default 5% that
# grows idle proxies at random and several such bumps within 3 s look like a storm of their own.
# Spinning at the floor they are throttled in nearly every period, far above 50%.
sg_storm_policy_write() {
	sg_policy_write <<'EOT'
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 3s
  throttledRatio: 0.5
EOT
}

# sg_metric NAME_AND_LABELS: the value of one line of /metrics (empty when absent).
sg_metric() {
	sg_http /metrics | awk -v k="$1" '$1 == k { print $2 }' | tail -n 1
}
