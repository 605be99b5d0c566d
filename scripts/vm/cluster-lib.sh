# shellcheck shell=dash
# VM side of the `cluster` scenario: a real single-node Kubernetes cluster on the VM's cgroup v2
# kernel. etcd, kube-apiserver (RBAC and Node authorisation, a ServiceAccount token signer),
# kube-controller-manager, kube-scheduler, containerd 2.x + runc, a kubelet (cgroupfs driver)
# registered as node sg-vm, the CNI bridge plugin for pod networking and kube-proxy (nftables) for
# Service addresses. No NIC: the node address 10.0.0.10 sits on a dummy interface, pods on cni0
# (10.244.0.0/24); nothing can leave the VM. Sourced after /sg/lib.sh; the files come from
# scripts/vm/cluster-host.sh.
# shellcheck disable=SC2034 # variables set here are read by the scenario

SG_K=/etc/kubernetes
SG_NODE_IP=10.0.0.10
SG_NODE=sg-vm
SG_CLUSTER_DIR=/sg/cluster
SG_CLOG=$SG_RUN/log
export KUBECONFIG=$SG_K/admin.conf
export PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

# kubectl, again (up to 3 times, 2 s apart) when the API server could not be reached at all: under
# TCG on a loaded host a TLS handshake sometimes exceeds client-go's 10 s, and one such miss must
# not fail an assertion about the cluster. Any answer from the API server is returned as it is.
k() {
	_ke=$(mktemp)
	_kn=0
	while :; do
		_krc=0
		kubectl --request-timeout=60s "$@" 2>"$_ke" || _krc=$?
		if [ "$_krc" != 0 ] && [ "$_kn" -lt 3 ] && grep -q -e 'TLS handshake timeout' -e 'Unable to connect to the server' \
			-e 'connect: connection refused' -e 'http2: client connection lost' "$_ke"; then
			_kn=$((_kn + 1))
			sleep 2
			continue
		fi
		cat "$_ke" >&2
		rm -f "$_ke"
		return "$_krc"
	done
}

# Phase timing: sg_phase NAME prints the time since the previous phase and since boot.
SG_PHASE_T=0
sg_phase() {
	_now=$(sg_now_ms)
	[ "$SG_PHASE_T" = 0 ] && SG_PHASE_T=$_now
	echo "PHASE $1 +$(((_now - SG_PHASE_T) / 1000))s (uptime $(cut -d' ' -f1 /proc/uptime)s)"
	echo "$1 $(((_now - SG_PHASE_T) / 1000)) $(cut -d' ' -f1 /proc/uptime)" >>"$SG_RUN/phases"
	SG_PHASE_T=$_now
}

