# shellcheck shell=bash
# Host side of the real-kernel VM: fetch Debian's kernel, build the binaries and the initramfs,
# boot qemu (TCG) with a timeout. Sourced by scripts/vm-e2e.sh and scripts/demo.sh.
#
# Environment:
#   SG_VM_CACHE    cache directory (default <repo>/.vm-cache): the kernel, the initramfs, logs
#   SG_VM_KERNEL   a vmlinuz to boot instead of Debian's linux-image-amd64
#   SG_VM_KERNEL_SUITE  the Debian suite whose linux-image-amd64 boots (default bookworm: the
#                  host's own apt, cached in $SG_VM_CACHE/kernel/). Any other suite (trixie:
#                  6.12) is fetched with a private apt state in $SG_VM_CACHE/apt-<suite>/ (the
#                  system's apt configuration is not touched) and cached, with its .deb for
#                  the modules, in $SG_VM_CACHE/kernel-<suite>/
#   SG_VM_NO_BUILD set to 1 to skip `cargo build --release` (use the binaries already built)
#   SG_VM_AGENT    the agent binary to install (default target/release/sidecar-governor)
#   SG_VM_MEM      guest memory in MiB (default 1024)
#   SG_VM_SMP      guest CPUs (default 2)
#   SG_VM_EXTRA    a function adding files to the initramfs root (given as $1)
#   SG_VM_COMPRESS the initramfs compressor (default `gzip -1`; `cat` for none: the cluster's
#                  ~700 MB of Go binaries unpack faster uncompressed under TCG)

