# shellcheck shell=bash
# Host side of the `latency` VM scenario (issue 11: a real HTTP proxy's tail latency under the
# agent, and the agent's reaction time). Sourced by scripts/vm-e2e.sh after scripts/vm/host.sh
# when `latency` is named; no other scenario loads it.
#
#   sg_latency_host_fetch  Debian's haproxy and wrk and the libraries they need that a host
#                          need not have (lua 5.3, luajit, opentracing): `apt-get download` +
#                          `dpkg-deb -x`, cached in $SG_VM_CACHE/debs, unpacked into
#                          $SG_VM_CACHE/latency-root
#   sg_latency_host_build  cargo build --release --example throttle_probe
#   sg_latency_host_extra  the initramfs hook (SG_VM_EXTRA): /usr/sbin/haproxy, /usr/bin/wrk,
#                          /usr/local/bin/throttle_probe and every library `ldd` lists for them
#                          (from the unpacked packages first, then the host's)

SG_LAT_CACHE=${SG_LAT_CACHE:-$SG_VM_CACHE/debs}
SG_LAT_ROOT=${SG_LAT_ROOT:-$SG_VM_CACHE/latency-root}
# The packages whose files go into the VM: the two programs and the libraries of theirs that
# are not in a minimal Debian (ldd below says "not found" if one is missing from this list).
SG_LAT_PKGS=(haproxy wrk liblua5.3-0 libopentracing-c-wrapper0 libopentracing1 libluajit-5.1-2)

sg_latency_host_fetch() {
	sg_host_debs "$SG_LAT_CACHE" "$SG_LAT_ROOT" "${SG_LAT_PKGS[@]}"
	local b
	for b in usr/sbin/haproxy usr/bin/wrk; do
		[[ -x $SG_LAT_ROOT/$b ]] || sg_host_die "no $b in the unpacked haproxy/wrk packages"
	done
	sg_host_log "haproxy/wrk: $SG_DEBS"
}

sg_latency_host_build() {
	if [[ ${SG_VM_NO_BUILD:-} == 1 ]]; then return; fi
	sg_host_log "cargo build --release --example throttle_probe"
	(cd "$SG_REPO" && cargo build --release --quiet --example throttle_probe) >&2 ||
		sg_host_die "cargo build --example throttle_probe failed"
}

# sg_latency_copy_libs ROOT BIN: like sg_host_copy_libs, resolving against the unpacked
# packages first; a library found there lands at its path inside the package.
sg_latency_copy_libs() {
	local root=$1 bin=$2 out lib dest
	local path=$SG_LAT_ROOT/usr/lib/x86_64-linux-gnu:$SG_LAT_ROOT/lib/x86_64-linux-gnu
	out=$(LD_LIBRARY_PATH=$path ldd "$bin" 2>&1) || sg_host_die "ldd $bin: $out"
	if grep -q 'not found' <<<"$out"; then
		sg_host_die "$bin needs libraries no package provides (add the package to SG_LAT_PKGS): $(grep 'not found' <<<"$out" | tr -s ' \t\n' ' ')"
	fi
	grep -o '/[^ ]*' <<<"$out" | while read -r lib; do
		dest=${lib#"$SG_LAT_ROOT"}
		[[ -e $root$dest ]] && continue
		mkdir -p "$root$(dirname "$dest")"
		cp -L "$lib" "$root$dest"
	done
}

sg_latency_host_extra() {
	local root=$1 rel=$SG_REPO/target/release
	mkdir -p "$root/usr/sbin" "$root/usr/bin" "$root/usr/local/bin" "$root/etc/haproxy"
	cp "$SG_LAT_ROOT/usr/sbin/haproxy" "$root/usr/sbin/haproxy"
	cp "$SG_LAT_ROOT/usr/bin/wrk" "$root/usr/bin/wrk"
	sg_latency_copy_libs "$root" "$SG_LAT_ROOT/usr/sbin/haproxy"
	sg_latency_copy_libs "$root" "$SG_LAT_ROOT/usr/bin/wrk"
	[[ -x $rel/examples/throttle_probe ]] || sg_host_die "no $rel/examples/throttle_probe"
	cp "$rel/examples/throttle_probe" "$root/usr/local/bin/throttle_probe"
	sg_host_copy_libs "$root" "$rel/examples/throttle_probe"
}