# The last lines of the kubelet's, the agent's and the API server's logs (and the others').
sg_cluster_dump() {
	for _l in kube-apiserver kubelet containerd kube-controller-manager kube-scheduler kube-proxy etcd; do
		[ -f "$SG_CLOG/$_l.log" ] || continue
		echo "--- $_l: last lines"
		tail -n "${2:-25}" "$SG_CLOG/$_l.log" | cut -c1-400 | sed "s/^/  $_l| /"
	done
	echo "--- agent: last lines"
	for _f in /var/log/pods/sidecar-governor_*/agent/*.log; do
		[ -f "$_f" ] && tail -n 30 "$_f" | cut -c1-400 | sed 's/^/  agent| /'
	done
	echo "--- kubectl get pods -A -o wide"
	k get pods -A -o wide 2>&1 | sed 's/^/  /'
	echo "--- events (last 20)"
	k get events -A --sort-by=.lastTimestamp 2>&1 | tail -n 20 | cut -c1-300 | sed 's/^/  /'
}

# sg_bg NAME CMD...: a daemon with its log in $SG_CLOG/NAME.log; its PID in $SG_RUN/NAME.pid.
sg_bg() {
	_n=$1
	shift
	"$@" >>"$SG_CLOG/$_n.log" 2>&1 &
	echo $! >"$SG_RUN/$_n.pid"
}

sg_cluster_net() {
	# crc32c_generic first: libcrc32c (nf_tables, nf_conntrack) asks the crypto API for crc32c (a softdep).
	# kube-proxy's rules need nft_reject_ipv4/ipv6 (see SG_CLUSTER_MODULES in cluster-host.sh).
	for _m in crc32c_generic bridge br_netfilter veth dummy nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_fib_inet \
		nft_fib_ipv4 nft_fib_ipv6 nft_numgen nft_reject_inet nft_reject_ipv4 nft_reject_ipv6 nft_objref nft_limit nft_hash \
		nft_log nft_quota nft_redir nf_conntrack nf_nat nf_conntrack_netlink overlay; do
		modprobe "$_m" 2>>"$SG_CLOG/modprobe.log" || sg_log "modprobe $_m failed: $(tail -n 1 "$SG_CLOG/modprobe.log")"
	done
	ip link set dummy0 name node0 2>/dev/null || ip link add node0 type dummy
	ip addr add "$SG_NODE_IP/24" dev node0
	ip link set node0 up
	# A default route into the dummy device: components that look for one find it; a packet sent
	# there is dropped (no NIC).
	ip route add default dev node0
	echo 1 >/proc/sys/net/ipv4/ip_forward
	echo 1 >/proc/sys/net/bridge/bridge-nf-call-iptables 2>/dev/null || true
	echo 1 >/proc/sys/net/ipv4/conf/all/route_localnet
	mount --make-rshared /
	# kubelet's cgroupfs manager wants every controller the kernel has enabled for its pods.
	for _c in cpuset cpu io memory hugetlb pids; do
		grep -qw "$_c" "$CG/cgroup.controllers" && echo "+$_c" >"$CG/cgroup.subtree_control" 2>/dev/null
	done
	hostname "$SG_NODE"
	mkdir -p /var/lib/etcd /var/lib/kubelet /var/log/pods /var/log/containers /etc/cni/net.d /run/containerd "$SG_CLOG"
	cp "$SG_CLUSTER_DIR/10-bridge.conflist" /etc/cni/net.d/
}

# The controllers a node with Deployments, a DaemonSet, ServiceAccounts and namespace deletion
# needs (TCG is slow: the other ~40 only cost CPU here).
SG_KCM_CONTROLLERS=serviceaccount-token-controller,serviceaccount-controller,root-ca-certificate-publisher-controller,\
deployment-controller,replicaset-controller,daemonset-controller,endpoints-controller,endpointslice-controller,\
resourcequota-controller,namespace-controller,garbage-collector-controller,pod-garbage-collector-controller,\
node-lifecycle-controller,clusterrole-aggregation-controller,ttl-controller
# Go's collector less often: memory is plentiful (6 GiB), CPU under TCG is not.
export GOGC=400

sg_cluster_control_plane() {
	_p=$SG_K/pki
	sg_bg etcd etcd --name sg-vm --data-dir /var/lib/etcd --unsafe-no-fsync \
		--listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
		--listen-peer-urls http://127.0.0.1:2380 --initial-advertise-peer-urls http://127.0.0.1:2380 \
		--initial-cluster sg-vm=http://127.0.0.1:2380 --log-level warn
	sg_bg kube-apiserver kube-apiserver --etcd-servers=http://127.0.0.1:2379 \
		--advertise-address="$SG_NODE_IP" --bind-address=0.0.0.0 --secure-port=6443 \
		--tls-cert-file="$_p/apiserver.crt" --tls-private-key-file="$_p/apiserver.key" --client-ca-file="$_p/ca.crt" \
		--service-cluster-ip-range=10.96.0.0/16 \
		--service-account-issuer=https://kubernetes.default.svc.cluster.local \
		--service-account-key-file="$_p/sa.pub" --service-account-signing-key-file="$_p/sa.key" \
		--api-audiences=https://kubernetes.default.svc.cluster.local \
		--authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
		--kubelet-client-certificate="$_p/apiserver-kubelet-client.crt" --kubelet-client-key="$_p/apiserver-kubelet-client.key" \
		--kubelet-preferred-address-types=InternalIP --allow-privileged=true --profiling=false \
		--enable-priority-and-fairness=false --event-ttl=1h --v=1
	if ! sg_wait 300 sh -c 'kubectl get --raw /readyz >/dev/null 2>&1'; then
		sg_fail "kube-apiserver not ready within 300 s"
		return 1
	fi
	sg_phase apiserver-ready
	sg_bg kube-controller-manager kube-controller-manager --kubeconfig="$SG_K/controller-manager.conf" \
		--authentication-kubeconfig="$SG_K/controller-manager.conf" --authorization-kubeconfig="$SG_K/controller-manager.conf" \
		--bind-address=127.0.0.1 --leader-elect=false --use-service-account-credentials=true \
		--root-ca-file="$_p/ca.crt" --service-account-private-key-file="$_p/sa.key" \
		--cluster-signing-cert-file="$_p/ca.crt" --cluster-signing-key-file="$_p/ca.key" \
		--controllers="$SG_KCM_CONTROLLERS" --node-monitor-grace-period=5m --profiling=false --v=1
	sg_bg kube-scheduler kube-scheduler --kubeconfig="$SG_K/scheduler.conf" \
		--authentication-kubeconfig="$SG_K/scheduler.conf" --authorization-kubeconfig="$SG_K/scheduler.conf" \
		--bind-address=127.0.0.1 --leader-elect=false --profiling=false --v=1
}

# containerd and the images: started while the API server comes up (they do not need it).
sg_cluster_runtime() {
	sg_bg containerd containerd --config "$SG_CLUSTER_DIR/containerd.toml"
	if ! sg_wait 120 sh -c 'ctr version >/dev/null 2>&1'; then
		sg_fail "containerd did not answer within 120 s"
		return 1
	fi
	for _i in images agent-image; do
		if ! ctr -n k8s.io images import --platform linux/amd64 --snapshotter native "$SG_CLUSTER_DIR/$_i.tar" >>"$SG_CLOG/import.log" 2>&1; then
			sg_fail "ctr images import $_i.tar failed: $(tail -n 2 "$SG_CLOG/import.log" | tr '\n' ' ')"
			return 1
		fi
	done
	sg_log "images: $(ctr -n k8s.io images ls -q | tr '\n' ' ')"
	sg_phase containerd-images
}

sg_cluster_node() {
	sg_bg kubelet kubelet --config="$SG_CLUSTER_DIR/kubelet.yaml" --kubeconfig="$SG_K/kubelet.conf" \
		--node-ip="$SG_NODE_IP" --hostname-override="$SG_NODE" --v=1
	sg_bg kube-proxy kube-proxy --config="$SG_CLUSTER_DIR/kube-proxy.yaml"
	if ! sg_wait 300 sh -c "kubectl get node $SG_NODE -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' 2>/dev/null | grep -q True"; then
		sg_fail "node $SG_NODE not Ready within 300 s"
		return 1
	fi
	sg_phase node-ready
	# kube-proxy's nftables transaction is all or nothing: the kubernetes Service's address in its
	# cluster-ips set means every rule went in (the agent's Events go through that address).
	if ! sg_wait 180 sh -c 'nft list set ip kube-proxy cluster-ips 2>/dev/null | grep -q 10.96.0.1'; then
		sg_fail "kube-proxy did not program the kubernetes Service (10.96.0.1) into nftables within 180 s"
		grep -a -A4 'sync failed' "$SG_CLOG/kube-proxy.log" | tail -n 12 | cut -c1-250 | sed 's/^/  kube-proxy| /'
	else
		sg_log "kube-proxy: the kubernetes Service in nftables ($(nft list table ip kube-proxy | wc -l) lines)"
	fi
}

# The whole cluster, phase by phase.
sg_cluster_up() {
	sg_phase start
	sg_cluster_net
	sg_cluster_runtime >"$SG_RUN/runtime.out" 2>&1 &
	_rt=$!
	sg_cluster_control_plane || return 1
	wait "$_rt" || true
	cat "$SG_RUN/runtime.out"
	[ ! -s "$SG_RUN/failures" ] || return 1
	sg_cluster_node || return 1
	sg_log "node: $(k get node -o wide --no-headers 2>&1)"
}

# sg_pod_of NAMESPACE LABEL: the name of the (one running) pod with that label.
sg_pod_of() {
	k -n "$1" get pods -l "$2" --field-selector=status.phase=Running -o jsonpath='{.items[0].metadata.name}' 2>/dev/null
}

# sg_cid_of NAMESPACE POD CONTAINER: the container's runtime ID (containers and init containers).
sg_cid_of() {
	k -n "$1" get pod "$2" -o jsonpath="{.status.containerStatuses[?(@.name==\"$3\")].containerID}{.status.initContainerStatuses[?(@.name==\"$3\")].containerID}" 2>/dev/null |
		sed 's|^containerd://||'
}

# sg_cg_of NAMESPACE POD CONTAINER: the container's cgroup directory, as kubelet made it
# (cgroupfs driver: kubepods[/burstable|/besteffort]/pod<uid>/<id>).
sg_cg_of() {
	_uid=$(k -n "$1" get pod "$2" -o jsonpath='{.metadata.uid}')
	_cid=$(sg_cid_of "$1" "$2" "$3")
	[ -n "$_uid" ] && [ -n "$_cid" ] || return 1
	for _d in "$CG/kubepods/burstable/pod$_uid/$_cid" "$CG/kubepods/pod$_uid/$_cid" "$CG/kubepods/besteffort/pod$_uid/$_cid"; do
		[ -d "$_d" ] && echo "$_d" && return 0
	done
	return 1
}

# sg_envoy_in CGROUP_DIR: the PID of the envoy process in that cgroup.
sg_envoy_in() {
	for _p in $(cat "$1/cgroup.procs" 2>/dev/null); do
		[ "$(cat "/proc/$_p/comm" 2>/dev/null)" = envoy ] && echo "$_p" && return 0
	done
	return 1
}

# sg_agent_metrics: the agent pod's /metrics (over the pod network) into $SG_RUN/metrics.txt.
sg_agent_metrics() {
	_ip=$(k -n sidecar-governor get pods -l app.kubernetes.io/name=sidecar-governor -o jsonpath='{.items[0].status.podIP}' 2>/dev/null)
	[ -n "$_ip" ] || return 1
	timeout 5 wget -q -O "$SG_RUN/metrics.txt" "http://$_ip:9477/metrics"
}
sg_agent_has() { sg_agent_metrics && grep -q -e "$1" "$SG_RUN/metrics.txt"; }

# Phases a debugging run leaves out: SG_CLUSTER_SKIP=events,prometheus on the host becomes
# sg.cluster_skip= on the kernel command line. A run that skipped anything never passes (the
# scenario fails at its end naming what it left out).
SG_CLUSTER_SKIP=$(tr ' ' '\n' </proc/cmdline | sed -n 's/^sg\.cluster_skip=//p' | tail -n 1 | tr , ' ')
sg_phase_wanted() {
	case " $SG_CLUSTER_SKIP " in
	*" $1 "*)
		echo "PHASE $1 SKIPPED (sg.cluster_skip)"
		echo "$1" >>"$SG_RUN/skipped"
		return 1
		;;
	esac
	return 0
}

# sg_agent_api_check PID: from the agent process's own network namespace, with its own
# ServiceAccount token and CA (as its kube client sees them) and the KUBERNETES_SERVICE_* address
# the kubelet gave it, ask the API server whether it may create events.k8s.io Events in shop.
# Prints kubectl's answer ("yes") or its error.
sg_agent_api_check() {
	_sa=/proc/$1/root/var/run/secrets/kubernetes.io/serviceaccount
	_host=$(tr '\0' '\n' <"/proc/$1/environ" | sed -n 's/^KUBERNETES_SERVICE_HOST=//p')
	_port=$(tr '\0' '\n' <"/proc/$1/environ" | sed -n 's/^KUBERNETES_SERVICE_PORT=//p')
	cp "$_sa/ca.crt" "$SG_RUN/sa-ca.crt" && cp "$_sa/token" "$SG_RUN/sa-token" || return 1
	cat >"$SG_RUN/sa.conf" <<EOC
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://$_host:$_port", certificate-authority: $SG_RUN/sa-ca.crt}}]
users: [{name: u, user: {tokenFile: $SG_RUN/sa-token}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
EOC
	echo "via https://$_host:$_port: $(nsenter -t "$1" -n kubectl --kubeconfig="$SG_RUN/sa.conf" --request-timeout=30s \
		auth can-i create events.events.k8s.io -n shop 2>&1 | tr '\n' ' ')"
}

# sg_agent_net_diag PID: why the agent's network namespace does not reach the API server: its
# routes, a TCP connect straight to the API server and one to the kubernetes Service address,
# kube-proxy's nftables rules for that Service and kube-proxy's last lines.
sg_agent_net_diag() {
	echo "--- the agent's network namespace"
	nsenter -t "$1" -n ip -4 addr 2>&1 | sed 's/^/  ip| /'
	nsenter -t "$1" -n ip -4 route 2>&1 | sed 's/^/  route| /'
	for _t in "$SG_NODE_IP 6443" "10.96.0.1 443"; do
		# shellcheck disable=SC2086 # host and port
		nsenter -t "$1" -n timeout 8 nc $_t </dev/null >/dev/null 2>&1
		echo "  tcp connect to $_t from the pod network: exit $? (0 connected, 124 no answer)"
	done
	echo "--- nft: kube-proxy's table ($(nft list table ip kube-proxy 2>/dev/null | wc -l) lines)"
	nft list table ip kube-proxy 2>&1 | grep -n -e 'hook' -e '10.96.0.1' -e 'dnat' -e 'masquerade' | head -n 20 | cut -c1-200 | sed 's/^/  nft| /'
	nft list ruleset 2>/dev/null | grep -c 'table' | sed 's/^/  nft tables: /'
	echo "--- kube-proxy: last lines"
	tail -n 15 "$SG_CLOG/kube-proxy.log" | cut -c1-300 | sed 's/^/  kube-proxy| /'
}
