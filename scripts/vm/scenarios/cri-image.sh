#!/bin/sh
# shellcheck shell=dash
# The shipped image as the node agent (issue 5): the image scripts/build-image.sh assembles is
# imported into Debian's containerd 1.6 in the VM. An istio-proxy sidecar (idle stand-in envoy,
# 2 cores) and an app container are made through CRI (cri_driver, the stand-in kubelet).
#
# 1. As a CRI pod, the way the DaemonSet runs it: the manifest's args, literal env and
#    volumeMounts (read from daemonset/daemonset.yaml on the host into
#    /sg/cri/agent-container.txt; each mount path bound to the VM path its hostPath names),
#    hostPID (NamespaceOption.pid = NODE), host network, capabilities drop ALL, read-only root
#    filesystem, uid/gid 0, no_new_privs, RuntimeDefault seccomp, not privileged, a 500m limit;
#    SG_LOG adds debug for discovery. Asserted from /proc/PID/status, mountinfo and ns links.
#    The CRI plugin gives the container a private cgroup namespace, in which the sidecar's
#    /proc/PID/cgroup reads `/../../pod<uid>/<id>` (a probe pod prints it); the agent joins that
#    to its namespace root's host path and must govern the sidecar: floor, labels, app untouched,
#    journal, restore. StopContainer (SIGTERM, grace 30 s) must stop it cleanly.
# 2. The same image, args, env, mounts and restrictions through `ctr -n k8s.io run` (hostPID via
#    --with-ns, --net-host, --read-only, --seccomp, the default capabilities dropped): the
#    node's cgroup namespace. Must shrink the sidecar's cpu.max to the floor (10000 100000),
#    leave the app's alone, show sidecar_governor_proxies 1 and the shop/cart/istio-proxy
#    labels in /metrics (host network, 127.0.0.1:9477), journal to the hostPath state dir, and
#    restore the original on SIGTERM.
# Runs in its own boot (scripts/vm-e2e.sh): its initramfs is the cri one plus the agent image.
set -eu
. /sg/lib.sh
. /sg/cri-lib.sh

UID_S=eeeeeeee-0c05-4000-8000-00000000000e
UID_AG=ffffffff-0c06-4000-8000-00000000000f
AGENT_IMAGE=docker.io/library/sidecar-governor:dev
AGENT_POD=sidecar-governor-vm01

sg_cri_start
t0=$(sg_now_ms)
if ! ctr -n k8s.io images import --snapshotter native /sg/cri/agent-image.tar >"$SG_CRI_DIR/agent-import.log" 2>&1; then
	sg_fail "agent image import failed: $(tail -n 3 "$SG_CRI_DIR/agent-import.log" | tr '\n' ' ')"
	sg_cri_cleanup
	sg_done
fi
sg_log "agent image imported in $(($(sg_now_ms) - t0)) ms: $(ctr -n k8s.io images ls -q | grep sidecar-governor | tr '\n' ' ')"

# The sidecar pod: an idle envoy (under pilot-agent) with a 2-core limit, and an app.
sg_cri_pod shop cart "$UID_S" 3000 \
	--container "istio-proxy|2000|/usr/local/bin/pilot-agent proxy sidecar" \
	--container "cart|1000|/bin/app --mode idle"
POD_S=$SG_POD_DIR
CID_S=$(sg_cri_cid cart istio-proxy)
CID_APP=$(sg_cri_cid cart cart)
SP=$(sg_cri_cg "$UID_S" "$CID_S")
SA=$(sg_cri_cg "$UID_S" "$CID_APP")
sg_expect "sidecar cpu.max as runc set it from the CRI limit" "$(sg_cpu_max "$SP")" "200000 100000"
sg_expect "app cpu.max" "$(sg_cpu_max "$SA")" "100000 100000"
UNTOUCHED="$SA $POD_S $CG/kubepods/burstable $CG/kubepods"
# shellcheck disable=SC2086 # a list of directories
sg_untouched_snapshot $UNTOUCHED >"$SG_RUN/untouched.before"

