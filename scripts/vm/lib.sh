# shellcheck shell=dash
# Shell functions for the VM side of the real-kernel tests and the demo (busybox ash).
#
# Sourced by /init, by the scenario runner and by every scenario. It knows how to bring the
# machine up (mounts, loopback, cgroup2 controllers), how to build a kubelet-shaped cgroup v2
# hierarchy (systemd and cgroupfs drivers, containerd and CRI-O leaf names), how to start
# stand-in processes inside a container cgroup, how to run the agent under test, and how to
# record assertions. Every assertion reads the kernel's own files.
# shellcheck disable=SC2034 # variables set here are read by the scenarios

CG=${CG:-/sys/fs/cgroup}
SG_RUN=${SG_RUN:-/run/sg}
SG_STATE=${SG_STATE:-/var/lib/sg}
SG_POLICY=${SG_POLICY:-/etc/sg/policy.yaml}
SG_LISTEN=${SG_LISTEN:-127.0.0.1:9477}
SG_BIN=${SG_BIN:-/bin/sidecar-governor}
SG_SCENARIO=${SG_SCENARIO:-vm}

# ---------------------------------------------------------------------------------------------
# Boot

sg_boot() {
	mkdir -p /proc /sys /dev /tmp /run /var/lib /etc/sg
	mount -t proc proc /proc
	mount -t sysfs sysfs /sys
	mount -t devtmpfs devtmpfs /dev 2>/dev/null || true
	mkdir -p /dev/pts /dev/shm
	mount -t devpts devpts /dev/pts 2>/dev/null || true
	mount -t tmpfs -o mode=1777 tmpfs /dev/shm
	mount -t tmpfs -o mode=1777 tmpfs /tmp
	mount -t tmpfs -o mode=0755 tmpfs /run
	mount -t cgroup2 -o nsdelegate cgroup2 "$CG"
	ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
	hostname sg-vm
	mkdir -p "$SG_RUN" "$SG_RUN/log" "$SG_RUN/orig" "$SG_RUN/ctl"
	sg_enable_controllers "$CG"
}

# Enable cpu, memory and pids for the children of cgroup $1.
sg_enable_controllers() {
	for c in cpu memory pids; do
		echo "+$c" >"$1/cgroup.subtree_control" || echo "sg: cannot enable $c in $1" >&2
	done
}

# mkdir -p a cgroup below $CG, enabling the controllers in every new ancestor on the way.
# $1: path relative to $CG.
sg_mkcg() {
	_dir=$CG
	_rest=$1
	while [ -n "$_rest" ]; do
		_part=${_rest%%/*}
		if [ "$_part" = "$_rest" ]; then _rest=""; else _rest=${_rest#*/}; fi
		if ! grep -q cpu "$_dir/cgroup.subtree_control"; then
			sg_enable_controllers "$_dir"
		fi
		_dir=$_dir/$_part
		[ -d "$_dir" ] || mkdir "$_dir"
	done
	echo "$_dir"
}

# ---------------------------------------------------------------------------------------------
# A kubelet-shaped hierarchy
#
# Kubelet values: cpu.max = limit * period, cpu.weight from requests (shares -> weight),
# memory.max = limit; the pod cgroup holds the sum of its containers' limits.

# cpu.weight kubelet derives from a CPU request in millicores.
sg_weight() {
	_shares=$(($1 * 1024 / 1000))
	[ "$_shares" -lt 2 ] && _shares=2
	echo $((1 + ((_shares - 2) * 9999) / 262142))
}

# A 64-hex container id made from a short tag, so the console stays readable.
sg_cid() {
	printf '%s' "$1" | sha256sum | cut -c1-64
}

