#!/bin/sh
# shellcheck shell=dash
# Discovery on every cgroup layout of the design notes (section 4): containerd and CRI-O under the
# systemd and cgroupfs drivers, a Guaranteed pod (no QoS level), CRI-O with crun's `container`
# child, Envoy and Linkerd process names; one proxy per container however many proxy processes
# it holds; containers without a proxy process are left out. Checked through `discover --output
# json` and the running agent's sidecar_governor_proxies.
# shellcheck disable=SC2154 # dir_*, uid_*, cid_* are set through eval

set -eu
. /sg/lib.sh

# new_pod NAME DRIVER QOS RUNTIME [PROGRAM ARGS...]: a pod with one container running PROGRAM.
# Sets dir_NAME, uid_NAME, cid_NAME.
new_pod() {
	_n=$1 _drv=$2 _qos=$3 _rt=$4
	shift 4
	_uid=$(sg_cid "uid-$_n" | sed 's/^\(.\{8\}\)\(.\{4\}\)\(.\{4\}\)\(.\{4\}\)\(.\{12\}\).*/\1-\2-\3-\4-\5/')
	_cid=$(sg_cid "cid-$_n")
	_pod=$(sg_pod "$_drv" "$_qos" "$_uid")
	_dir=$(sg_container "$_pod" "$_rt" "$_cid" 2000 100 1024)
	sg_pod_limits "$_pod" 2000 100 1024
	eval "dir_$_n=\$_dir uid_$_n=\$_uid cid_$_n=\$_cid"
	for _prog in "$@"; do
		# shellcheck disable=SC2086 # program and its flags
		sg_spawn "$_dir" "$_n" $_prog
	done
}

new_pod ctrd_systemd systemd burstable containerd \
	"/usr/local/bin/pilot-agent --mode idle" "/bin/envoy --concurrency 2"
new_pod ctrd_cgroupfs cgroupfs besteffort containerd "/bin/envoy" "/bin/envoy"
new_pod crio_systemd systemd burstable crio "/usr/local/bin/linkerd2-proxy"
new_pod crio_cgroupfs cgroupfs burstable crio "/bin/envoy --concurrency 1"
new_pod guaranteed systemd guaranteed containerd "/bin/envoy --concurrency 4"
# CRI-O with crun: the processes live in a `container` child of crio-<id>.scope
new_pod crun systemd burstable crio
crun_leaf=$(sg_mkcg "${dir_crun#"$CG"/}/container")
sg_spawn "$crun_leaf" crun /bin/envoy
# not proxies: a pilot-agent alone (no envoy yet), and an app
new_pod agent_only systemd burstable containerd "/usr/local/bin/pilot-agent --mode idle"
new_pod app cgroupfs burstable containerd "/bin/app"

proxies="ctrd_systemd ctrd_cgroupfs crio_systemd crio_cgroupfs guaranteed crun"
for n in $proxies agent_only app; do
	eval "sg_log \"$n: \${dir_$n#\"\$CG\"/}\""
done

rc=0
timeout 30 "$SG_BIN" discover --cgroup-root "$CG" --proc-root /proc --output json \
	>"$SG_RUN/discover.json" 2>"$SG_RUN/discover.err" || rc=$?
sg_expect "discover exit code" "$rc" 0
timeout 30 "$SG_BIN" discover --cgroup-root "$CG" --proc-root /proc --output table 2>/dev/null |
	cut -c1-150 | sed 's/^/    /' || true

# The JSON object (top-level array element) that mentions $1.
object_with() {
	awk -v id="$1" '
		/^  \{/ { buf = ""; inside = 1 }
		inside { buf = buf $0 "\n" }
		/^  \}/ { inside = 0; if (index(buf, id)) printf "%s", buf }
	' "$SG_RUN/discover.json"
}
field() { sed -n "s/^ *\"$1\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}$/\1/p" | head -n 1; }

for n in $proxies; do
	eval "cid=\$cid_$n uid=\$uid_$n"
	count=$(grep -c "\"container_id\": \"$cid\"" "$SG_RUN/discover.json" || true)
	sg_expect "$n: found once" "$count" 1
	obj=$(object_with "$cid")
	sg_expect "$n: pod_uid" "$(echo "$obj" | field pod_uid)" "$uid"
done
sg_expect "ctrd_systemd layout" "$(object_with "$cid_ctrd_systemd" | field layout)" containerd-systemd
sg_expect "ctrd_cgroupfs layout" "$(object_with "$cid_ctrd_cgroupfs" | field layout)" containerd-cgroupfs
sg_expect "crio_systemd layout" "$(object_with "$cid_crio_systemd" | field layout)" crio-systemd
sg_expect "crio_cgroupfs layout" "$(object_with "$cid_crio_cgroupfs" | field layout)" crio-cgroupfs
sg_expect "crio_systemd process" "$(object_with "$cid_crio_systemd" | field process)" linkerd2-proxy
sg_expect "guaranteed concurrency" "$(object_with "$cid_guaranteed" | field concurrency)" 4
sg_expect "ctrd_systemd concurrency" "$(object_with "$cid_ctrd_systemd" | field concurrency)" 2
# crun's `container` child holds the processes; the limits kubelet set are on the scope.
sg_expect "crun: governed cgroup (limits on the scope)" "$(object_with "$cid_crun" | field dir)" "$dir_crun"
sg_expect "crun: cpu_max read" "$(object_with "$cid_crun" | field cpu_max)" "200000 100000"
sg_expect "objects in the output" "$(grep -c '^  {' "$SG_RUN/discover.json" || true)" 6
for n in agent_only app; do
	eval "cid=\$cid_$n"
	sg_check "$n is not a proxy" sh -c "! grep -q $cid $SG_RUN/discover.json"
done

# The running agent governs the same six.
sg_policy 3s
sg_agent_start
proxies_is_6() { sg_http /metrics | grep -q '^sidecar_governor_proxies 6$'; }
if sg_wait 15 proxies_is_6; then
	sg_ok "sidecar_governor_proxies 6"
else
	sg_fail "sidecar_governor_proxies: $(sg_http /metrics | grep '^sidecar_governor_proxies ' || echo none), want 6"
fi
sg_agent_stop TERM 10
sg_expect "agent exit code on SIGTERM" "$SG_AGENT_RC" 0
sg_done