SG_REPO=${SG_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
SG_VM_CACHE=${SG_VM_CACHE:-$SG_REPO/.vm-cache}
SG_VM_DIR=$SG_REPO/scripts/vm
# shellcheck source=scripts/vm/mem-host.sh
. "$SG_VM_DIR/mem-host.sh"

sg_host_log() { printf '[vm] %s\n' "$*" >&2; }
sg_host_die() {
	printf '[vm] error: %s\n' "$*" >&2
	exit 2
}

# The tools the harness needs on the host.
sg_host_require() {
	local missing=()
	local t
	for t in qemu-system-x86_64 busybox cpio gzip apt-get dpkg-deb ldd timeout cargo; do
		command -v "$t" >/dev/null || missing+=("$t")
	done
	if ((${#missing[@]})); then
		sg_host_die "missing tools: ${missing[*]} (apt-get install -y --no-install-recommends qemu-system-x86 busybox-static cpio)"
	fi
	# A static busybox: the initramfs has no libraries for it.
	if ldd "$(command -v busybox)" >/dev/null 2>&1; then
		sg_host_die "busybox is dynamically linked: install busybox-static"
	fi
}

# The suite of the kernel to boot (SG_VM_KERNEL_SUITE, default bookworm) and its cache dir.
# bookworm keeps the historical layout ($SG_VM_CACHE/kernel/, the host's apt); another suite
# must not be cached there (the newest vmlinuz under kernel/ is the default kernel).
sg_host_kernel_suite() { echo "${SG_VM_KERNEL_SUITE:-bookworm}"; }
sg_host_kernel_dir() {
	local suite
	suite=$(sg_host_kernel_suite)
	if [[ $suite == bookworm ]]; then echo "$SG_VM_CACHE/kernel"; else echo "$SG_VM_CACHE/kernel-$suite"; fi
}

# sg_host_apt_suite apt-get|apt-cache ARGS...: apt for the kernel's suite. bookworm is the
# host's own apt (its sources are bookworm); another suite gets a private apt (sources, lists,
# package cache and an empty status file under $SG_VM_CACHE/apt-<suite>/) with one source,
# `deb http://deb.debian.org/debian <suite> main`, signed by the host's Debian archive keyring
# (debian-archive-keyring 2023.3+deb12u2 holds trixie's keys). The lists are fetched when
# missing: the first use runs `apt-get update` in that private state.
sg_host_apt_suite() {
	local tool=$1 suite
	shift
	suite=$(sg_host_kernel_suite)
	if [[ $suite == bookworm ]]; then
		"$tool" "$@"
		return
	fi
	[[ $suite =~ ^[a-z]+$ ]] || sg_host_die "SG_VM_KERNEL_SUITE=$suite is not a Debian suite name"
	local a=$SG_VM_CACHE/apt-$suite keyring=/usr/share/keyrings/debian-archive-keyring.gpg
	mkdir -p "$a/etc/sources.list.d" "$a/etc/preferences.d" "$a/etc/apt.conf.d" \
		"$a/state/lists/partial" "$a/cache/archives/partial"
	printf 'deb [signed-by=%s] http://deb.debian.org/debian %s main\n' "$keyring" "$suite" >"$a/etc/sources.list"
	local opts=(-o "Dir::Etc=$a/etc" -o "Dir::Etc::sourcelist=$a/etc/sources.list"
		-o "Dir::Etc::sourceparts=$a/etc/sources.list.d" -o "Dir::Etc::preferencesparts=$a/etc/preferences.d"
		-o "Dir::State=$a/state" -o "Dir::State::status=/dev/null" -o "Dir::Cache=$a/cache"
		-o "APT::Architecture=amd64" -o "Acquire::Languages=none" -o "Debug::NoLocking=1"
		-o "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false"
		-o "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled=false"
		-o "Acquire::IndexTargets::deb::DEP-11-icons-hidpi::DefaultEnabled=false")
	if [[ ${SG_HOST_APT_REFRESH:-} == 1 ]] || ! compgen -G "$a/state/lists/*_${suite}_InRelease" >/dev/null; then
		sg_host_log "apt-get update for $suite (private state in $a)"
		apt-get "${opts[@]}" update -qq >&2 || sg_host_die "apt-get update for $suite failed (deb.debian.org reachable?)"
	fi
	"$tool" "${opts[@]}" "$@"
}

# sg_host_kernel_pkg: the linux-image-<version> package linux-image-amd64 depends on in the suite.
sg_host_kernel_pkg() {
	local pkg
	if [[ $(sg_host_kernel_suite) != bookworm ]]; then
		# Only reached when no kernel of the suite is cached: fresh lists name what the mirror has.
		pkg=$(SG_HOST_APT_REFRESH=1 sg_host_apt_suite apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
		[[ -n $pkg ]] || sg_host_die "cannot resolve linux-image-amd64 in $(sg_host_kernel_suite)"
		echo "$pkg"
		return
	fi
	pkg=$(apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
	if [[ -z $pkg ]]; then
		sg_host_log "apt-cache knows no linux-image-amd64: running apt-get update"
		apt-get update -qq >&2
		pkg=$(apt-cache depends linux-image-amd64 | awk '/Depends: linux-image-/ { print $2; exit }')
	fi
	[[ -n $pkg ]] || sg_host_die "cannot resolve linux-image-amd64 in $(sg_host_kernel_suite)"
	echo "$pkg"
}

# sg_host_kernel_deb PKG (a suite other than bookworm): prints the path of PKG's .deb, kept in
# the suite's kernel dir (the memory and cluster scenarios take their modules from it),
# downloaded once.
sg_host_kernel_deb() {
	local pkg=$1 deb kdir tmp
	kdir=$(sg_host_kernel_dir)
	deb=$( (find "$kdir" -maxdepth 1 -name "${pkg}_*.deb" 2>/dev/null || true) | sort -V | tail -n 1)
	if [[ -z $deb ]]; then
		tmp=$kdir/.download
		rm -rf "$tmp"
		mkdir -p "$tmp"
		chmod 0777 "$tmp" # apt's _apt sandbox user writes there
		sg_host_log "downloading $pkg ($(sg_host_kernel_suite), apt-get download)"
		if ! (cd "$tmp" && sg_host_apt_suite apt-get download -q "$pkg" >&2); then
			# Lists from an earlier run may name a version the mirror has since dropped.
			(cd "$tmp" && SG_HOST_APT_REFRESH=1 sg_host_apt_suite apt-get download -q "$pkg" >&2) ||
				sg_host_die "apt-get download $pkg failed"
		fi
		deb=$(find "$tmp" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
		[[ -n $deb ]] || sg_host_die "apt-get download $pkg gave no .deb"
		mv "$deb" "$kdir/"
		rm -rf "$tmp"
		deb=$kdir/$(basename "$deb")
	fi
	echo "$deb"
}

# Sets SG_KERNEL to a vmlinuz: $SG_VM_KERNEL, else the cached one of the suite
# (SG_VM_KERNEL_SUITE), else the suite's linux-image-amd64 dependency, downloaded with apt-get
# and unpacked with dpkg-deb. Also sets SG_KERNEL_SUITE (the suite, or "custom").
sg_host_kernel() {
	if [[ -n ${SG_VM_KERNEL:-} ]]; then
		SG_KERNEL=$SG_VM_KERNEL
		SG_KERNEL_SUITE=custom
		[[ -f $SG_KERNEL ]] || sg_host_die "SG_VM_KERNEL=$SG_KERNEL does not exist"
		return
	fi
	SG_KERNEL_SUITE=$(sg_host_kernel_suite)
	local cached kdir
	kdir=$(sg_host_kernel_dir)
	cached=$( (find "$kdir" -path '*/boot/vmlinuz-*' -type f 2>/dev/null || true) | sort -V | tail -n 1)
	if [[ -n $cached ]]; then
		SG_KERNEL=$cached
		return
	fi
	local pkg
	pkg=$(sg_host_kernel_pkg)
	mkdir -p "$kdir/$pkg"
	if [[ $SG_KERNEL_SUITE == bookworm ]]; then
		sg_host_log "downloading $pkg"
		local tmp
		tmp=$(mktemp -d)
		chmod 0755 "$tmp"
		(cd "$tmp" && apt-get download -q "$pkg" >&2) || sg_host_die "apt-get download $pkg failed"
		dpkg-deb --fsys-tarfile "$tmp"/"$pkg"_*.deb | tar -x -C "$kdir/$pkg" ./boot
		rm -rf "$tmp"
	else
		local deb
		deb=$(sg_host_kernel_deb "$pkg")
		dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$kdir/$pkg" ./boot
	fi
	SG_KERNEL=$(find "$kdir/$pkg" -path '*/boot/vmlinuz-*' -type f | head -n 1)
	[[ -n $SG_KERNEL ]] || sg_host_die "no vmlinuz in $pkg"
	sg_host_log "kernel: $SG_KERNEL ($SG_KERNEL_SUITE)"
}

# sg_host_debs CACHE ROOT PKG...: Debian packages for the VM. Each PKG's newest .deb in CACHE,
# downloaded with `apt-get download` when there is none (after an `apt-get update` if the
# first try fails), unpacked with `dpkg-deb -x` into ROOT, again only when the set of .debs
# changed. Sets SG_DEBS to that set (file names, space-separated).
sg_host_debs() {
	local cache=$1 root=$2 pkg tmp have
	shift 2
	mkdir -p "$cache"
	for pkg in "$@"; do
		have=$(find "$cache" -maxdepth 1 -name "${pkg}_*.deb" | sort -V | tail -n 1)
		[[ -n $have ]] && continue
		sg_host_log "downloading $pkg (apt-get download)"
		tmp=$(mktemp -d)
		chmod 0777 "$tmp"
		if ! (cd "$tmp" && apt-get download -q "$pkg" >&2); then
			sg_host_log "apt-get download $pkg failed: running apt-get update"
			apt-get update -qq >&2
			(cd "$tmp" && apt-get download -q "$pkg" >&2) || sg_host_die "apt-get download $pkg failed"
		fi
		mv "$tmp"/"${pkg}"_*.deb "$cache/"
		rm -rf "$tmp"
	done
	SG_DEBS=$(for pkg in "$@"; do find "$cache" -maxdepth 1 -name "${pkg}_*.deb" -printf '%f\n' | sort -V | tail -n 1; done | tr '\n' ' ')
	if [[ ! -f $root/.debs || $(cat "$root/.debs") != "$SG_DEBS" ]]; then
		rm -rf "$root"
		mkdir -p "$root"
		for pkg in $SG_DEBS; do dpkg-deb -x "$cache/$pkg" "$root"; done
		echo "$SG_DEBS" >"$root/.debs"
	fi
}

# Build the agent and the stand-in (release).
sg_host_build() {
	if [[ ${SG_VM_NO_BUILD:-} == 1 ]]; then return; fi
	sg_host_log "cargo build --release"
	(cd "$SG_REPO" && cargo build --release --quiet && cargo build --release --quiet --example stand_in_proxy --example fd_probe) >&2 ||
		sg_host_die "cargo build failed"
}

# Copy a dynamic binary's libraries (as ldd lists them) and the loader into the root $1.
sg_host_copy_libs() {
	local root=$1 bin=$2 lib
	{ ldd "$bin" 2>/dev/null || true; } | { grep -o '/[^ ]*' || true; } | while read -r lib; do
		[[ -e $root$lib ]] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

# Build the initramfs into $1 (gzip'd newc cpio). Optional $2: a directory whose files are
# copied to /sg/scenarios/ too (the demo).
sg_host_initramfs() {
	local out=$1 root bb b
	root=$(mktemp -d)
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,usr/local/bin,proc,sys,dev,tmp,run,etc/sg,var/lib,sg/scenarios,lib64}
	bb=$(command -v busybox)
	cp "$bb" "$root/bin/busybox"
	for b in $("$bb" --list); do
		[[ $b == busybox ]] && continue
		ln -sf busybox "$root/bin/$b"
	done
	local rel=$SG_REPO/target/release
	local agent=${SG_VM_AGENT:-$rel/sidecar-governor}
	[[ -x $agent ]] || sg_host_die "no $agent (cargo build --release)"
	[[ -x $rel/examples/stand_in_proxy ]] || sg_host_die "no $rel/examples/stand_in_proxy"
	cp "$agent" "$root/bin/sidecar-governor"
	# The stand-in under the names the agent looks for (comm is the file name) and as an app.
	cp "$rel/examples/stand_in_proxy" "$root/bin/envoy"
	cp "$rel/examples/stand_in_proxy" "$root/bin/app"
	cp "$rel/examples/stand_in_proxy" "$root/usr/local/bin/linkerd2-proxy"
	cp "$rel/examples/stand_in_proxy" "$root/usr/local/bin/pilot-agent"
	for b in "$agent" "$rel/examples/stand_in_proxy"; do
		sg_host_copy_libs "$root" "$b"
	done
	# One descriptor, write then seek and read (examples/fd_probe.rs: the kernel-features scenario).
	if [[ -x $rel/examples/fd_probe ]]; then
		cp "$rel/examples/fd_probe" "$root/usr/local/bin/fd_probe"
		sg_host_copy_libs "$root" "$rel/examples/fd_probe"
	else
		sg_host_log "no $rel/examples/fd_probe (cargo build --release --example fd_probe): kernel-features will fail"
	fi
	cp "$SG_VM_DIR/init" "$root/init"
	cp "$SG_VM_DIR/lib.sh" "$SG_VM_DIR/run.sh" "$root/sg/"
	# mem-lib.sh and the loop/ext4 modules of the memory scenarios (scripts/vm/mem-host.sh)
	sg_host_mem_extra "$root"
	cp "$SG_VM_DIR"/scenarios/*.sh "$root/sg/scenarios/"
	if [[ -n ${2:-} ]]; then cp "$2"/*.sh "$root/sg/scenarios/"; fi
	chmod +x "$root/init" "$root"/sg/*.sh "$root"/sg/scenarios/*.sh
	printf 'root:x:0:0:root:/root:/bin/sh\n' >"$root/etc/passwd"
	printf 'root:x:0:\n' >"$root/etc/group"
	printf '127.0.0.1 localhost sg-vm\n' >"$root/etc/hosts"
	# Extra content for one scenario (the cri scenario's runtime): SG_VM_EXTRA names a function
	# that is given the root.
	if [[ -n ${SG_VM_EXTRA:-} ]]; then "$SG_VM_EXTRA" "$root"; fi
	mkdir -p "$(dirname "$out")"
	(cd "$root" && find . -print0 | LC_ALL=C sort -z | cpio --quiet -o -H newc -0 -R 0:0) | ${SG_VM_COMPRESS:-gzip -1} >"$out"
	rm -rf "$root"
}

# sg_host_boot INITRD LOG TIMEOUT_SECONDS KERNEL_ARGS...: boot, echo the serial console to
# stdout and into LOG. Returns qemu's exit status (124 on timeout).
sg_host_boot() {
	local initrd=$1 log=$2 limit=$3
	shift 3
	local append="console=ttyS0 panic=-1 psi=1 quiet loglevel=3 rdinit=/init $*"
	sg_host_log "booting $(basename "$SG_KERNEL") (TCG, timeout ${limit}s): $*"
	mkdir -p "$(dirname "$log")"
	{
		local qrc=0
		timeout -k 10 "$limit" qemu-system-x86_64 \
			-accel tcg,thread=multi -cpu max -m "${SG_VM_MEM:-1024}" -smp "${SG_VM_SMP:-2}" \
			-nographic -no-reboot -nic none \
			-kernel "$SG_KERNEL" -initrd "$initrd" -append "$append" </dev/null 2>&1 || qrc=$?
		echo "$qrc" >"$log.rc"
	} | sed -u 's/\r$//' | tee "$log"
	local rc
	rc=$(cat "$log.rc")
	rm -f "$log.rc"
	return "$rc"
}