# sg_pod DRIVER QOS UID -> prints the pod cgroup dir.
#   DRIVER: systemd | cgroupfs; QOS: burstable | besteffort | guaranteed
sg_pod() {
	_drv=$1 _qos=$2 _uid=$3
	_u=$(echo "$_uid" | tr - _)
	case "$_drv/$_qos" in
	systemd/guaranteed) _p=kubepods.slice/kubepods-pod$_u.slice ;;
	systemd/*) _p=kubepods.slice/kubepods-$_qos.slice/kubepods-$_qos-pod$_u.slice ;;
	cgroupfs/guaranteed) _p=kubepods/pod$_uid ;;
	cgroupfs/*) _p=kubepods/$_qos/pod$_uid ;;
	*)
		echo "sg_pod: bad driver/qos $_drv/$_qos" >&2
		return 1
		;;
	esac
	sg_mkcg "$_p"
}

# sg_container POD_DIR RUNTIME ID CPU_LIMIT_M CPU_REQUEST_M MEM_LIMIT_MIB -> prints the dir.
#   RUNTIME: containerd | crio. The leaf name follows the pod's driver (slice => systemd).
#   CPU_LIMIT_M 0 means no limit (cpu.max stays "max 100000").
sg_container() {
	_pod=$1 _rt=$2 _id=$3 _lim=$4 _req=$5 _mem=$6
	case "$_pod" in
	*.slice)
		case $_rt in
		containerd) _leaf=cri-containerd-$_id.scope ;;
		crio) _leaf=crio-$_id.scope ;;
		esac
		;;
	*)
		case $_rt in
		containerd) _leaf=$_id ;;
		crio) _leaf=crio-$_id ;;
		esac
		;;
	esac
	_c=$_pod/$_leaf
	sg_mkcg "${_c#"$CG"/}" >/dev/null
	if [ "$_lim" -gt 0 ]; then echo "$((_lim * 100)) 100000" >"$_c/cpu.max"; fi
	sg_weight "$_req" >"$_c/cpu.weight"
	if [ "$_mem" -gt 0 ]; then echo $((_mem * 1024 * 1024)) >"$_c/memory.max"; fi
	echo "$_c"
}

# sg_pod_limits POD_DIR CPU_LIMIT_M CPU_REQUEST_M MEM_LIMIT_MIB: the pod-level values.
sg_pod_limits() {
	if [ "$2" -gt 0 ]; then echo "$(($2 * 100)) 100000" >"$1/cpu.max"; fi
	sg_weight "$3" >"$1/cpu.weight"
	if [ "$4" -gt 0 ]; then echo $(($4 * 1024 * 1024)) >"$1/memory.max"; fi
}

# sg_spawn CGROUP_DIR LOGNAME PROGRAM ARGS...: start PROGRAM inside the cgroup from its first
# instruction (the shell joins the cgroup, then execs). Sets SG_PID.
sg_spawn() {
	_cg=$1 _log=$2
	shift 2
	# shellcheck disable=SC2016
	sh -c 'echo $$ >"$0/cgroup.procs" && exec "$@"' "$_cg" "$@" >>"$SG_RUN/log/$_log.log" 2>&1 &
	SG_PID=$!
	echo "$SG_PID" >>"$SG_RUN/pids"
	# Wait until the exec happened, so /proc/PID/comm is the program's name.
	_want=$(basename "$1")
	_i=0
	while [ $_i -lt 50 ]; do
		[ "$(cat "/proc/$SG_PID/comm" 2>/dev/null)" = "$(echo "$_want" | cut -c1-15)" ] && return 0
		usleep 20000
		_i=$((_i + 1))
	done
	echo "sg_spawn: $* did not start in $_cg" >&2
	return 1
}

# Record a file's value under a name, to compare later.
sg_save() { cat "$2" >"$SG_RUN/orig/$1"; }
sg_saved() { cat "$SG_RUN/orig/$1"; }
# The files the agent may write, of cgroup dir $1, for sg_orig and sg_check_restored.
SG_GOVERNED_FILES="cpu.max cpu.max.burst memory.high"
sg_save_dir() {
	_n=$(echo "${1#"$CG"/}" | tr / :)
	for _f in $SG_GOVERNED_FILES; do sg_save "$_n.$_f" "$1/$_f"; done
}

# The standard fixture, used by most scenarios:
#   pod A, systemd driver, burstable, containerd:
#     istio-proxy (limit 2 cores, request 100m, 1Gi): pilot-agent + envoy (idle, control file)
#     app (limit 1 core, request 500m, 512Mi): app (idle)
#     pod cgroup: cpu.max 300000 100000
#   pod B, cgroupfs driver, burstable, containerd:
#     istio-proxy (limit 2 cores): envoy spinning 1 thread (control file)
#     app (limit 500m): app (idle)
#     pod cgroup: cpu.max 250000 100000
# Exports POD_A PROXY_A APP_A CTL_A UID_A CID_A, the same for B, and PROXIES="A B" APPS.
# $1, $2: initial modes of proxy A and B (default idle, spin).
sg_standard_pods() {
	_ma=${1:-idle} _mb=${2:-spin}
	UID_A=aaaaaaaa-0001-4000-8000-00000000000a
	UID_B=bbbbbbbb-0002-4000-8000-00000000000b
	CID_A=$(sg_cid proxy-a)
	CID_B=$(sg_cid proxy-b)
	CID_APP_A=$(sg_cid app-a)
	CID_APP_B=$(sg_cid app-b)
	CTL_A=$SG_RUN/ctl/proxy-a
	CTL_B=$SG_RUN/ctl/proxy-b
	echo "$_ma" >"$CTL_A"
	echo "$_mb" >"$CTL_B"

	POD_A=$(sg_pod systemd burstable "$UID_A")
	PROXY_A=$(sg_container "$POD_A" containerd "$CID_A" 2000 100 1024)
	APP_A=$(sg_container "$POD_A" containerd "$CID_APP_A" 1000 500 512)
	sg_pod_limits "$POD_A" 3000 600 1536
	POD_B=$(sg_pod cgroupfs burstable "$UID_B")
	PROXY_B=$(sg_container "$POD_B" containerd "$CID_B" 2000 100 1024)
	APP_B=$(sg_container "$POD_B" containerd "$CID_APP_B" 500 250 256)
	sg_pod_limits "$POD_B" 2500 350 1280

	sg_spawn "$PROXY_A" proxy-a /usr/local/bin/pilot-agent --mode idle
	sg_spawn "$PROXY_A" proxy-a /bin/envoy --mode idle --control "$CTL_A" --concurrency 2
	sg_spawn "$APP_A" app-a /bin/app --mode idle
	sg_spawn "$PROXY_B" proxy-b /bin/envoy --mode idle --control "$CTL_B" --concurrency 2
	sg_spawn "$APP_B" app-b /bin/app --mode idle

	PROXIES="$PROXY_A $PROXY_B"
	SG_TRACE="A=$PROXY_A B=$PROXY_B"
	APPS="$APP_A $APP_B"
	for _d in $PROXIES $APPS $POD_A $POD_B; do sg_save_dir "$_d"; done
	# Everything kubelet owns that is not a proxy container: apps, pods, QoS levels, kubepods.
	sg_untouched_snapshot "$APP_A" "$APP_B" "$POD_A" "$POD_B" "$(dirname "$POD_A")" \
		"$(dirname "$POD_B")" "$CG/kubepods.slice" "$CG/kubepods" >"$SG_RUN/untouched.before"
	export UID_A UID_B CID_A CID_B CTL_A CTL_B POD_A POD_B PROXY_A PROXY_B APP_A APP_B PROXIES APPS SG_TRACE
	sg_log "pods: A=${POD_A#"$CG"/} B=${POD_B#"$CG"/}"
}

# The original value of file $2 (cpu.max, cpu.max.burst) of cgroup dir $1, saved at setup.
sg_orig() { sg_saved "$(echo "${1#"$CG"/}" | tr / :).$2"; }

# Every file kubelet owns in the non-proxy cgroups (apps, pods, QoS slices), one line each.
sg_untouched_snapshot() {
	for _d in "$@"; do
		for _f in cpu.max cpu.max.burst cpu.weight memory.max memory.high memory.low memory.min; do
			[ -f "$_d/$_f" ] && printf '%s/%s=%s\n' "${_d#"$CG"/}" "$_f" "$(cat "$_d/$_f")"
		done
	done
}

# Compare the non-proxy cgroups with the snapshot taken at setup (0 when byte-for-byte equal).
sg_untouched_same() {
	sg_untouched_snapshot "$APP_A" "$APP_B" "$POD_A" "$POD_B" "$(dirname "$POD_A")" \
		"$(dirname "$POD_B")" "$CG/kubepods.slice" "$CG/kubepods" >"$SG_RUN/untouched.now"
	cmp -s "$SG_RUN/untouched.before" "$SG_RUN/untouched.now"
}

# Assert that the non-proxy cgroups are unchanged; print the difference when they are not.
sg_check_untouched() {
	if sg_untouched_same; then
		sg_ok "app, pod and QoS cgroups unchanged ($(wc -l <"$SG_RUN/untouched.before") values)"
	else
		sg_fail "app/pod cgroups changed: $(diff "$SG_RUN/untouched.before" "$SG_RUN/untouched.now" | grep '^[-+][^-+]' | tr '\n' ' ')"
	fi
}

# Assert that every proxy's cpu.max, cpu.max.burst and memory.high are back to the values
# kubelet wrote. The proxies are the NAME=DIR pairs of SG_TRACE.
sg_check_restored() {
	for _nd in $SG_TRACE; do
		_d=${_nd#*=}
		for _f in $SG_GOVERNED_FILES; do
			sg_expect "$1: proxy ${_nd%%=*} $_f" "$(cat "$_d/$_f")" "$(sg_orig "$_d" "$_f")"
		done
	done
}

# Log the proxies' cpu.max once a second in the background; sg_trace_stop prints the lines where
# a value changed. SG_TRACE: "NAME=DIR ..." (sg_standard_pods sets "A=$PROXY_A B=$PROXY_B").
sg_trace_start() {
	: >"$SG_RUN/trace.log"
	(
		while :; do
			_line="t=$(awk '{ printf "%.0f", $1 }' /proc/uptime)s"
			for _nd in $SG_TRACE; do _line="$_line ${_nd%%=*}=$(sg_quota_m "${_nd#*=}")m"; done
			echo "$_line" >>"$SG_RUN/trace.log"
			sleep 1
		done
	) &
	SG_TRACE_PID=$!
}
sg_trace_stop() {
	kill "$SG_TRACE_PID" 2>/dev/null || true
	wait "$SG_TRACE_PID" 2>/dev/null || true
	sg_log "cpu.max quota trace (millicores), lines where it changed:"
	awk '{ t = $1; $1 = ""; if ($0 != last) print "    " t $0; last = $0 }' "$SG_RUN/trace.log"
	# The agent's own account of every step up (informational: the text is the agent's log).
	if grep -q 'direction="up"' "$SG_RUN/agent.log" 2>/dev/null; then
		sg_log "the agent's steps up:"
		grep 'direction="up"' "$SG_RUN/agent.log" |
			sed 's/^\([^ ]*\) .*pod_uid="\(........\)[^ ]* .*direction=/    \1 pod \2 direction=/' | cut -c1-220
	fi
}

# ---------------------------------------------------------------------------------------------
# Reading the kernel's files

sg_cpu_max() { cat "$1/cpu.max"; }
sg_quota() { cut -d' ' -f1 "$1/cpu.max"; }
sg_period() { cut -d' ' -f2 "$1/cpu.max"; }
# sg_stat DIR FIELD: a cpu.stat field.
sg_stat() { awk -v k="$2" '$1 == k { print $2 }' "$1/cpu.stat"; }
# Milliseconds since boot.
sg_now_ms() { awk '{ printf "%d\n", $1 * 1000 }' /proc/uptime; }
# Quota in millicores ("max" stays "max").
sg_quota_m() {
	_q=$(sg_quota "$1")
	if [ "$_q" = max ]; then echo max; else echo $((_q * 1000 / $(sg_period "$1"))); fi
}

# sg_wait SECONDS COMMAND...: poll every 0.5 s until COMMAND succeeds; 1 on timeout.
sg_wait() {
	_deadline=$(($(sg_now_ms) + $1 * 1000))
	shift
	while ! "$@"; do
		[ "$(sg_now_ms)" -ge "$_deadline" ] && return 1
		usleep 500000
	done
	return 0
}

# sg_window DIR SECONDS: measure cpu.stat over a window. Sets W_USAGE_M (millicores),
# W_PERIODS, W_THROTTLED (periods) and W_THROTTLED_PCT.
sg_window() {
	_u0=$(sg_stat "$1" usage_usec) _p0=$(sg_stat "$1" nr_periods) _n0=$(sg_stat "$1" nr_throttled)
	_t0=$(sg_now_ms)
	sleep "$2"
	_u1=$(sg_stat "$1" usage_usec) _p1=$(sg_stat "$1" nr_periods) _n1=$(sg_stat "$1" nr_throttled)
	_t1=$(sg_now_ms)
	W_USAGE_M=$(((_u1 - _u0) / (_t1 - _t0)))
	W_PERIODS=$((_p1 - _p0))
	W_THROTTLED=$((_n1 - _n0))
	W_THROTTLED_PCT=0
	if [ "$W_PERIODS" -gt 0 ]; then W_THROTTLED_PCT=$((W_THROTTLED * 100 / W_PERIODS)); fi
}

sg_quota_value_at_least() { [ "$1" = max ] || [ "$1" -ge "$2" ]; }
sg_quota_below() { _q=$(sg_quota "$1") && [ "$_q" != max ] && [ "$_q" -lt "$2" ]; }
sg_quota_at_least() { _q=$(sg_quota "$1") && { [ "$_q" = max ] || [ "$_q" -ge "$2" ]; }; }
sg_between() { [ "$1" -ge "$2" ] && [ "$1" -le "$3" ]; }
sg_file_is() { [ "$(cat "$1")" = "$2" ]; }
# sg_all_cpu_max VALUE DIR...: every DIR's cpu.max holds VALUE.
sg_all_cpu_max() {
	_v=$1
	shift
	for _d in "$@"; do sg_file_is "$_d/cpu.max" "$_v" || return 1; done
}

# ---------------------------------------------------------------------------------------------
# The agent under test

# sg_policy [SCALE_DOWN_AFTER]: the scenarios' policy.
sg_policy() {
	mkdir -p "$(dirname "$SG_POLICY")"
	cat >"$SG_POLICY" <<EOF
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: ${1:-3s}
EOF
}

# sg_agent_start [EXTRA ARGS...]: run the agent in the background. Its pid lands in
# $SG_RUN/agent.pid, its exit code in $SG_RUN/agent.rc, its output in $SG_RUN/agent.log.
sg_agent_start() {
	rm -f "$SG_RUN/agent.pid" "$SG_RUN/agent.rc"
	echo "--- agent start $(sg_now_ms) ms" >>"$SG_RUN/agent.log"
	(
		_rc=0
		# shellcheck disable=SC2016
		NO_COLOR=1 SG_LOG=${SG_LOG:-info} sh -c 'echo $$ >"$0" && exec "$@"' \
			"$SG_RUN/agent.pid" "$SG_BIN" run --config "$SG_POLICY" --cgroup-root "$CG" \
			--proc-root /proc --state-dir "$SG_STATE" --listen "$SG_LISTEN" "$@" \
			>>"$SG_RUN/agent.log" 2>&1 || _rc=$?
		echo "$_rc" >"$SG_RUN/agent.rc"
	) &
	sg_wait 5 test -s "$SG_RUN/agent.pid" || {
		sg_fail "agent did not start"
		return 1
	}
	SG_AGENT_PID=$(cat "$SG_RUN/agent.pid")
	sg_log "agent started, pid $SG_AGENT_PID"
}

sg_agent_exited() { [ -s "$SG_RUN/agent.rc" ]; }

# sg_agent_stop SIGNAL SECONDS: send SIGNAL, wait up to SECONDS for the exit.
# Sets SG_AGENT_RC (or "timeout") and SG_AGENT_STOP_MS.
sg_agent_stop() {
	_t0=$(sg_now_ms)
	kill "-$1" "$SG_AGENT_PID" 2>/dev/null || true
	if sg_wait "$2" sg_agent_exited; then
		SG_AGENT_RC=$(cat "$SG_RUN/agent.rc")
	else
		SG_AGENT_RC=timeout
		kill -9 "$SG_AGENT_PID" 2>/dev/null || true
		sg_wait 5 sg_agent_exited || true
	fi
	SG_AGENT_STOP_MS=$(($(sg_now_ms) - _t0))
}

# sg_http PATH: GET from the agent; prints the body, sets SG_HTTP_STATUS.
# (busybox 1.35's wget crashes with -T: the timeout comes from timeout(1).)
sg_http() {
	rm -f "$SG_RUN/http.body"
	timeout 5 wget -S -q -O "$SG_RUN/http.body" "http://$SG_LISTEN$1" 2>"$SG_RUN/http.hdr" || true
	SG_HTTP_STATUS=$(awk '/^ *HTTP\// { s = $2 } END { print s }' "$SG_RUN/http.hdr")
	cat "$SG_RUN/http.body" 2>/dev/null || true
}
sg_http_ok() { sg_http "$1" >/dev/null && [ "$SG_HTTP_STATUS" = 200 ]; }

# ---------------------------------------------------------------------------------------------
# Assertions and logging

sg_log() {
	echo "[$SG_SCENARIO $(awk '{ printf "%.1f", $1 }' /proc/uptime)s] $*"
}

sg_fail() {
	echo "$*" >>"$SG_RUN/failures"
	sg_log "FAIL: $*"
}

sg_ok() { sg_log "ok: $*"; }

# sg_check DESCRIPTION COMMAND...: ok if COMMAND succeeds, a failure otherwise.
sg_check() {
	_what=$1
	shift
	if "$@"; then sg_ok "$_what"; else sg_fail "$_what"; fi
}

# sg_expect DESCRIPTION ACTUAL EXPECTED: string equality.
sg_expect() {
	if [ "$2" = "$3" ]; then
		sg_ok "$1 = '$2'"
	else
		sg_fail "$1: got '$2', want '$3'"
	fi
}

# Print the state of the proxies and apps (for the console log).
sg_show() {
	for _d in "$@"; do
		printf '  %-110s cpu.max=%-14s usage_usec=%s throttled=%s/%s\n' "${_d#"$CG"/}" \
			"$(cat "$_d/cpu.max")" "$(sg_stat "$_d" usage_usec)" \
			"$(sg_stat "$_d" nr_throttled)" "$(sg_stat "$_d" nr_periods)"
	done
}

# Exit the scenario: 0 when nothing failed.
sg_done() {
	if [ -s "$SG_RUN/failures" ]; then exit 1; fi
	exit 0
}

# ---------------------------------------------------------------------------------------------
# Teardown between scenarios: stop the agent and every process in the pod hierarchies, remove
# the cgroups, forget the state.

sg_teardown() {
	if [ -s "$SG_RUN/agent.pid" ]; then kill -9 "$(cat "$SG_RUN/agent.pid")" 2>/dev/null || true; fi
	for _top in "$CG"/kubepods*; do
		[ -d "$_top" ] || continue
		find "$_top" -name cgroup.procs | while read -r _f; do
			for _p in $(cat "$_f"); do kill -9 "$_p" 2>/dev/null || true; done
		done
	done
	for _top in "$CG"/kubepods* "$CG"/sg-*; do
		[ -d "$_top" ] || continue
		_i=0
		while [ $_i -lt 50 ]; do
			find "$_top" -depth -type d | while read -r _d; do rmdir "$_d" 2>/dev/null || true; done
			[ -d "$_top" ] || break
			usleep 100000
			_i=$((_i + 1))
		done
		[ -d "$_top" ] && echo "sg_teardown: could not remove $_top" >&2
	done
	rm -rf "$SG_STATE" "$SG_POLICY"
	rm -f "$SG_RUN"/failures "$SG_RUN"/pids "$SG_RUN"/agent.* "$SG_RUN"/orig/* "$SG_RUN"/ctl/*
	rm -f "$SG_RUN"/log/* /tmp/stand-in-*.cache
}

# ---------------------------------------------------------------------------------------------
# Ownership scenarios (issue 8: own-*.sh)

# A pod UID made from a short tag (deterministic, shaped like a UUID v4).
sg_uid() {
	printf '%s' "$1" | sha256sum | sed -E 's/^(.{8})(.{4}).(.{3}).(.{3})(.{12}).*/\1-\2-4\3-8\4-\5/'
}