# The ConfigMap volume (a plain directory here) and the hostPath state directory.
mkdir -p "$(dirname "$SG_POLICY")" "$SG_STATE" /run/crio
cat >"$SG_POLICY" <<EOF
interval: 1s
cpu:
  min: 100m
  max: "2"
  scaleDownAfter: 3s
EOF

# The DaemonSet's container: its args, env and volumeMounts, each mount path given the VM's path
# its hostPath names.
args="" driver_opts=""
while read -r kind a b; do
	case $kind in
	ARG) args="$args $a" ;;
	ENV) driver_opts="$driver_opts --env $a" ;;
	MOUNT)
		case $a in
		/etc/sidecar-governor) src=$(dirname "$SG_POLICY") ;;
		/host/sys/fs/cgroup) src=$CG ;;
		/host/sys/fs/cgroup/*) src=$CG/${a#/host/sys/fs/cgroup/} ;;
		/host/proc) src=/proc ;;
		/var/lib/sidecar-governor) src=$SG_STATE ;;
		*) src=$a ;;
		esac
		if [ "$b" = ro ]; then driver_opts="$driver_opts --mount $src:$a:ro"; else driver_opts="$driver_opts --mount $src:$a"; fi
		;;
	esac
done </sg/cri/agent-container.txt
sg_log "DaemonSet args:$args"
sg_log "driver options:$driver_opts"
sg_check "the manifest's args name the in-container paths" sh -c "echo '$args' | grep -q -- '--cgroup-root=/host/sys/fs/cgroup' && echo '$args' | grep -q -- '--proc-root=/host/proc'"
# shellcheck disable=SC2086 # option lists
sg_cri_pod kube-system "$AGENT_POD" "$UID_AG" 500 --image "$AGENT_IMAGE" \
	--host-pid --drop-all-caps --readonly-rootfs --run-as-user 0 --no-new-privs --seccomp-runtime-default \
	$driver_opts --env "POD_NAME=$AGENT_POD" --env NODE_NAME=sg-vm \
	--env SG_LOG=info,sidecar_governor::discovery=debug \
	--container "agent|500|/usr/bin/sidecar-governor$args" || {
	sg_cri_cleanup
	sg_done
}
CID_AG=$(sg_cri_cid "$AGENT_POD" agent)
AG=$(sg_cri_cg "$UID_AG" "$CID_AG")
AGENT_LOG=/var/log/pods/kube-system_${AGENT_POD}_$UID_AG/agent/0.log
# run.sh prints $SG_RUN/agent.log on a failure.
ln -sf "$AGENT_LOG" "$SG_RUN/agent.log"

# The agent process as the kernel sees it.
apid=""
agent_pid() {
	for _p in $(cat "$AG/cgroup.procs" 2>/dev/null); do
		[ "$(cat "/proc/$_p/comm" 2>/dev/null)" = sidecar-governo ] && apid=$_p && return 0
	done
	return 1
}
if sg_wait 15 agent_pid; then
	sg_ok "agent runs in its container's cgroup ${AG#"$CG"/} as pid $apid (host PID namespace)"
	sg_expect "agent uid" "$(awk '/^Uid:/ { print $2 }' "/proc/$apid/status")" 0
	sg_expect "agent effective capabilities" "$(awk '/^CapEff:/ { print $2 }' "/proc/$apid/status")" 0000000000000000
	sg_expect "agent bounding set" "$(awk '/^CapBnd:/ { print $2 }' "/proc/$apid/status")" 0000000000000000
	sg_expect "agent seccomp mode (2: filter)" "$(awk '/^Seccomp:/ { print $2 }' "/proc/$apid/status")" 2
	sg_expect "agent no_new_privs" "$(awk '/^NoNewPrivs:/ { print $2 }' "/proc/$apid/status")" 1
	sg_check "agent's root filesystem is read-only" sh -c "awk '\$5 == \"/\" { print \$6 }' /proc/$apid/mountinfo | grep -q '^ro'"
	# The manifest's cgroup mounts (issue 9): the tree read-only, kubelet's pod tree read-write.
	sg_expect "agent's /host/sys/fs/cgroup mount" "$(awk '$5 == "/host/sys/fs/cgroup" { split($6, o, ","); print o[1] }' "/proc/$apid/mountinfo")" ro
	sg_expect "agent's /host/sys/fs/cgroup/kubepods mount" "$(awk '$5 == "/host/sys/fs/cgroup/kubepods" { split($6, o, ","); print o[1] }' "/proc/$apid/mountinfo")" rw
	sg_expect "agent's /host/sys/fs/cgroup/kubepods.slice mount (the systemd tree, empty here)" "$(awk '$5 == "/host/sys/fs/cgroup/kubepods.slice" { split($6, o, ","); print o[1] }' "/proc/$apid/mountinfo")" rw
	sg_expect "agent shares the node's PID namespace" "$(readlink "/proc/$apid/ns/pid")" "$(readlink /proc/1/ns/pid)"
	sg_expect "agent shares the node's network namespace" "$(readlink "/proc/$apid/ns/net")" "$(readlink /proc/1/ns/net)"
	if [ "$(readlink "/proc/$apid/ns/cgroup")" != "$(readlink /proc/1/ns/cgroup)" ]; then
		sg_log "agent has a private cgroup namespace: it reads the sidecar's /proc/PID/cgroup relative to ${AG#"$CG"}"
	else
		sg_log "agent shares the node's cgroup namespace"
	fi
else
	sg_fail "no sidecar-governor process in ${AG#"$CG"/} within 15 s"
fi

metrics() { sg_http /metrics >"$SG_RUN/metrics.txt"; }
has() { metrics && grep -q -e "$1" "$SG_RUN/metrics.txt"; }
envoy_pid() {
	for _p in $(cat "$SP/cgroup.procs"); do
		[ "$(cat "/proc/$_p/comm" 2>/dev/null)" = envoy ] && echo "$_p" && return 0
	done
	return 1
}
EPID=$(envoy_pid) || sg_fail "no envoy in the sidecar's cgroup"

# governed LABEL: the sidecar shrunk to the floor, labelled series, restored on SIGTERM by STOP
# (a command); the app untouched throughout.
governed() {
	sg_check "$1: sidecar_governor_proxies 1" sg_wait 30 has '^sidecar_governor_proxies 1$'
	sg_check "$1: quota series labelled shop/cart/istio-proxy" \
		grep -q "^sidecar_governor_cpu_quota_millicores{namespace=\"shop\",pod=\"cart\",container=\"istio-proxy\",pod_uid=\"$UID_S\",container_id=\"$CID_S\"} " "$SG_RUN/metrics.txt"
	sg_check "$1: no series for the app container" sh -c "! grep -q 'container=\"cart\"' $SG_RUN/metrics.txt"
	grep -e '^sidecar_governor_proxies' -e '^sidecar_governor_cpu_quota_millicores{' "$SG_RUN/metrics.txt" | sed 's/^/    /'
	_t0=$(sg_now_ms)
	if sg_wait 60 sg_file_is "$SP/cpu.max" "10000 100000"; then
		sg_ok "$1: sidecar's cpu.max at the floor (10000 100000) $(($(sg_now_ms) - _t0)) ms after the first /metrics with it"
	else
		sg_fail "$1: sidecar's cpu.max is $(sg_cpu_max "$SP") after 60 s, not the floor"
	fi
	sg_expect "$1: app's cpu.max untouched" "$(sg_cpu_max "$SA")" "100000 100000"
	sg_check "$1: journal in the hostPath state dir holds the sidecar" sh -c "grep -q $CID_S $SG_STATE/*.json"
	sg_show "$SP" "$SA"
}

sg_check "the containerised agent is ready (/readyz on the host network)" sg_wait 60 sg_http_ok /readyz
sg_check 'discovery_source{source="cri"} 1 (through the mounted /run/containerd socket)' \
	sg_wait 10 has '^sidecar_governor_discovery_source{source="cri"} 1$'

# What a container of a burstable pod reads in /proc/PID/cgroup for the sidecar: a probe pod
# (hostPID, the test image) prints it, the path the agent's procfs check has to resolve.
sg_cri_pod kube-system cgroupns-probe 12121212-0c07-4000-8000-000000000012 100 --host-pid \
	--container "probe|100|/bin/cat /proc/self/cgroup /proc/$EPID/cgroup" || true
PROBE_LOG=/var/log/pods/kube-system_cgroupns-probe_12121212-0c07-4000-8000-000000000012/probe/0.log
sg_wait 10 grep -q '0::/.*/' "$PROBE_LOG" || true
PROBE_SELF=$(sed -n 1p "$PROBE_LOG" | awk '{ print $NF }' | sed 's/^0:://')
PROBE_ENVOY=$(sed -n 2p "$PROBE_LOG" | awk '{ print $NF }' | sed 's/^0:://')
sg_log "in a burstable pod's container (private cgroupns): /proc/self/cgroup = $PROBE_SELF, /proc/$EPID/cgroup (the envoy) = $PROBE_ENVOY"

