# shellcheck shell=bash
# Host side of the `cluster` VM scenario: a real Kubernetes node inside the qemu VM. Sourced by
# scripts/vm-e2e.sh after scripts/vm/host.sh and scripts/vm/cri-host.sh when `cluster` is asked for.
#
#   sg_cluster_host_build   the Go binaries (scripts/cluster-build.sh: cached outside the work tree,
#                           built only when the cache is empty), SG_CLUSTER_BIN_* set to their dirs
#   sg_cluster_host_fetch   Debian's runc, containernetworking-plugins and nftables (+ libraries):
#                           `apt-get download` into $SG_VM_CACHE/debs, unpacked into
#                           $SG_VM_CACHE/cluster-root; the kernel modules the node needs (bridge,
#                           veth, dummy, nf_tables and NAT, br_netfilter) with their dependencies
#                           (the host's depmod/modprobe resolve them) into $SG_VM_CACHE/cluster-modules
#   sg_cluster_host_pki     a CA, the API server's serving certificate, client certificates for
#                           admin/kubelet/controller-manager/scheduler/kube-proxy, the ServiceAccount
#                           signing key, and their kubeconfigs (openssl; fresh per initramfs)
#   sg_cluster_host_extra   the initramfs hook (SG_VM_EXTRA): all of the above, the images
#                           (workload/pause from cri-host.sh, the agent from scripts/build-image.sh),
#                           daemonset/ and the workload manifests, /sg/cluster-lib.sh
#
# Environment: SG_CLUSTER_CACHE (scripts/cluster-build.sh's cache, default /var/cache/sidecar-governor).

SG_CLUSTER_ROOT=${SG_CLUSTER_ROOT:-$SG_VM_CACHE/cluster-root}
SG_CLUSTER_DEBS="runc containernetworking-plugins nftables libnftables1 libnftnl11 libmnl0 libjansson4 libgmp10 libxtables12 libedit2 libbsd0 libmd0 libtinfo6 libseccomp2"
# Modules the node needs (dependencies are added from modules.dep).
# kube-proxy's nftables rules `reject` in its ip and ip6 tables (nft_reject_ipv4/ipv6, not the
# inet family's module): without them its whole transaction fails and no Service address works.
SG_CLUSTER_MODULES="crc32c_generic bridge br_netfilter veth dummy nf_tables nft_chain_nat nft_nat nft_masq nft_ct nft_fib_inet nft_fib_ipv4 nft_fib_ipv6 nft_numgen nft_reject_inet nft_reject_ipv4 nft_reject_ipv6 nft_objref nft_limit nft_hash nft_log nft_quota nft_redir nf_conntrack nf_nat nf_conntrack_netlink overlay"

sg_cluster_host_build() {
	local out
	if [[ ${SG_VM_NO_BUILD:-} != 1 ]]; then
		"$SG_REPO/scripts/cluster-build.sh" >&2 || sg_host_die "scripts/cluster-build.sh failed"
	fi
	out=$("$SG_REPO/scripts/cluster-build.sh" --print-dirs)
	SG_CLUSTER_BIN_K8S=$(awk '$1 == "k8s" { print $2 "/bin" }' <<<"$out")
	SG_CLUSTER_BIN_ETCD=$(awk '$1 == "etcd" { print $2 "/bin" }' <<<"$out")
	SG_CLUSTER_BIN_CONTAINERD=$(awk '$1 == "containerd" { print $2 "/bin" }' <<<"$out")
	SG_CLUSTER_BIN_HELM=$(awk '$1 == "helm" { print $2 "/bin" }' <<<"$out")
	local d
	for d in "$SG_CLUSTER_BIN_K8S" "$SG_CLUSTER_BIN_ETCD" "$SG_CLUSTER_BIN_CONTAINERD" "$SG_CLUSTER_BIN_HELM"; do
		[[ -f $d/.built ]] || sg_host_die "no build in $d (scripts/cluster-build.sh)"
		sg_host_log "cluster binaries: $d ($(cat "$d/.built"))"
	done
}

