#!/usr/bin/env bash
# Quick start: a live demo of sidecar-governor on a real cgroup v2 kernel (Debian's, under qemu
# TCG). Three pods: two idle proxies, one hot proxy and an app; the agent shrinks the idle ones,
# leaves the hot one room, a table shows what the kernel holds every 2 s, one idle proxy turns
# hot halfway and gets its quota back, and SIGTERM restores every original value.
#
#   scripts/demo.sh [SECONDS]     (default 80; needs qemu-system-x86, busybox-static, cpio)
#
# Exits 0 when the agent exited cleanly and every original came back.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/vm/host.sh
. "$here/vm/host.sh"

secs=${1:-80}
[[ $secs =~ ^[0-9]+$ ]] || sg_host_die "usage: scripts/demo.sh [SECONDS]"

sg_host_require
sg_host_kernel
sg_host_build
initrd=$SG_VM_CACHE/initramfs-demo.cpio.gz
sg_host_initramfs "$initrd" "$SG_VM_DIR/demo"
log=$SG_VM_CACHE/logs/$(date +%Y%m%d-%H%M%S)-demo.log
rc=0
sg_host_boot "$initrd" "$log" $((secs + 180)) sg.scenarios=demo "sg.demo=$secs" "sg.timeout=$((secs + 120))" || rc=$?
if grep -q '^SCENARIO-RESULT demo PASS' "$log"; then
	echo "demo: PASS (console log: $log)"
	exit 0
fi
echo "demo: FAIL (qemu exit $rc; console log: $log)" >&2
exit 1