# sg_policy_write: the policy from standard input, replacing $SG_POLICY in one rename (as
# kubelet swaps a ConfigMap's files), so the agent's hot reload never reads half a file.
sg_policy_write() {
	mkdir -p "$(dirname "$SG_POLICY")"
	cat >"$SG_POLICY.new" && mv -f "$SG_POLICY.new" "$SG_POLICY"
}

# sg_agent_wait_exit SECONDS: wait for an agent that is expected to exit on its own. Sets
# SG_AGENT_RC (or "timeout", after which it is killed).
sg_agent_wait_exit() {
	if sg_wait "$1" sg_agent_exited; then
		SG_AGENT_RC=$(cat "$SG_RUN/agent.rc")
	else
		SG_AGENT_RC=timeout
		kill -9 "$SG_AGENT_PID" 2>/dev/null || true
		sg_wait 5 sg_agent_exited || true
	fi
}

# sg_metric_sum NAME [LABEL=VALUE...]: the sum of the /metrics samples of family NAME whose
# labels include every LABEL="VALUE" given, in any order (0 when there is none).
sg_metric_sum() {
	_name=$1
	shift
	sg_http /metrics | awk -v n="$_name" -v want="$*" '
		{ split($1, a, "{"); if (a[1] != n) next
		  k = split(want, w, " "); ok = 1
		  for (i = 1; i <= k; i++) {
			split(w[i], kv, "=")
			if (index($1, kv[1] "=\"" kv[2] "\"") == 0) ok = 0
		  }
		  if (ok) s += $2 }
		END { printf "%d\n", s }'
}

