#!/usr/bin/env bash
# Real-kernel end-to-end tests: boot Debian's kernel under qemu (TCG) with a busybox initramfs,
# the release agent and the stand-in proxy, and run scenarios from scripts/vm/scenarios/ that
# assert from the kernel's own cgroup files.
#
#   scripts/vm-e2e.sh [--separate] [--verbose] [--kernel SUITE] [SCENARIO...]
#                                          (default: all but cluster, latency)
#   scripts/vm-e2e.sh --list
#
# All named scenarios run one after another in one boot (teardown between them); --separate
# boots once per scenario. --kernel SUITE boots that Debian suite's linux-image-amd64 (bookworm,
# the default: 6.1; trixie: 6.12), as SG_VM_KERNEL_SUITE does. Prints PASS/FAIL per scenario
# and "N passed, M failed on KERNEL"; exits non-zero when any failed. Console logs:
# $SG_VM_CACHE/logs/. See scripts/vm/host.sh for the environment.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=scripts/vm/host.sh
. "$here/vm/host.sh"

usage() { sed -n '2,15s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"; }

separate=0
verbose=
scenarios=()
while (($#)); do
	case $1 in
	--separate) separate=1 ;;
	--verbose) verbose=1 ;;
	--kernel)
		(($# >= 2)) || sg_host_die "--kernel needs a suite (bookworm, trixie)"
		export SG_VM_KERNEL_SUITE=$2
		shift
		;;
	--kernel=*) export SG_VM_KERNEL_SUITE=${1#--kernel=} ;;
	--list)
		for f in "$SG_VM_DIR"/scenarios/*.sh; do basename "$f" .sh; done
		exit 0
		;;
	-h | --help)
		usage
		exit 0
		;;
	-*) sg_host_die "unknown option $1" ;;
	*) scenarios+=("$1") ;;
	esac
	shift
done
# The default list is every scenario but `cluster` (a real Kubernetes node, ~15-25 minutes
# under TCG) and `latency` (the benchmark of issue 11, ~17 minutes with its default knobs),
# which run when named: scripts/vm-e2e.sh cluster.
if ((${#scenarios[@]} == 0)); then
	for f in "$SG_VM_DIR"/scenarios/*.sh; do
		case $(basename "$f" .sh) in
		cluster | latency) ;;
		*) scenarios+=("$(basename "$f" .sh)") ;;
		esac
	done
fi
for s in "${scenarios[@]}"; do
	[[ -f $SG_VM_DIR/scenarios/$s.sh ]] || sg_host_die "no scenario $s (scripts/vm-e2e.sh --list)"
done

# Per-scenario limit inside the VM, and the whole boot's limit on the host.
per_scenario=${SG_VM_SCENARIO_TIMEOUT:-240}
# The `cri` group (a real containerd) boots on its own, from its own initramfs
# (scripts/vm/cri-host.sh), with more memory and time: every scenario whose file has the line
# `# sg-vm-group: cri` (`cri` and the ownership scenarios that need a runtime identity, which
# only CRI discovery gives), all in one boot. So does `cri-image` (the same initramfs plus the
# agent image of scripts/build-image.sh, run as a CRI pod).
cri_timeout=${SG_VM_CRI_TIMEOUT:-480}
# `cluster` (a real Kubernetes node: scripts/vm/cluster-host.sh) boots on its own too, with
# 6 GiB and its own limit.
cluster_timeout=${SG_VM_CLUSTER_TIMEOUT:-2700}
# `latency` (Debian's haproxy and wrk: scripts/vm/latency-host.sh) boots on its own too. Its
# knobs are the SG_LATENCY_* variables (scripts/vm/README.md), given to the VM as
# sg.latency_<name>=VALUE; its limit is twice what they add up to, plus 5 minutes, unless
# SG_VM_LATENCY_TIMEOUT says otherwise.
latency_args=()
for v in $(compgen -v SG_LATENCY_ || true); do
	[[ ${!v} =~ ^[0-9a-z.]+$ ]] || sg_host_die "$v=${!v}: a number or a duration (10s) only"
	n=${v#SG_LATENCY_}
	latency_args+=("sg.latency_${n,,}=${!v}")
done
lat_s() { local v=${1%s}; [[ $v =~ ^[0-9]+$ ]] || sg_host_die "$2=$1: whole seconds"; echo "$v"; }
# latency_limit: the latency scenario's limit in the VM (seconds).
latency_limit() {
	local est
	est=$((3 * $(lat_s "${SG_LATENCY_BURSTS:-3}" SG_LATENCY_BURSTS) * ($(lat_s "${SG_LATENCY_IDLE:-40}" SG_LATENCY_IDLE) + $(lat_s "${SG_LATENCY_BURST:-10}" SG_LATENCY_BURST) + 5) +
		$(lat_s "${SG_LATENCY_REACTION_BURSTS:-50}" SG_LATENCY_REACTION_BURSTS) * ($(lat_s "${SG_LATENCY_REACTION_LOAD:-3}" SG_LATENCY_REACTION_LOAD) + $(lat_s "${SG_LATENCY_REACTION_SETTLE:-2}" SG_LATENCY_REACTION_SETTLE) + 6) + 120))
	echo "${SG_VM_LATENCY_TIMEOUT:-$((2 * est + 300))}"
}
# group SCENARIO: the boot it runs in (cri, cri-image, cluster, latency or the plain one, "").
group() {
	case $1 in
	cri-image | cluster | latency) echo "$1" ;;
	*) if grep -q '^# sg-vm-group: cri$' "$SG_VM_DIR/scenarios/$1.sh"; then echo cri; fi ;;
	esac
}
cri_list=()
cri_image_wanted=0
cluster_wanted=0
latency_wanted=0
others=()
for s in "${scenarios[@]}"; do
	case $(group "$s") in
	cri) cri_list+=("$s") ;;
	cri-image) cri_image_wanted=1 ;;
	cluster) cluster_wanted=1 ;;
	latency) latency_wanted=1 ;;
	*) others+=("$s") ;;
	esac
done
cri_wanted=$((${#cri_list[@]} > 0))

sg_host_require
sg_host_kernel
sg_host_build
# Another suite's initramfs (its own modules) never overwrites the default one.
ksuf=
[[ $SG_KERNEL_SUITE == bookworm ]] || ksuf=-$SG_KERNEL_SUITE
initrd=$SG_VM_CACHE/initramfs-e2e$ksuf.cpio.gz
if ((${#others[@]})); then
	sg_host_initramfs "$initrd"
	sg_host_log "initramfs: $initrd ($(du -h "$initrd" | cut -f1))"
fi
if ((cri_wanted || cri_image_wanted || cluster_wanted)); then
	# shellcheck source=scripts/vm/cri-host.sh
	. "$here/vm/cri-host.sh"
	sg_cri_host_fetch
	sg_cri_host_build
fi
if ((cri_wanted)); then
	cri_initrd=$SG_VM_CACHE/initramfs-cri$ksuf.cpio.gz
	SG_VM_EXTRA=sg_cri_host_extra sg_host_initramfs "$cri_initrd"
	sg_host_log "initramfs (cri): $cri_initrd ($(du -h "$cri_initrd" | cut -f1))"
fi
if ((cri_image_wanted)); then
	cri_image_initrd=$SG_VM_CACHE/initramfs-cri-image$ksuf.cpio.gz
	SG_VM_EXTRA=sg_cri_host_extra_agent_image sg_host_initramfs "$cri_image_initrd"
	sg_host_log "initramfs (cri-image): $cri_image_initrd ($(du -h "$cri_image_initrd" | cut -f1))"
fi
if ((cluster_wanted)); then
	# shellcheck source=scripts/vm/cluster-host.sh
	. "$here/vm/cluster-host.sh"
	t_build=$SECONDS
	sg_cluster_host_build
	sg_cluster_host_fetch
	sg_host_log "cluster: binaries and packages ready in $((SECONDS - t_build))s"
	cluster_initrd=$SG_VM_CACHE/initramfs-cluster$ksuf.cpio
	t_build=$SECONDS
	SG_VM_EXTRA=sg_cluster_host_extra SG_VM_COMPRESS=cat sg_host_initramfs "$cluster_initrd"
	sg_host_log "initramfs (cluster): $cluster_initrd ($(du -h "$cluster_initrd" | cut -f1), $((SECONDS - t_build))s)"
fi

if ((latency_wanted)); then
	# shellcheck source=scripts/vm/latency-host.sh
	. "$here/vm/latency-host.sh"
	sg_latency_host_fetch
	sg_latency_host_build
	latency_timeout=$(latency_limit)
	latency_initrd=$SG_VM_CACHE/initramfs-latency$ksuf.cpio.gz
	SG_VM_EXTRA=sg_latency_host_extra sg_host_initramfs "$latency_initrd"
	sg_host_log "initramfs (latency): $latency_initrd ($(du -h "$latency_initrd" | cut -f1)); limit ${latency_timeout}s"
fi

stamp=$(date +%Y%m%d-%H%M%S)$ksuf
logs=()
# boot GROUP LIST N: one boot of the group's initramfs running the N scenarios of LIST (a,b).
boot() {
	local grp=$1 list=$2 n=$3 log rd=$initrd limit=$per_scenario mem=${SG_VM_MEM:-} extra=()
	case $grp in
	cri) rd=$cri_initrd limit=$cri_timeout mem=${SG_VM_MEM:-1536} ;;
	cri-image) rd=$cri_image_initrd limit=$cri_timeout mem=${SG_VM_MEM:-1536} ;;
	cluster)
		rd=$cluster_initrd limit=$cluster_timeout mem=${SG_VM_MEM:-6144}
		# A debugging run may leave phases out (it then fails, naming them): SG_CLUSTER_SKIP=a,b.
		if [[ -n ${SG_CLUSTER_SKIP:-} ]]; then extra+=("sg.cluster_skip=$SG_CLUSTER_SKIP"); fi
		;;
	latency) rd=$latency_initrd limit=$latency_timeout extra=("${latency_args[@]}") ;;
	esac
	log=$SG_VM_CACHE/logs/$stamp-${list//,/+}.log
	if ((${#log} > 200)); then log=$SG_VM_CACHE/logs/$stamp-all.log; fi
	logs+=("$log")
	local rc=0
	SG_VM_MEM=$mem sg_host_boot "$rd" "$log" $((90 + n * (limit + 15))) \
		"sg.scenarios=$list" "sg.timeout=$limit" ${verbose:+sg.verbose=1} "${extra[@]}" || rc=$?
	if ((rc != 0)); then sg_host_log "qemu exited with $rc (124: timed out)"; fi
}

t0=$SECONDS
if ((separate)); then
	for s in "${scenarios[@]}"; do boot "$(group "$s")" "$s" 1; done
else
	if ((${#others[@]})); then
		boot "" "$(
			IFS=,
			echo "${others[*]}"
		)" "${#others[@]}"
	fi
	if ((cri_wanted)); then
		boot cri "$(
			IFS=,
			echo "${cri_list[*]}"
		)" "${#cri_list[@]}"
	fi
	if ((cri_image_wanted)); then boot cri-image cri-image 1; fi
	if ((cluster_wanted)); then boot cluster cluster 1; fi
	if ((latency_wanted)); then boot latency latency 1; fi
fi
elapsed=$((SECONDS - t0))

# Results from the markers on the console.
passed=0
failed=0
echo
echo "=== VM scenarios (${elapsed}s, logs: ${logs[*]})"
for s in "${scenarios[@]}"; do
	line=$(cat "${logs[@]}" | grep -a "^SCENARIO-RESULT $s " | tail -n 1 || true)
	if [[ $line == "SCENARIO-RESULT $s PASS"* ]]; then
		passed=$((passed + 1))
		echo "PASS $s ${line#SCENARIO-RESULT "$s" PASS }"
	elif [[ -n $line ]]; then
		failed=$((failed + 1))
		echo "FAIL $s ${line#SCENARIO-RESULT "$s" FAIL }"
	else
		failed=$((failed + 1))
		echo "FAIL $s no result on the console (VM timed out or crashed)"
	fi
done
# The kernel each boot ran, from its `SG-VM-BOOTED kernel=...` line.
kernels=()
for log in "${logs[@]}"; do
	k=$(grep -a -m 1 -o 'SG-VM-BOOTED kernel=[^ ]*' "$log" 2>/dev/null | sed 's/.*kernel=//' || true)
	kernels+=("${k:-unknown (no SG-VM-BOOTED in $(basename "$log"))}")
done
mapfile -t distinct < <(printf '%s\n' "${kernels[@]}" | sort -u)
if ((${#distinct[@]} == 1)); then
	on="${distinct[0]} ($SG_KERNEL_SUITE, ${#logs[@]} boot$( ((${#logs[@]} == 1)) || echo s))"
else
	on="boots:"
	for i in "${!logs[@]}"; do on+=" $(basename "${logs[$i]}" .log)=${kernels[$i]}"; done
fi
echo "$passed passed, $failed failed on $on"
((failed == 0))