if has '^sidecar_governor_proxies 1$' || sg_wait 20 has '^sidecar_governor_proxies 1$'; then
	POD_MODE="governs the sidecar"
	governed "CRI pod"
else
	POD_MODE="governs nothing"
	# Inside its private cgroup namespace the agent reads the sidecar's cgroup as
	# `/../../pod<uid>/<id>` and must join it to its namespace root's host path
	# (src/discovery/procfs.rs, host_cgroup_path): not governed is a failure.
	sg_fail "CRI pod: sidecar not governed; /proc/$EPID/cgroup in a container reads '$PROBE_ENVOY'"
	grep -m 3 -e 'outside any resolvable cgroup' -e 'cgroup namespace' "$AGENT_LOG" | cut -c1-300 | sed 's/^/  agent| /'
fi

# kubelet's termination: StopContainer with the grace period (SIGTERM first).
t0=$(sg_now_ms)
if out=$(sg_cri stop-container "$CID_AG" --grace 30 2>&1); then
	sg_log "StopContainer returned after $(($(sg_now_ms) - t0)) ms ($out)"
else
	sg_fail "StopContainer failed: $out"
fi
sg_expect "CRI pod: sidecar's original cpu.max after SIGTERM" "$(sg_cpu_max "$SP")" "200000 100000"
sg_check "CRI pod: agent log: restored originals on exit" grep -q 'restored originals on exit' "$AGENT_LOG"
sg_check "CRI pod: agent log: stopped (not killed)" grep -q '"message":"stopped"' "$AGENT_LOG"
sg_log "agent log (CRI log file, last lines):"
grep -v -e 'no proxy process in the container' -e 'outside any resolvable cgroup' "$AGENT_LOG" | tail -n 6 | cut -c1-300 | sed 's/^/  agent| /'

