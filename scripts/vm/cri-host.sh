# shellcheck shell=bash
# Host side of the `cri` VM scenario (a real containerd in the VM). Sourced by scripts/vm-e2e.sh
# after scripts/vm/host.sh when the `cri` scenario is asked for; the other scenarios never load it.
#
#   sg_cri_host_fetch    Debian's containerd and runc: `apt-get download` + `dpkg-deb -x`, cached
#                        in $SG_VM_CACHE/debs and unpacked into $SG_VM_CACHE/cri-root
#   sg_cri_host_build    cargo build --release --example cri_driver (the stand-in kubelet)
#   sg_cri_host_image    the test image as a docker-archive tar (one layer: busybox-static, the
#                        stand-in proxy under the names envoy, linkerd2-proxy and app with its libraries, a
#                        pilot-agent script), tagged as the workload image and the pause image
#   sg_cri_host_extra    the initramfs hook (SG_VM_EXTRA): containerd, its shim, ctr, runc and their
#                        libraries, cri_driver, the image, containerd's config, /sg/cri-lib.sh, and
#                        the marker that makes /init switch_root into a tmpfs (runc cannot
#                        pivot_root out of an initramfs)
#   sg_cri_host_extra_agent_image  the same, plus the agent image of scripts/build-image.sh
#                        (docker-archive, `sidecar-governor:dev`) at /sg/cri/agent-image.tar for
#                        the `cri-image` scenario

SG_CRI_CACHE=${SG_CRI_CACHE:-$SG_VM_CACHE/debs}
SG_CRI_ROOT=${SG_CRI_ROOT:-$SG_VM_CACHE/cri-root}
SG_CRI_IMAGE_NAME=registry.local/sg-test:1
SG_CRI_PAUSE_NAME=registry.local/pause:1

sg_cri_host_fetch() {
	sg_host_debs "$SG_CRI_CACHE" "$SG_CRI_ROOT" containerd runc
	local b
	for b in usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr usr/sbin/runc; do
		[[ -x $SG_CRI_ROOT/$b ]] || sg_host_die "no $b in the unpacked containerd/runc packages"
	done
	sg_host_log "containerd/runc: $SG_DEBS"
}

sg_cri_host_build() {
	if [[ ${SG_VM_NO_BUILD:-} == 1 ]]; then return; fi
	sg_host_log "cargo build --release --example cri_driver"
	(cd "$SG_REPO" && cargo build --release --quiet --example cri_driver) >&2 ||
		sg_host_die "cargo build --example cri_driver failed"
}

# sg_cri_host_image OUT.tar: the docker-archive image (docker save layout).
sg_cri_host_image() {
	local out=$1 work layer bb rel=$SG_REPO/target/release a
	work=$(mktemp -d)
	layer=$work/rootfs
	mkdir -p "$layer"/{bin,usr/local/bin,etc,tmp,proc,sys,dev,ctl}
	bb=$(command -v busybox)
	cp "$bb" "$layer/bin/busybox"
	for a in $("$bb" --list); do
		[[ $a == busybox ]] && continue
		[[ -e $layer/bin/$a ]] || ln -s busybox "$layer/bin/$a"
	done
	cp "$rel/examples/stand_in_proxy" "$layer/bin/envoy"
	cp "$rel/examples/stand_in_proxy" "$layer/bin/app"
	cp "$rel/examples/stand_in_proxy" "$layer/bin/linkerd2-proxy"
	sg_host_copy_libs "$layer" "$rel/examples/stand_in_proxy"
	cat >"$layer/usr/local/bin/pilot-agent" <<'EOF'
#!/bin/sh
# Stand-in for Istio's pilot-agent: `pilot-agent proxy sidecar|router|waypoint [ENVOY ARGS...]`
# runs the envoy stand-in as its child (its command line keeps `proxy router` for a gateway).
shift 2
/bin/envoy --mode idle --concurrency 2 "$@" &
child=$!
trap 'kill $child 2>/dev/null; exit 0' TERM INT
wait $child
EOF
	chmod 0755 "$layer/usr/local/bin/pilot-agent"
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$layer/etc/passwd"
	printf 'root:x:0:\n' >"$layer/etc/group"
	chmod 1777 "$layer/tmp"
	mkdir -p "$work/archive"
	tar --numeric-owner --owner=0 --group=0 --sort=name -C "$layer" -cf "$work/layer.tar" .
	local lsum csum
	lsum=$(sha256sum "$work/layer.tar" | cut -d' ' -f1)
	mkdir -p "$work/archive/$lsum"
	mv "$work/layer.tar" "$work/archive/$lsum/layer.tar"
	printf '{"architecture":"amd64","os":"linux","config":{"Env":["PATH=/usr/local/bin:/usr/bin:/bin"],"Entrypoint":["/bin/sleep","2147483647"],"WorkingDir":"/"},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
		"$lsum" >"$work/config.json"
	csum=$(sha256sum "$work/config.json" | cut -d' ' -f1)
	mv "$work/config.json" "$work/archive/$csum.json"
	printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]},{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
		"$csum" "$SG_CRI_IMAGE_NAME" "$lsum" "$csum" "$SG_CRI_PAUSE_NAME" "$lsum" >"$work/archive/manifest.json"
	tar --numeric-owner --owner=0 --group=0 -C "$work/archive" -cf "$out" .
	rm -rf "$work"
}

