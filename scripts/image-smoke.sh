#!/usr/bin/env bash
# The image from scripts/build-image.sh, run by containerd + runc the way the DaemonSet runs it:
# the DaemonSet's own args and SG_* variables (read from daemonset/daemonset.yaml), every
# capability dropped, read-only root filesystem, the default seccomp profile, host network;
# bind mounts standing in for the hostPaths (a fixture cgroup tree at /host/sys/fs/cgroup rw,
# a fixture proc at /host/proc ro, the state dir) and for the ConfigMap volume (a directory laid
# out as kubelet does, at /etc/sidecar-governor ro). Asserts that the containerised agent becomes
# ready, shrinks an idle proxy's cpu.max (root-owned files written with no capability), takes a
# ConfigMap-style policy swap live, shows zero effective capabilities, and restores the original
# on SIGTERM. This host's kernel is cgroup v1, so the cgroup tree is a fixture; the real-kernel
# run is the VM harness's.
#
#   scripts/image-smoke.sh          (BIN=path to skip the release build; KEEP=1 keeps the tmp dir)
#
# containerd, ctr and runc come from PATH or from Debian's packages (apt-get download, unpacked
# under target/image-smoke/). Prints "N passed, M failed".
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$(pwd)

bin=${BIN:-${CARGO_TARGET_DIR:-target}/release/sidecar-governor}
[ -z "${BIN:-}" ] && { cargo build --release --bin sidecar-governor || exit 1; }