# sg_unchanged_for FILE MS: true once FILE has held the same text for MS milliseconds (state is
# kept between calls, for one file at a time: use it under sg_wait).
sg_unchanged_for() {
	_uv=$(cat "$1" 2>/dev/null || echo gone)
	if [ "$1" != "${_uf_file:-}" ] || [ "$_uv" != "${_uf_val:-}" ]; then
		_uf_file=$1 _uf_val=$_uv _uf_since=$(sg_now_ms)
	fi
	[ $(($(sg_now_ms) - _uf_since)) -ge "$2" ]
}

# sg_trace_max NAME: the highest quota (millicores) NAME had in the sg_trace_start log; a
# quota of "max" counts as 999999999.
sg_trace_max() {
	awk -v n="$1" '{ for (i = 2; i <= NF; i++) { split($i, kv, "=")
		if (kv[1] != n) continue
		v = kv[2]; sub("m$", "", v); if (v == "max") v = 999999999
		if (v + 0 > m) m = v + 0 } } END { print m + 0 }' "$SG_RUN/trace.log"
}

# sg_container_gone DIR: the container's end as the runtime makes it when its task is killed:
# the cgroup disappears with its processes. The processes are moved out first (into
# $CG/sg-graveyard, outside every pod), the cgroup removed, then the processes killed, so that
# at no moment does a live proxy process sit outside its container while the cgroup still exists.
sg_container_gone() {
	_gy=$(sg_mkcg sg-graveyard)
	_pids=$(cat "$1/cgroup.procs")
	for _p in $_pids; do echo "$_p" >"$_gy/cgroup.procs" 2>/dev/null || true; done
	rmdir "$1" || return 1
	for _p in $_pids; do kill -9 "$_p" 2>/dev/null || true; done
	for _p in $_pids; do sg_wait 5 sh -c "! kill -0 $_p 2>/dev/null" || true; done
}

# The agent's log since its last sg_agent_start.
sg_agent_log_last() {
	awk '/^--- agent start / { buf = "" } { buf = buf $0 "\n" } END { printf "%s", buf }' "$SG_RUN/agent.log"
}
