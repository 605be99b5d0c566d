# shellcheck shell=dash
# VM side of the `cri` scenario: start Debian's containerd (CRI plugin, runc, cgroupfs driver,
# native snapshotter) inside the VM, import the locally built images, and create pods through
# CRI the way kubelet does, with the stand-in kubelet /usr/local/bin/cri_driver. Sourced after
# /sg/lib.sh. The files come from scripts/vm/cri-host.sh (sg_cri_host_extra).
# shellcheck disable=SC2034 # variables set here are read by the scenario

SG_CRI_SOCK=/run/containerd/containerd.sock
SG_CRI_DIR=$SG_RUN/cri

sg_cri() { cri_driver --endpoint "$SG_CRI_SOCK" "$@"; }

# Start containerd (again) and wait for CRI. Sets SG_CONTAINERD_PID.
sg_cri_daemon() {
	mkdir -p /var/lib/containerd /run/containerd /var/log/pods /opt/cni/bin /etc/cni/net.d "$SG_CRI_DIR"
	[ -e /etc/resolv.conf ] || echo 'nameserver 127.0.0.1' >/etc/resolv.conf
	_t0=$(sg_now_ms)
	containerd --config /sg/cri/containerd.toml >>"$SG_RUN/log/containerd.log" 2>&1 &
	SG_CONTAINERD_PID=$!
	if ! _v=$(sg_cri wait 90 2>&1); then
		sg_fail "containerd's CRI did not answer within 90 s: $_v"
		tail -n 30 "$SG_RUN/log/containerd.log" | sed 's/^/  containerd| /'
		return 1
	fi
	sg_log "CRI answers: $_v ($(($(sg_now_ms) - _t0)) ms after starting containerd)"
}

# A fresh runtime for each scenario of the cri boot (an earlier one may have left containerd,
# its shims, its mounts and its store behind, e.g. when it timed out): containerd and its shims
# by PID, the mounts under its directories (deepest first), then the directories.
sg_cri_reset() {
	for _c in /proc/[0-9]*/comm; do
		case "$(cat "$_c" 2>/dev/null)" in
		containerd | containerd-shim*) ;;
		*) continue ;;
		esac
		_p=${_c#/proc/}
		kill -9 "${_p%/comm}" 2>/dev/null || true
	done
	awk '$2 ~ "^(/run/containerd|/var/lib/containerd)/" { print $2 }' /proc/mounts | sort -r |
		while read -r _m; do umount -l "$_m" 2>/dev/null || true; done
	rm -rf /var/lib/containerd /run/containerd "$SG_CRI_DIR" 2>/dev/null || true
}

# Start a fresh containerd, wait for CRI, import the images. Sets SG_CONTAINERD_PID.
sg_cri_start() {
	sg_cri_reset
	sg_cri_daemon || return 1
	_t0=$(sg_now_ms)
	if ! ctr -n k8s.io images import --snapshotter native /sg/cri/images.tar >"$SG_CRI_DIR/import.log" 2>&1; then
		sg_fail "ctr images import failed: $(tail -n 3 "$SG_CRI_DIR/import.log" | tr '\n' ' ')"
		return 1
	fi
	sg_log "images imported in $(($(sg_now_ms) - _t0)) ms: $(ctr -n k8s.io images ls -q | tr '\n' ' ')"
}

# Stop containerd (SIGTERM, wait). Shims and containers keep running, as on a real node.
sg_cri_stop() {
	kill -TERM "$SG_CONTAINERD_PID" 2>/dev/null || true
	_i=0
	while kill -0 "$SG_CONTAINERD_PID" 2>/dev/null && [ $_i -lt 100 ]; do
		usleep 100000
		_i=$((_i + 1))
	done
	kill -0 "$SG_CONTAINERD_PID" 2>/dev/null && kill -9 "$SG_CONTAINERD_PID"
	return 0
}