# containerd + runc
tools=$repo/target/image-smoke/pkgs
if ! command -v containerd >/dev/null || ! command -v ctr >/dev/null || ! command -v runc >/dev/null; then
	if [ ! -x "$tools/usr/bin/containerd" ] || [ ! -x "$tools/usr/sbin/runc" ]; then
		mkdir -p "$tools/debs"
		(cd "$tools/debs" && apt-get download containerd runc </dev/null) >/dev/null 2>&1 ||
			{ apt-get update -qq </dev/null && (cd "$tools/debs" && apt-get download containerd runc </dev/null); } || {
			echo "cannot download containerd/runc" >&2
			exit 1
		}
		for d in "$tools"/debs/*.deb; do dpkg-deb -x "$d" "$tools"; done
	fi
	export PATH=$tools/usr/bin:$tools/usr/sbin:$PATH
fi

tmp=$(mktemp -d)
ctrd_pid=""
C() { ctr --address "$tmp/containerd.sock" -n sg-smoke "$@"; }
cleanup() {
	C task kill -s SIGKILL sg-agent >/dev/null 2>&1
	C task rm -f sg-agent >/dev/null 2>&1
	C container rm sg-agent >/dev/null 2>&1
	[ -n "$ctrd_pid" ] && kill "$ctrd_pid" 2>/dev/null && wait "$ctrd_pid" 2>/dev/null
	umount -R "$tmp/root" 2>/dev/null
	[ -n "${KEEP:-}" ] && echo "kept $tmp" || rm -rf "$tmp"
}
trap cleanup EXIT
passed=0
failed=0
check() {
	local name=$1 out
	shift
	if out=$("$@" 2>&1); then
		echo "PASS $name${out:+: $out}"
		passed=$((passed + 1))
	else
		echo "FAIL $name${out:+: $out}"
		failed=$((failed + 1))
	fi
}
wait_until() { # wait_until SECONDS COMMAND...
	local deadline=$((SECONDS + $1))
	shift
	until "$@" >/dev/null 2>&1; do
		[ $SECONDS -ge $deadline ] && return 1
		sleep 0.3
	done
}

# The image.
check "build-image.sh" bash -c "BIN='$bin' scripts/build-image.sh --no-build --out '$tmp/image.tar' | tail -1"

# A private containerd (no CRI plugin needed for ctr).
cat >"$tmp/config.toml" <<TOML
version = 2
root = "$tmp/root"
state = "$tmp/state"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "$tmp/containerd.sock"
TOML
containerd --config "$tmp/config.toml" >"$tmp/containerd.log" 2>&1 &
ctrd_pid=$!
check "containerd starts" wait_until 20 C version
check "ctr images import" bash -c "ctr --address '$tmp/containerd.sock' -n sg-smoke images import --snapshotter native '$tmp/image.tar' | tail -1"

# The node: one idle proxy; and the ConfigMap volume.
node=$tmp/node
cg=$node/cgroup
id=$(printf 'c%.0s' {1..63})1
uid=33333333-0000-4000-8000-000000000003
dir=$cg/kubepods/burstable/pod$uid/$id
mkdir -p "$dir" "$node/proc/2001" "$node/state" "$node/config"
echo "cpuset cpu io memory pids" >"$cg/cgroup.controllers"
for d in "$(dirname "$dir")" "$dir"; do
	echo "200000 100000" >"$d/cpu.max"
	printf 'usage_usec 0\nuser_usec 0\nsystem_usec 0\nnr_periods 0\nnr_throttled 0\nthrottled_usec 0\nnr_bursts 0\nburst_usec 0\n' >"$d/cpu.stat"
done
echo envoy >"$node/proc/2001/comm"
echo "0::/kubepods/burstable/pod$uid/$id" >"$node/proc/2001/cgroup"
printf 'envoy\0' >"$node/proc/2001/cmdline"
echo "2001 (envoy) S 1 2001 2001 0 -1 4194560 0 0" >"$node/proc/2001/stat"
kubelet_update() { # kubelet_update GENERATION TEXT: kubelet's atomic ConfigMap volume update
	local v=$node/config ts="..2026_11_26_03_00_0$1.000"
	local old
	old=$(readlink "$v/..data" 2>/dev/null || true)
	mkdir "$v/$ts"
	printf '%s' "$2" >"$v/$ts/policy.yaml"
	ln -s "$ts" "$v/..data_tmp"
	mv -T "$v/..data_tmp" "$v/..data"
	[ -e "$v/policy.yaml" ] || ln -s ..data/policy.yaml "$v/policy.yaml"
	[ -n "$old" ] && rm -rf "${v:?}/$old"
	return 0
}
kubelet_update 1 "$(printf 'interval: 500ms\ncpu:\n  scaleDownAfter: 2s\n  stepDown: 0.5\n')"

# The DaemonSet's container: its args and env, with the port moved to a free one.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mapfile -t spec < <(python3 - daemonset/daemonset.yaml "$port" <<'PY'
import sys, yaml
ds = yaml.safe_load(open(sys.argv[1]))
c = ds["spec"]["template"]["spec"]["containers"][0]
args = [a.replace("0.0.0.0:9477", f"127.0.0.1:{sys.argv[2]}") for a in c["args"]]
env = [f"{e['name']}={e['value']}" for e in c.get("env", []) if "value" in e]
sc = c["securityContext"]
assert sc["capabilities"]["drop"] == ["ALL"] and not sc["capabilities"].get("add"), sc
assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
for a in args: print("ARG " + a)
for e in env: print("ENV " + e)
PY
)
args=() envs=()
for line in "${spec[@]}"; do
	case $line in
	ARG\ *) args+=("${line#ARG }") ;;
	ENV\ *) envs+=(--env "${line#ENV }") ;;
	esac
done
caps=()
for c in CHOWN DAC_OVERRIDE FSETID FOWNER MKNOD NET_RAW SETGID SETUID SETFCAP SETPCAP NET_BIND_SERVICE SYS_CHROOT KILL AUDIT_WRITE; do
	caps+=(--cap-drop "CAP_$c")
done
C run -d --snapshotter native --read-only --seccomp --net-host "${caps[@]}" "${envs[@]}" \
	--mount "type=bind,src=$cg,dst=/host/sys/fs/cgroup,options=rbind:rw" \
	--mount "type=bind,src=$node/proc,dst=/host/proc,options=rbind:ro" \
	--mount "type=bind,src=$node/state,dst=/var/lib/sidecar-governor,options=rbind:rw" \
	--mount "type=bind,src=$node/config,dst=/etc/sidecar-governor,options=rbind:ro" \
	--log-uri "file://$tmp/agent.log" \
	docker.io/library/sidecar-governor:dev sg-agent /usr/bin/sidecar-governor "${args[@]}" >/dev/null 2>"$tmp/run.err"
check "agent container starts with the DaemonSet's args (${args[*]})" bash -c "[ ! -s '$tmp/run.err' ] || { cat '$tmp/run.err'; exit 1; }"
metrics() { curl -sf "http://127.0.0.1:$port/metrics"; }
export port
export -f metrics
check "ready (/readyz)" wait_until 30 curl -sf "http://127.0.0.1:$port/readyz"
pid=$(C task ls 2>/dev/null | awk '$1 == "sg-agent" {print $2}')
check "no effective capabilities" bash -c "grep -E '^CapEff:\s+0+$' /proc/$pid/status"
check "seccomp filter in force" bash -c "grep -E '^Seccomp:\s+2$' /proc/$pid/status"
check "idle proxy shrunk to the floor by the containerised agent" wait_until 30 grep -qx "10000 100000" "$dir/cpu.max"
check "journal written to the state dir" bash -c "ls '$node/state' | grep -q . && ls '$node/state' | tr '\n' ' '"
kubelet_update 2 "$(printf 'interval: 500ms\ncpu:\n  min: 250m\n  scaleDownAfter: 2s\n  stepDown: 0.5\n')"
check "ConfigMap swap applied live (floor 250m)" wait_until 20 grep -qx "25000 100000" "$dir/cpu.max"
check "reload counted" bash -c "metrics | grep -x 'sidecar_governor_config_reloads_total{result=\"success\"} 1'"
C task kill -s SIGTERM sg-agent
# Clean stop: the task stopped, its exit code is 0 (`ctr task delete` exits with the task's
# code; the agent exits non-zero when a restore or the journal failed) and it logged the
# restore. Its last log line ("stopped") is not required: containerd 1.6's log copier can lose
# the final line of a task that exits (seen: "error copying stderr").
check "SIGTERM: clean stop (exit code 0, originals restored)" bash -c "for i in \$(seq 50); do s=\$(ctr --address '$tmp/containerd.sock' -n sg-smoke task ls | awk '\$1==\"sg-agent\"{print \$3}'); [ \"\$s\" = STOPPED ] && break; sleep 0.2; done; [ \"\$s\" = STOPPED ] && ctr --address '$tmp/containerd.sock' -n sg-smoke task delete sg-agent && grep -q '\"restored originals on exit\"' '$tmp/agent.log' && echo stopped"
check "original cpu.max restored" grep -x "200000 100000" "$dir/cpu.max"

if [ "$failed" -gt 0 ]; then
	echo "--- agent log"
	tail -20 "$tmp/agent.log"
	echo "--- containerd log"
	tail -5 "$tmp/containerd.log"
fi
echo "image-smoke: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
