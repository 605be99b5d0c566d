#!/usr/bin/env bash
# Writes the seed corpus of the fuzz targets (fuzz/corpus/<target>/seed-*): real kernel, /proc,
# CRI, journal, policy and trace texts. Re-run after changing it; the files are committed.
# For the `text` target the first byte picks the parser (see fuzz_targets/text.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
repo=..
rm -f corpus/*/seed-*
mkdir -p corpus/text corpus/journal corpus/policy corpus/trace

n=0
seed() { # seed SELECTOR NAME TEXT...  (printf format: \n, \0 escapes)
  local sel=$1 name=$2
  shift 2
  n=$((n + 1))
  # shellcheck disable=SC2059 # the text is a printf format on purpose (\n, \x00)
  { printf "%s" "$sel"; printf -- "$@"; } >"corpus/text/seed-$name-$n"
}

# a: CPU quantities; b: byte quantities; c: durations (policy fields, annotations).
for q in 100m 2 0.5 1.25 1000m 250m 1.005; do seed a cpu-quantity '%s' "$q"; done
for q in 64Mi 1G 1048576 1.5Gi 32Mi 1Ti 100k; do seed b bytes-quantity '%s' "$q"; done
for q in 500ms 1s 30s 5m 1m30s 1h 2m 10s; do seed c duration '%s' "$q"; done
# d..i: cgroup v2 files as Linux 6.1 prints them.
seed d cpu.max 'max 100000\n'
seed d cpu.max '200000 100000\n'
seed d cpu.max '5000 50000\n'
seed e cpu.stat 'usage_usec 2356000\nuser_usec 1200000\nsystem_usec 1156000\ncore_sched.force_idle_usec 0\nnr_periods 120\nnr_throttled 30\nthrottled_usec 450000\nnr_bursts 0\nburst_usec 0\n'
seed e cpu.stat 'usage_usec 10\nuser_usec 5\nsystem_usec 5\n'
seed f pressure 'some avg10=1.50 avg60=0.80 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=789\n'
seed f pressure 'some avg10=0.00 avg60=0.00 avg300=0.00 total=42\n'
seed g u64-or-max 'max\n'
seed g u64-or-max '134217728\n'
seed h memory.stat 'anon 104857600\nfile 52428800\nkernel 4194304\nkernel_stack 65536\npagetables 131072\nsec_pagetables 0\npercpu 1440\nsock 8192\nvmalloc 0\nshmem 1048576\nzswap 0\nzswapped 0\nfile_mapped 0\nfile_dirty 0\nfile_writeback 0\nswapcached 0\nanon_thp 0\nfile_thp 0\nshmem_thp 0\ninactive_anon 104857600\nactive_anon 1048576\ninactive_file 30000000\nactive_file 21428800\nunevictable 0\nslab_reclaimable 1000\nslab_unreclaimable 250000\nslab 251000\nworkingset_refault_anon 0\nworkingset_refault_file 0\nworkingset_activate_anon 0\nworkingset_activate_file 0\nworkingset_restore_anon 0\nworkingset_restore_file 0\nworkingset_nodereclaim 0\npgscan 0\npgsteal 0\npgscan_kswapd 0\npgscan_direct 0\npgsteal_kswapd 0\npgsteal_direct 0\npgfault 51234\npgmajfault 3\npgrefill 0\npgactivate 0\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\nthp_fault_alloc 0\nthp_collapse_alloc 0\n'
seed h memory.stat 'anon 100\nfile 50\nkernel_stack 10\npagetables 20\npercpu 5\nslab_unreclaimable 7\nsock 3\n'
seed i memory.events 'low 0\nhigh 17\nmax 2\noom 1\noom_kill 1\noom_group_kill 0\n'
seed i memory.events 'low 0\nhigh 3\nmax 0\noom 0\noom_kill 0\n'
# j: /proc/PID/cgroup (host view, inside a cgroup namespace, cgroup v1 + v2 hybrid).
seed j proc-cgroup '0::/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1e3c2a_9b8d_4c7e_a6f5_0123456789ab.slice/cri-containerd-3f6c2a1b9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c1d0e9f8a7b6c5d4e3f2a.scope\n'
seed j proc-cgroup '0::/../../pod4f1e3c2a-9b8d-4c7e-a6f5-0123456789ab/3f6c2a1b9d8e7f6a5b4c3d2e1f0a9b8c\n'
seed j proc-cgroup '9:name=systemd:/\n8:pids:/\n4:memory:/process_api/784af8b9934a5c97424ead88df1f2fef\n1:cpu:/\n0::/\n'
# k: container cgroup paths in kubelet's layouts.
seed k container-path 'kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1e3c2a_9b8d_4c7e_a6f5_0123456789ab.slice/crio-3f6c2a1b9d8e7f6a5b4c3d2e1f0a9b8c.scope/container'
seed k container-path 'kubepods/burstable/pod4f1e3c2a-9b8d-4c7e-a6f5-0123456789ab/crio-3f6c2a1b9d8e'
seed k container-path 'kubepods/besteffort/pod4f1e3c2a-9b8d-4c7e-a6f5-0123456789ab/3f6c2a1b9d8e7f6a5b4c'
seed k container-path 'kubepods.slice/kubepods-pod4f1e3c2a_9b8d.slice/docker-3f6c2a1b9d8e7f6a.scope'
# l: a namespace root, then a namespaced /proc/PID/cgroup path.
seed l ns-path 'kubepods/burstable/poda/bbbbbbbbbbbb\n/../../podc/dddddddddddd'
seed l ns-path '\n/../x'
# m: /proc/PID/stat (a comm with spaces and parentheses).
seed m proc-stat '16051 (cat) R 16044 16044 19936 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 307680 3133440 416 18446744073709551615\n'
seed m proc-stat '42 (envoy (main) x) S 1 42 42 0 -1 4194560 0\n'
# n: /proc/PID/cmdline (NUL-separated).
seed n proc-cmdline '/usr/local/bin/envoy\x00-c\x00etc/istio/proxy/envoy-rev.json\x00--concurrency\x002\x00--drain-time-s\x0045\x00'
seed n proc-cmdline '/usr/local/bin/pilot-agent\x00proxy\x00router\x00--domain\x00istio-system.svc.cluster.local\x00'
seed n proc-cmdline 'envoy\x00--concurrency=4\x00'
# o: CRI runtimeSpec.linux.cgroupsPath (systemd and cgroupfs drivers).
seed o cgroups-path 'kubepods-burstable-pod4f1e3c2a_9b8d_4c7e_a6f5_0123456789ab.slice:cri-containerd:3f6c2a1b9d8e7f6a5b4c3d2e1f0a9b8c'
seed o cgroups-path 'kubepods-besteffort-pod4f1e3c2a_9b8d.slice:crio:3f6c2a1b9d8e7f6a'
seed o cgroups-path '/kubepods/burstable/pod4f1e3c2a-9b8d-4c7e-a6f5-0123456789ab/3f6c2a1b9d8e7f6a5b4c'
seed o cgroups-path ':docker:3f6c2a1b9d8e'
seed o cgroups-path '-.slice'
# p: ContainerStatus{verbose} info["info"] JSON (containerd's shape, trimmed).
seed p verbose-info '{"sandboxID":"9f2e","pid":4242,"removing":false,"snapshotKey":"3f6c","snapshotter":"overlayfs","runtimeType":"io.containerd.runc.v2","runtimeOptions":{"systemd_cgroup":true},"config":{"metadata":{"name":"istio-proxy"}},"runtimeSpec":{"ociVersion":"1.1.0","process":{"args":["/usr/local/bin/pilot-agent","proxy","sidecar"]},"linux":{"resources":{"cpu":{"shares":102,"quota":200000,"period":100000}},"cgroupsPath":"kubepods-burstable-pod4f1e3c2a_9b8d.slice:cri-containerd:3f6c2a1b9d8e7f6a","namespaces":[{"type":"pid"},{"type":"cgroup"}]}}}'
seed p verbose-info '{"pid":0,"runtimeSpec":{"linux":{"cgroupsPath":"/kubepods/burstable/pod1/crio-abc"}}}'
# q: the CRI container's metadata name, the sandbox's name, UID, namespace, then labels.
seed q cri-labels 'istio-proxy\nreviews-v1-5b4d\n4f1e3c2a-9b8d-4c7e-a6f5-0123456789ab\nbookinfo\nio.kubernetes.pod.namespace=bookinfo\nio.kubernetes.pod.name=reviews-v1-5b4d\nio.kubernetes.pod.uid=4f1e3c2a-9b8d-4c7e-a6f5-0123456789ab\nio.kubernetes.container.name=istio-proxy\n'
# r: pod annotations.
seed r annotations 'sidecar-governor.io/mode=dry-run\nsidecar-governor.io/cpu-min=200m\nsidecar-governor.io/cpu-max=1\nkubectl.kubernetes.io/default-container=app\n'
seed r annotations 'sidecar-governor.io/cpu-min=2\nsidecar-governor.io/cpu-max=100m\n'

# Journals: version 2 as the agent writes it, version 1 to migrate.
printf '%s' '{"version":2,"containers":{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1e3c2a_9b8d.slice/cri-containerd-3f6c2a1b9d8e7f6a.scope":{"podUid":"4f1e3c2a-9b8d","containerId":"3f6c2a1b9d8e7f6a","namespace":"bookinfo","pod":"reviews-v1","container":"istio-proxy","cpuMax":{"original":"200000 100000","written":"50000 100000"},"cpuMaxBurst":{"original":0,"written":25000},"memoryHigh":{"original":"max","written":131072000,"pending":134217728},"podHold":"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1e3c2a_9b8d.slice","recordedAt":1764590000}},"pods":{"kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1e3c2a_9b8d.slice":{"cpuMax":{"original":"300000 100000","written":"400000 100000"},"holders":["kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod4f1e3c2a_9b8d.slice/cri-containerd-3f6c2a1b9d8e7f6a.scope"]}}}' >corpus/journal/seed-v2
printf '%s' '{"version":2,"containers":{"kubepods/pod1/abc":{"podUid":"u","containerId":"c","cpuMax":{"original":"max 100000","legacy":true},"recordedAt":1}},"pods":{}}' >corpus/journal/seed-v2-legacy
printf '%s' '{"version":1,"entries":{"kubepods/burstable/poduid/cid":{"podUid":"uid","containerId":"cid","cpuMax":"200000 100000","podCpuMax":"250000 100000","memoryHigh":"max","cpuMaxBurst":"0","recordedAt":1}}}' >corpus/journal/seed-v1
printf '%s' '{"version":2,"containers":{},"pods":{}}' >corpus/journal/seed-empty

# Policies: the shipped defaults, the example, and overrides.
cp "$repo/daemonset/policy.yaml" corpus/policy/seed-defaults.yaml
cp "$repo/examples/policies/tight.yaml" corpus/policy/seed-tight.yaml
cat >corpus/policy/seed-overrides.yaml <<'YAML'
dryRun: true
cpu: {min: 200m, max: "1", burstRatio: 0.5, allowAboveLimit: true}
memory: {enabled: false, shrinkWith: reclaim}
overrides:
  - namespace: payments
    mode: dry-run
    cpu: {min: 200m, max: "1"}
  - namespace: batch
    mode: "off"
YAML

# Traces: the head of each example trace, and one with every optional column.
for t in bursty diurnal steady; do head -n 40 "$repo/examples/traces/$t.csv" >"corpus/trace/seed-$t.csv"; done
cat >corpus/trace/seed-all-columns.csv <<'CSV'
time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes,cpu_limit_millicores,memory_limit_bytes,concurrency
0,web/a,10,104857600,,2000,1073741824,2
0.5,web/a,900.5,104857600,52428800,2000,1073741824,2
1,web/b,0,1,0,,,
CSV