# At the end: containerd's shims (in the root cgroup) by PID, so teardown finds a quiet node.
sg_cri_cleanup() {
	sg_cri_stop
	for _c in /proc/[0-9]*/comm; do
		[ "$(cat "$_c" 2>/dev/null)" = containerd-shim ] || continue
		_p=${_c#/proc/}
		kill -9 "${_p%/comm}" 2>/dev/null || true
	done
}

# sg_cri_pod NAMESPACE NAME UID CPU_LIMIT_SUM_M [DRIVER ARGS...]: the pod cgroup as kubelet makes
# it (cgroupfs driver, burstable: kubepods/burstable/pod<uid>, cpu.max the containers' sum),
# then the sandbox and containers through CRI (--container 'NAME|MILLIS|CMD', --annotation K=V,
# --mount HOST:CONTAINER). The driver's output lands in $SG_CRI_DIR/NAME.out; sets SG_POD_DIR.
sg_cri_pod() {
	_ns=$1 _name=$2 _uid=$3 _sum=$4
	shift 4
	SG_POD_DIR=$(sg_pod cgroupfs burstable "$_uid")
	sg_pod_limits "$SG_POD_DIR" "$_sum" 200 0
	sg_cri_up "$_name" "pod $_ns/$_name" --name "$_name" --namespace "$_ns" --uid "$_uid" "$@"
}

# sg_cri_up TAG WHAT DRIVER ARGS...: `cri_driver pod-up` with its output in $SG_CRI_DIR/TAG.out,
# failing as WHAT or logging how long it took and the containers it started.
sg_cri_up() {
	_tag=$1 _what=$2
	shift 2
	_t0=$(sg_now_ms)
	if ! sg_cri pod-up "$@" >"$SG_CRI_DIR/$_tag.out" 2>"$SG_CRI_DIR/$_tag.err"; then
		sg_fail "$_what not started: $(tail -n 3 "$SG_CRI_DIR/$_tag.err" | tr '\n' ' ')"
		return 1
	fi
	sg_log "$_what up in $(($(sg_now_ms) - _t0)) ms: $(awk '$1 == "CONTAINER" { printf "%s=%.12s ", $2, $3 }' "$SG_CRI_DIR/$_tag.out")"
}

# sg_cri_mesh_pod NAME UID [DRIVER ARGS...]: the ownership scenarios' pod mesh/NAME (1000m): an
# istio-proxy container (500m) running a spinning envoy beside an idle app (500m). Sets POD,
# APP, CID and C (the sidecar's cgroup); checks an envoy runs there and the pod's cpu.max is
# kubelet's (100000 100000).
sg_cri_mesh_pod() {
	_mn=$1 _mu=$2
	shift 2
	sg_cri_pod mesh "$_mn" "$_mu" 1000 "$@" \
		--container "istio-proxy|500|/bin/envoy --mode spin" \
		--container "app|500|/bin/app --mode idle" || return 1
	POD=$SG_POD_DIR
	APP=$(sg_cri_cg "$_mu" "$(sg_cri_cid "$_mn" app)")
	CID=$(sg_cri_cid "$_mn" istio-proxy)
	C=$(sg_cri_cg "$_mu" "$CID")
	sg_check "an envoy runs in the istio-proxy container" sg_wait 10 sg_cri_runs "$C" envoy
	sg_expect "pod cpu.max as kubelet wrote it" "$(sg_cpu_max "$POD")" "100000 100000"
}

# sg_cri_restart NAMESPACE NAME UID ATTEMPT TAG [DRIVER ARGS...]: a container restarted as kubelet
# does it, in the running sandbox of pod NAME (made by sg_cri_pod, with the same annotations):
# created and started with metadata.attempt ATTEMPT (--container 'NAME|MILLIS|CMD', --mount as
# for sg_cri_pod). The driver's output lands in $SG_CRI_DIR/TAG.out: sg_cri_cid TAG CONTAINER.
sg_cri_restart() {
	_ns=$1 _name=$2 _uid=$3 _att=$4 _tag=$5
	shift 5
	sg_cri_up "$_tag" "container of $_ns/$_name (attempt $_att)" --name "$_name" \
		--namespace "$_ns" --uid "$_uid" --sandbox "$(sg_cri_sandbox "$_name")" --attempt "$_att" "$@"
}

# sg_cri_stop_container ID: StopContainer with no grace (the container stays, exited, as
# kubelet leaves it), then wait up to 10 s for runc to remove its cgroup.
sg_cri_stop_container() {
	_d=$(find "$CG/kubepods" -type d -name "$1" 2>/dev/null | head -n 1)
	_out=$(sg_cri stop-container "$1" --grace 0 2>&1) || {
		sg_fail "StopContainer $1: $_out"
		return 1
	}
	if [ -n "$_d" ] && ! sg_wait 10 test ! -d "$_d"; then
		sg_fail "container $1 stopped but its cgroup $_d is still there 10 s later"
		return 1
	fi
	return 0
}

# sg_cri_sandbox POD: the pod's sandbox ID.
sg_cri_sandbox() { awk '$1 == "POD" { print $2 }' "$SG_CRI_DIR/$1.out"; }
# sg_cri_cid POD CONTAINER: the container's ID.
sg_cri_cid() { awk -v c="$2" '$1 == "CONTAINER" && $2 == c { print $3 }' "$SG_CRI_DIR/$1.out"; }
# sg_cri_started POD CONTAINER: uptime in ms right after StartContainer returned.
sg_cri_started() { awk -v c="$2" '$1 == "CONTAINER" && $2 == c { print $5 }' "$SG_CRI_DIR/$1.out"; }
# sg_cri_cg UID CID: the container's cgroup dir (cgroupfs driver, burstable).
sg_cri_cg() { echo "$CG/kubepods/burstable/pod$1/$2"; }

# sg_cri_runs DIR COMM: a process named COMM runs in the cgroup DIR.
sg_cri_runs() {
	for _p in $(cat "$1/cgroup.procs" 2>/dev/null); do
		[ "$(cat "/proc/$_p/comm" 2>/dev/null)" = "$2" ] && return 0
	done
	return 1
}

# sg_cri_named NAMESPACE POD CONTAINER [ID]: /metrics has a series with these runtime names
# (and that container id): the agent found the proxy through CRI, with its runtime identity.
sg_cri_named() {
	sg_http /metrics >"$SG_RUN/metrics.named" || return 1
	grep "namespace=\"$1\",pod=\"$2\",container=\"$3\"" "$SG_RUN/metrics.named" |
		grep -q "container_id=\"${4:-}"
}
