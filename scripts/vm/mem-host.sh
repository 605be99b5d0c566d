# shellcheck shell=bash
# Host side of the memory scenarios (memory-reclaim*, which need page cache the kernel can
# actually reclaim). Sourced by scripts/vm/host.sh; sg_host_initramfs calls sg_host_mem_extra.
#
# Files on the initramfs root and on /tmp are tmpfs/ramfs, i.e. shmem: without swap the kernel
# cannot reclaim them, so a "page cache" test there proves nothing. The scenarios therefore mount
# an ext2 file system on a loop device. Debian's kernel builds all of that as modules; these six
# have no further dependencies and are loaded in this order (ext4 asks the crypto API for crc32c
# at mount time, even for ext2, and fails with "Cannot load crc32c driver" without it):
SG_MEM_MODULES="drivers/block/loop.ko lib/crc16.ko crypto/crc32c_generic.ko fs/mbcache.ko fs/jbd2/jbd2.ko fs/ext4/ext4.ko"
#
#   sg_host_mem_modules  extracts them from the kernel's .deb (the cached one in $SG_VM_CACHE, else
#                        `apt-get download`; another suite's is kept in $SG_VM_CACHE/kernel-<suite>/)
#                        into $SG_VM_CACHE/modules/<version>/ (cached; .ko.xz unpacked to .ko)
#   sg_host_mem_extra R  copies them to R/lib/modules/sg/ and scripts/vm/mem-lib.sh to R/sg/
#
# With SG_VM_KERNEL (a kernel of your own) no modules are added: the scenarios that need a block
# device then fail with a clear message unless that kernel has loop and ext4 built in.

# Prints the directory holding the six modules for $SG_KERNEL, extracting them once.
sg_host_mem_modules() {
	local ver pkg dir deb tmp m
	ver=$(basename "$SG_KERNEL")
	ver=${ver#vmlinuz-}
	dir=$SG_VM_CACHE/modules/$ver
	if [[ -f $dir/.complete ]]; then
		echo "$dir"
		return
	fi
	pkg=linux-image-$ver
	tmp=$(mktemp -d)
	chmod 0777 "$tmp"
	if [[ $(sg_host_kernel_suite) != bookworm ]]; then
		deb=$(sg_host_kernel_deb "$pkg")
	else
		deb=$( (find "$SG_VM_CACHE" "$SG_VM_CACHE/debs" -maxdepth 1 -name "${pkg}_*.deb" 2>/dev/null || true) | sort -V | tail -n 1)
	fi
	if [[ -z $deb ]]; then
		sg_host_log "downloading $pkg for its loop/ext4 modules (apt-get download)"
		if ! (cd "$tmp" && apt-get download -q "$pkg" >&2); then
			apt-get update -qq >&2
			(cd "$tmp" && apt-get download -q "$pkg" >&2) || sg_host_die "apt-get download $pkg failed"
		fi
		deb=$(find "$tmp" -maxdepth 1 -name "${pkg}_*.deb" | head -n 1)
	fi
	# bookworm: ./lib/modules/<ver>/kernel/X.ko; trixie (merged /usr, xz-compressed modules):
	# ./usr/lib/modules/<ver>/kernel/X.ko.xz, unpacked here (busybox insmod takes a plain .ko).
	local paths=()
	for m in $SG_MEM_MODULES; do paths+=("./*lib/modules/$ver/kernel/$m*"); done
	dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$tmp" --wildcards "${paths[@]}" ||
		sg_host_die "no ${SG_MEM_MODULES// /, } in $deb"
	mkdir -p "$dir"
	local f
	for m in $SG_MEM_MODULES; do
		f=$(find "$tmp" -path "*/lib/modules/$ver/kernel/$m*" -type f | head -n 1)
		case $f in
		*.ko) cp "$f" "$dir/" ;;
		*.ko.xz) xz -dc "$f" >"$dir/$(basename "$m")" ;;
		*.ko.zst) zstd -qdc "$f" >"$dir/$(basename "$m")" ;;
		*) sg_host_die "no $m in $deb" ;;
		esac
	done
	rm -rf "$tmp"
	touch "$dir/.complete"
	sg_host_log "modules for the memory scenarios: $dir"
	echo "$dir"
}

# The initramfs hook: the modules (in load order, listed in /lib/modules/sg/order) and mem-lib.sh.
sg_host_mem_extra() {
	local root=$1 dir m
	mkdir -p "$root/sg"
	cp "$SG_VM_DIR/mem-lib.sh" "$root/sg/"
	[[ -z ${SG_VM_KERNEL:-} && -n ${SG_KERNEL:-} ]] || return 0
	dir=$(sg_host_mem_modules)
	mkdir -p "$root/lib/modules/sg"
	: >"$root/lib/modules/sg/order"
	for m in $SG_MEM_MODULES; do
		cp "$dir/$(basename "$m")" "$root/lib/modules/sg/"
		basename "$m" >>"$root/lib/modules/sg/order"
	done
}