sg_cluster_host_fetch() {
	local pkg tmp have missing=()
	mkdir -p "$SG_CRI_CACHE"
	for pkg in $SG_CLUSTER_DEBS; do
		have=$(find "$SG_CRI_CACHE" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
		[[ -n $have ]] || missing+=("$pkg")
	done
	if ((${#missing[@]})); then
		sg_host_log "downloading ${missing[*]} (apt-get download)"
		tmp=$(mktemp -d)
		chmod 0777 "$tmp"
		if ! (cd "$tmp" && apt-get download -q "${missing[@]}" >&2); then
			apt-get update -qq >&2
			(cd "$tmp" && apt-get download -q "${missing[@]}" >&2) || sg_host_die "apt-get download ${missing[*]} failed"
		fi
		mv "$tmp"/*.deb "$SG_CRI_CACHE/"
		rm -rf "$tmp"
	fi
	local stamp=""
	for pkg in $SG_CLUSTER_DEBS; do
		stamp="$stamp $(cd "$SG_CRI_CACHE" && find . -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)"
	done
	if [[ ! -f $SG_CLUSTER_ROOT/.debs || $(cat "$SG_CLUSTER_ROOT/.debs") != "$stamp" ]]; then
		rm -rf "$SG_CLUSTER_ROOT"
		mkdir -p "$SG_CLUSTER_ROOT"
		for pkg in $stamp; do dpkg-deb -x "$SG_CRI_CACHE/$pkg" "$SG_CLUSTER_ROOT"; done
		echo "$stamp" >"$SG_CLUSTER_ROOT/.debs"
	fi
	local b
	for b in usr/sbin/runc usr/sbin/nft usr/lib/cni/bridge usr/lib/cni/host-local usr/lib/cni/loopback; do
		[[ -x $SG_CLUSTER_ROOT/$b ]] || sg_host_die "no $b in the unpacked packages ($SG_CLUSTER_DEBS)"
	done
	sg_host_log "cluster packages:$stamp"
	sg_cluster_host_modules
}

# The modules and their dependencies, with a modules.dep of their own, in
# $SG_VM_CACHE/cluster-modules/lib/modules/<version>/ (cached per kernel).
sg_cluster_host_modules() {
	local ver deb tmp m dep
	ver=$(basename "$SG_KERNEL")
	ver=${ver#vmlinuz-}
	SG_CLUSTER_MODDIR=$SG_VM_CACHE/cluster-modules/$ver
	[[ -f $SG_CLUSTER_MODDIR/.complete && $(cat "$SG_CLUSTER_MODDIR/.complete") == "$SG_CLUSTER_MODULES" ]] && return
	[[ -z ${SG_VM_KERNEL:-} ]] || sg_host_die "the cluster scenario needs Debian's kernel and its modules (unset SG_VM_KERNEL)"
	if [[ $(sg_host_kernel_suite) != bookworm ]]; then
		deb=$(sg_host_kernel_deb "linux-image-$ver")
	else
		deb=$( (find "$SG_VM_CACHE" "$SG_VM_CACHE/debs" -maxdepth 1 -name "linux-image-${ver}_*.deb" 2>/dev/null || true) | sort -V | tail -n 1)
	fi
	tmp=$(mktemp -d)
	chmod 0777 "$tmp"
	if [[ -z $deb ]]; then
		sg_host_log "downloading linux-image-$ver for its modules (apt-get download)"
		(cd "$tmp" && apt-get download -q "linux-image-$ver" >&2) || sg_host_die "apt-get download linux-image-$ver failed"
		deb=$(find "$tmp" -maxdepth 1 -name "linux-image-${ver}_*.deb" | head -n 1)
		mkdir -p "$SG_VM_CACHE/debs"
		cp "$deb" "$SG_VM_CACHE/debs/"
	fi
	# bookworm: ./lib/modules/<ver>/*.ko; trixie: merged /usr and xz-compressed modules
	# (./usr/lib/modules/<ver>/*.ko.xz), unpacked to plain .ko for busybox's depmod and modprobe.
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards "./*lib/modules/$ver" || sg_host_die "no modules in $deb"
	if [[ -d $tmp/usr/lib/modules/$ver && ! -d $tmp/lib/modules/$ver ]]; then
		mkdir -p "$tmp/lib/modules"
		mv "$tmp/usr/lib/modules/$ver" "$tmp/lib/modules/"
	fi
	find "$tmp/lib/modules/$ver" -name '*.ko.xz' -exec xz -d {} +
	find "$tmp/lib/modules/$ver" -name '*.ko.zst' -exec zstd -q -d --rm {} +
	# busybox's depmod (the VM's modprobe is busybox's too): modules.dep lists every module's
	# dependencies transitively.
	busybox depmod -b "$tmp" "$ver" || sg_host_die "depmod failed"
	local mdir=$tmp/lib/modules/$ver
	rm -rf "$SG_CLUSTER_MODDIR"
	mkdir -p "$SG_CLUSTER_MODDIR/lib/modules/$ver"
	for m in $SG_CLUSTER_MODULES; do
		if ! grep -E "/$m\.ko:" "$mdir/modules.dep" >>"$tmp/deps"; then
			# Linux 6.2+ links some expressions into nf_tables.ko (nft_objref in trixie's 6.12):
			# the VM's modprobe of them then fails harmlessly (cluster-lib.sh logs it).
			[[ $(sg_host_kernel_suite) != bookworm ]] || sg_host_die "no module $m in $deb"
			sg_host_log "cluster modules: $m is no module of $ver (built in), skipped"
		fi
	done
	tr -d ':' <"$tmp/deps" | tr ' ' '\n' | sort -u | while read -r dep; do
		[[ -n $dep ]] || continue
		mkdir -p "$SG_CLUSTER_MODDIR/lib/modules/$ver/$(dirname "$dep")"
		cp "$mdir/$dep" "$SG_CLUSTER_MODDIR/lib/modules/$ver/$dep"
	done
	busybox depmod -b "$SG_CLUSTER_MODDIR" "$ver" || sg_host_die "depmod failed"
	rm -rf "$tmp"
	echo "$SG_CLUSTER_MODULES" >"$SG_CLUSTER_MODDIR/.complete"
	sg_host_log "cluster modules: $(find "$SG_CLUSTER_MODDIR" -name '*.ko' | wc -l) in $SG_CLUSTER_MODDIR"
}

# Certificates and kubeconfigs into $1 (the initramfs's /etc/kubernetes).
SG_CLUSTER_NODE_IP=10.0.0.10
SG_CLUSTER_SERVICE_IP=10.96.0.1
sg_cluster_host_pki() {
	local k=$1 p=$1/pki
	mkdir -p "$p"
	openssl req -x509 -newkey rsa:2048 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" -days 30 \
		-subj "/CN=sg-vm-ca" -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null ||
		sg_host_die "openssl: CA"
	# cert NAME SUBJECT EXT
	cert() {
		if ! openssl req -newkey rsa:2048 -nodes -keyout "$p/$1.key" -out "$p/$1.csr" -subj "$2" 2>/dev/null ||
			! openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -days 30 \
				-out "$p/$1.crt" -extfile <(printf '%s\n' "$3") 2>/dev/null; then
			sg_host_die "openssl: $1"
		fi
		rm -f "$p/$1.csr"
	}
	local client="basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=clientAuth"
	cert apiserver "/CN=kube-apiserver" "basicConstraints=CA:FALSE
keyUsage=critical,digitalSignature,keyEncipherment
extendedKeyUsage=serverAuth
subjectAltName=DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost,DNS:sg-vm,IP:$SG_CLUSTER_SERVICE_IP,IP:$SG_CLUSTER_NODE_IP,IP:127.0.0.1"
	cert apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" "$client"
	cert admin "/O=system:masters/CN=kubernetes-admin" "$client"
	cert kubelet "/O=system:nodes/CN=system:node:sg-vm" "$client"
	cert controller-manager "/CN=system:kube-controller-manager" "$client"
	cert scheduler "/CN=system:kube-scheduler" "$client"
	cert kube-proxy "/CN=system:kube-proxy" "$client"
	if ! openssl genrsa -out "$p/sa.key" 2048 2>/dev/null || ! openssl rsa -in "$p/sa.key" -pubout -out "$p/sa.pub" 2>/dev/null; then
		sg_host_die "openssl: ServiceAccount key"
	fi
	local n
	for n in admin kubelet controller-manager scheduler kube-proxy; do
		cat >"$k/$n.conf" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: sg-vm
    cluster:
      certificate-authority: /etc/kubernetes/pki/ca.crt
      server: https://$SG_CLUSTER_NODE_IP:6443
users:
  - name: $n
    user:
      client-certificate: /etc/kubernetes/pki/$n.crt
      client-key: /etc/kubernetes/pki/$n.key
contexts:
  - name: $n@sg-vm
    context:
      cluster: sg-vm
      user: $n
current-context: $n@sg-vm
EOF
	done
}

# The initramfs hook.
sg_cluster_host_extra() {
	local root=$1 b d rel=$SG_REPO/target/release
	mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/usr/local/bin" "$root/opt/cni/bin" "$root/sg/cluster" \
		"$root/etc/kubernetes" "$root/etc/cni/net.d"
	for b in kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl; do
		cp "$SG_CLUSTER_BIN_K8S/$b" "$root/usr/local/bin/"
	done
	cp "$SG_CLUSTER_BIN_ETCD/etcd" "$SG_CLUSTER_BIN_ETCD/etcdctl" "$root/usr/local/bin/"
	for b in containerd containerd-shim-runc-v2 ctr; do cp "$SG_CLUSTER_BIN_CONTAINERD/$b" "$root/usr/local/bin/"; done
	cp "$SG_CLUSTER_BIN_HELM/helm" "$root/usr/local/bin/"
	# Debian's Prometheus, scraping the agent as the ServiceMonitor says (as scripts/prometheus-e2e.sh
	# gets it: apt when missing).
	if ! command -v prometheus >/dev/null; then
		{ apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; } </dev/null >&2 ||
			sg_host_die "cannot install prometheus (apt)"
	fi
	cp "$(command -v prometheus)" "$root/usr/local/bin/"
	sg_host_copy_libs "$root" "$(command -v prometheus)"
	cp "$SG_CLUSTER_ROOT/usr/sbin/runc" "$SG_CLUSTER_ROOT/usr/sbin/nft" "$root/usr/sbin/"
	for b in bridge host-local loopback; do cp "$SG_CLUSTER_ROOT/usr/lib/cni/$b" "$root/opt/cni/bin/"; done
	# Libraries of the Debian binaries, from the unpacked packages first, else the host's.
	for b in usr/sbin/runc usr/sbin/nft usr/lib/cni/bridge usr/lib/cni/host-local usr/lib/cni/loopback; do
		LD_LIBRARY_PATH=$SG_CLUSTER_ROOT/usr/lib/x86_64-linux-gnu:$SG_CLUSTER_ROOT/lib/x86_64-linux-gnu \
			ldd "$SG_CLUSTER_ROOT/$b" 2>/dev/null | grep -q 'not found' && sg_host_die "$b: a library is missing"
		{ LD_LIBRARY_PATH=$SG_CLUSTER_ROOT/usr/lib/x86_64-linux-gnu:$SG_CLUSTER_ROOT/lib/x86_64-linux-gnu ldd "$SG_CLUSTER_ROOT/$b" 2>/dev/null || true; } |
			{ grep -o '/[^ ]*' || true; } | while read -r d; do
			local dst=${d#"$SG_CLUSTER_ROOT"}
			[[ -e $root$dst ]] && continue
			mkdir -p "$root$(dirname "$dst")"
			cp -L "$d" "$root$dst"
		done
	done
	# Kernel modules (busybox modprobe reads modules.dep).
	cp -a "$SG_CLUSTER_MODDIR/lib" "$root/"
	sg_cluster_host_pki "$root/etc/kubernetes"
	# Images: the workload image (also the pause image) and the agent image.
	sg_cri_host_image "$root/sg/cluster/images.tar"
	BIN=${SG_VM_AGENT:-$rel/sidecar-governor} \
		"$SG_REPO/scripts/build-image.sh" --no-build --out "$root/sg/cluster/agent-image.tar" >&2 ||
		sg_host_die "scripts/build-image.sh failed"
	# What the scenario applies: the real base, the test overlay, the workloads, the chart.
	cp -a "$SG_REPO/daemonset" "$root/sg/cluster/daemonset"
	cp -a "$SG_VM_DIR/cluster/." "$root/sg/cluster/"
	if [[ -d $SG_REPO/charts/sidecar-governor ]]; then
		mkdir -p "$root/sg/cluster/charts"
		cp -a "$SG_REPO/charts/sidecar-governor" "$root/sg/cluster/charts/"
	fi
	cp "$SG_VM_DIR/cluster-lib.sh" "$SG_VM_DIR/cri-lib.sh" "$root/sg/"
	printf 'nameserver 127.0.0.1\n' >"$root/etc/resolv.conf"
	printf '127.0.0.1 localhost\n%s sg-vm\n' "$SG_CLUSTER_NODE_IP" >"$root/etc/hosts"
	printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' >"$root/etc/passwd"
	printf 'root:x:0:\nnogroup:x:65534:\n' >"$root/etc/group"
	touch "$root/sg/switch-root"
}