# The same image with the same args, env, mounts and restrictions through `ctr run`, which (unlike
# the CRI plugin) gives no private cgroup namespace: must govern the sidecar end to end.
rm -rf "${SG_STATE:?}"/*
caps=""
for c in CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE; do
	caps="$caps --cap-drop CAP_$c"
done
ctr_opts=""
for o in $driver_opts; do
	case $o in
	--env) ctr_opts="$ctr_opts --env" ;;
	--mount) ctr_opts="$ctr_opts --mount" ;;
	*:*:ro) _s=${o%%:*} _d=${o#*:} && ctr_opts="$ctr_opts type=bind,src=$_s,dst=${_d%:ro},options=rbind:ro" ;;
	*:*) ctr_opts="$ctr_opts type=bind,src=${o%%:*},dst=${o#*:},options=rbind:rw" ;;
	*) ctr_opts="$ctr_opts $o" ;;
	esac
done
CTR_LOG=$SG_RUN/agent-ctr.log
ln -sf "$CTR_LOG" "$SG_RUN/agent.log"
# shellcheck disable=SC2086 # option lists
if ! ctr -n k8s.io run -d --snapshotter native --read-only --seccomp --net-host \
	--with-ns pid:/proc/1/ns/pid $caps $ctr_opts --env "POD_NAME=$AGENT_POD" --env NODE_NAME=sg-vm \
	--log-uri "file://$CTR_LOG" "$AGENT_IMAGE" sg-agent /usr/bin/sidecar-governor$args >"$SG_CRI_DIR/ctr-run.log" 2>&1; then
	sg_fail "ctr run failed: $(tail -n 3 "$SG_CRI_DIR/ctr-run.log" | tr '\n' ' ')"
fi
cpid=$(ctr -n k8s.io task ls 2>/dev/null | awk '$1 == "sg-agent" { print $2 }')
if [ -n "$cpid" ]; then
	sg_expect "ctr run: agent effective capabilities" "$(awk '/^CapEff:/ { print $2 }' "/proc/$cpid/status")" 0000000000000000
	sg_expect "ctr run: agent seccomp mode" "$(awk '/^Seccomp:/ { print $2 }' "/proc/$cpid/status")" 2
	sg_check "ctr run: agent's root filesystem is read-only" sh -c "awk '\$5 == \"/\" { print \$6 }' /proc/$cpid/mountinfo | grep -q '^ro'"
	sg_expect "ctr run: agent in the node's PID namespace" "$(readlink "/proc/$cpid/ns/pid")" "$(readlink /proc/1/ns/pid)"
	sg_expect "ctr run: agent in the node's cgroup namespace" "$(readlink "/proc/$cpid/ns/cgroup")" "$(readlink /proc/1/ns/cgroup)"
fi
sg_check "ctr run: ready" sg_wait 60 sg_http_ok /readyz
governed "ctr run"
ctr -n k8s.io task kill -s SIGTERM sg-agent >/dev/null 2>&1 || sg_fail "ctr task kill failed"
stopped() { [ "$(ctr -n k8s.io task ls 2>/dev/null | awk '$1 == "sg-agent" { print $3 }')" = STOPPED ]; }
sg_check "ctr run: agent stops on SIGTERM" sg_wait 30 stopped
sg_expect "ctr run: sidecar's original cpu.max restored after SIGTERM" "$(sg_cpu_max "$SP")" "200000 100000"
sg_check "ctr run: agent log: restored 1 original on exit" grep -q '"restored originals on exit","restored":1' "$CTR_LOG"
ctr -n k8s.io task rm -f sg-agent >/dev/null 2>&1 || true
ctr -n k8s.io container rm sg-agent >/dev/null 2>&1 || true

# shellcheck disable=SC2086 # a list of directories
sg_untouched_snapshot $UNTOUCHED >"$SG_RUN/untouched.now"
if cmp -s "$SG_RUN/untouched.before" "$SG_RUN/untouched.now"; then
	sg_ok "app, pod and QoS cgroups unchanged ($(wc -l <"$SG_RUN/untouched.before") values)"
else
	sg_fail "changed: $(diff "$SG_RUN/untouched.before" "$SG_RUN/untouched.now" | grep '^[-+][^-+]' | tr '\n' ' ')"
fi
sg_log "result: as a CRI pod the agent $POD_MODE; through ctr run (the node's cgroupns) it governs the sidecar"
sg_cri_cleanup
sg_done