# The initramfs hook: adds the runtime and the test's tools to the root $1.
sg_cri_host_extra() {
	local root=$1 b rel=$SG_REPO/target/release
	mkdir -p "$root/usr/bin" "$root/usr/sbin" "$root/sg/cri" "$root/etc"
	for b in usr/bin/containerd usr/bin/containerd-shim-runc-v2 usr/bin/ctr usr/sbin/runc; do
		cp "$SG_CRI_ROOT/$b" "$root/$b"
		sg_host_copy_libs "$root" "$SG_CRI_ROOT/$b"
	done
	[[ -x $rel/examples/cri_driver ]] || sg_host_die "no $rel/examples/cri_driver"
	cp "$rel/examples/cri_driver" "$root/usr/local/bin/cri_driver"
	sg_host_copy_libs "$root" "$rel/examples/cri_driver"
	sg_cri_host_image "$root/sg/cri/images.tar"
	cat >"$root/sg/cri/containerd.toml" <<EOF
version = 2
root = "/var/lib/containerd"
state = "/run/containerd"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs", "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.overlayfs", "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "/run/containerd/containerd.sock"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$SG_CRI_PAUSE_NAME"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        BinaryName = "/usr/sbin/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
	cp "$SG_VM_DIR/cri-lib.sh" "$root/sg/cri-lib.sh"
	printf 'nameserver 127.0.0.1\n' >"$root/etc/resolv.conf"
	# /init: copy the root into a tmpfs and switch_root there first.
	touch "$root/sg/switch-root"
}

# The `cri-image` scenario's initramfs hook: the cri content plus the agent image, assembled by
# scripts/build-image.sh from the agent binary the VM gets ($SG_VM_AGENT or the release build).
sg_cri_host_extra_agent_image() {
	local root=$1
	sg_cri_host_extra "$root"
	BIN=${SG_VM_AGENT:-$SG_REPO/target/release/sidecar-governor} \
		"$SG_REPO/scripts/build-image.sh" --no-build --out "$root/sg/cri/agent-image.tar" >&2 ||
		sg_host_die "scripts/build-image.sh failed"
	# The DaemonSet container's args and literal env, one per line (ARG x / ENV K=V), read from
	# daemonset/daemonset.yaml so the VM runs the image exactly as the manifest does.
	python3 - "$SG_REPO/daemonset/daemonset.yaml" >"$root/sg/cri/agent-container.txt" <<'PY' ||
import sys, yaml
c = yaml.safe_load(open(sys.argv[1]))["spec"]["template"]["spec"]["containers"][0]
for a in c["args"]:
    print("ARG " + a)
for e in c.get("env", []):
    if "value" in e:
        print("ENV %s=%s" % (e["name"], e["value"]))
for m in c.get("volumeMounts", []):
    print("MOUNT %s %s" % (m["mountPath"], "ro" if m.get("readOnly") else "rw"))
PY
		sg_host_die "cannot read daemonset/daemonset.yaml (python3-yaml)"
}
