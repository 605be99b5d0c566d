#!/usr/bin/env bash
# Builds the Go binaries of the `cluster` VM scenario from their modules (the Go module proxy) and
# caches them outside the work tree, keyed by version:
#
#   $SG_CLUSTER_CACHE/k8s/<version>/bin/        kube-apiserver kube-controller-manager kube-scheduler
#                                               kubelet kube-proxy kubectl
#   $SG_CLUSTER_CACHE/etcd/<version>/bin/       etcd etcdctl
#   $SG_CLUSTER_CACHE/containerd/<version>/bin/ containerd containerd-shim-runc-v2 ctr
#   $SG_CLUSTER_CACHE/helm/<version>/bin/       helm
#
#   scripts/cluster-build.sh [--force] [--print-dirs] [COMPONENT...]   (default: all four)
#
# k8s.io/kubernetes cannot be `go install`ed (its go.mod replaces the k8s.io staging modules with
# local paths), so each component gets a go.mod of our own in <cache>/<component>/<version>/mod/
# that names the commands as `tool`s, requires the module at its version and, for Kubernetes,
# replaces every k8s.io/<staging> module with its v0.N.M release. A component whose bin/.built
# exists is not rebuilt (--force rebuilds). Builds run one after another (2-core machines):
# CGO_ENABLED=0 (static binaries, as Kubernetes releases its own), -trimpath, -ldflags '-s -w'
# plus the version stamps the upstream Makefiles set. The build time of each is printed and kept
# in bin/.built. --print-dirs prints `NAME DIR` per component and builds nothing.
#
# Environment: SG_CLUSTER_CACHE (default /var/cache/sidecar-governor), SG_K8S_VERSION (v1.37.2),
# SG_ETCD_VERSION (v3.7.3), SG_CONTAINERD_VERSION (v2.4.2), SG_HELM_VERSION (v3.22.0),
# GOFLAGS (default -trimpath -buildvcs=false -p=2).
set -euo pipefail

SG_CLUSTER_CACHE=${SG_CLUSTER_CACHE:-/var/cache/sidecar-governor}
K8S_VERSION=${SG_K8S_VERSION:-v1.37.2}
ETCD_VERSION=${SG_ETCD_VERSION:-v3.7.3}
CONTAINERD_VERSION=${SG_CONTAINERD_VERSION:-v2.4.2}
HELM_VERSION=${SG_HELM_VERSION:-v3.22.0}
export GOFLAGS=${GOFLAGS:--trimpath -buildvcs=false -p=2}
export CGO_ENABLED=0 GOTOOLCHAIN=local

log() { printf '[cluster-build] %s\n' "$*" >&2; }
die() {
	printf '[cluster-build] error: %s\n' "$*" >&2
	exit 2
}

force=0
print=0
comps=()
while (($#)); do
	case $1 in
	--force) force=1 ;;
	--print-dirs) print=1 ;;
	-h | --help)
		sed -n '2,25s/^# \{0,1\}//p' "${BASH_SOURCE[0]}"
		exit 0
		;;
	k8s | etcd | containerd | helm) comps+=("$1") ;;
	*) die "unknown argument $1 (components: k8s etcd containerd helm)" ;;
	esac
	shift
done
((${#comps[@]})) || comps=(k8s etcd containerd helm)

dir_of() {
	case $1 in
	k8s) echo "$SG_CLUSTER_CACHE/k8s/$K8S_VERSION" ;;
	etcd) echo "$SG_CLUSTER_CACHE/etcd/$ETCD_VERSION" ;;
	containerd) echo "$SG_CLUSTER_CACHE/containerd/$CONTAINERD_VERSION" ;;
	helm) echo "$SG_CLUSTER_CACHE/helm/$HELM_VERSION" ;;
	esac
}

if ((print)); then
	for c in "${comps[@]}"; do echo "$c $(dir_of "$c")"; done
	exit 0
fi
command -v go >/dev/null || die "no go on PATH (Go 1.26 is needed)"

# gomod DIR MODULE VERSION TOOLS...: writes DIR/mod/go.mod (the tools and the module) and tidies.
# Extra lines for go.mod come on stdin.
gomod() {
	local dir=$1 module=$2 version=$3
	shift 3
	mkdir -p "$dir/mod"
	{
		echo "module sidecar-governor.local/cluster-build/$(basename "$(dirname "$dir")")"
		echo
		echo "go 1.26.0"
		echo
		for t in "$@"; do echo "tool $t"; done
		echo
		echo "require $module $version"
		cat
	} >"$dir/mod/go.mod"
	(cd "$dir/mod" && go mod tidy) >&2 || die "go mod tidy for $module@$version failed"
}

# build COMPONENT LDFLAGS PKGS...: go build every package into DIR/bin, timed.
build() {
	local comp=$1 ldflags=$2 dir t0 secs
	shift 2
	dir=$(dir_of "$comp")
	rm -rf "$dir/bin.tmp"
	mkdir -p "$dir/bin.tmp"
	t0=$SECONDS
	log "$comp: go build $* ($GOFLAGS)"
	(cd "$dir/mod" && go build -ldflags "-s -w $ldflags" -o "$dir/bin.tmp/" "$@") >&2 ||
		die "go build for $comp failed"
	secs=$((SECONDS - t0))
	printf 'built=%s seconds=%s go=%s goflags=%s\n' "$(date -u +%FT%TZ)" "$secs" "$(go env GOVERSION)" "$GOFLAGS" >"$dir/bin.tmp/.built"
	rm -rf "${dir:?}/bin"
	mv "$dir/bin.tmp" "$dir/bin"
	log "$comp: built in ${secs}s: $(find "$dir/bin" -maxdepth 1 -type f ! -name '.*' -printf '%f ')"
}

build_k8s() {
	local dir v=$K8S_VERSION minor staging s date
	dir=$(dir_of k8s)
	minor=${v#v1.}
	minor=${minor%%.*}
	# The staging modules are those k8s.io/kubernetes's own go.mod replaces with ./staging paths.
	local kmod
	kmod=$(cd /tmp && go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/^\t"GoMod": "\(.*\)",$/\1/p')
	[[ -f $kmod ]] || die "cannot download k8s.io/kubernetes@$v"
	staging=$(awk '$2 == "=>" && $3 ~ /^\.\/staging\// { print $1 }' "$kmod")
	[[ -n $staging ]] || die "no staging replaces in k8s.io/kubernetes@$v's go.mod"
	local cmds=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl) pkgs=() c
	for c in "${cmds[@]}"; do pkgs+=("k8s.io/kubernetes/cmd/$c"); done
	{
		echo
		echo "replace ("
		for s in $staging; do echo "	$s => $s v0.${v#v1.}"; done
		echo ")"
	} | gomod "$dir" k8s.io/kubernetes "$v" "${pkgs[@]}"
	date=$(date -u +%FT%TZ)
	local ld="" p
	for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
		ld="$ld -X $p.gitVersion=$v -X $p.gitMajor=1 -X $p.gitMinor=$minor -X $p.gitTreeState=clean -X $p.buildDate=$date"
	done
	build k8s "$ld" "${pkgs[@]}"
}

build_etcd() {
	local dir
	dir=$(dir_of etcd)
	gomod "$dir" go.etcd.io/etcd/server/v3 "$ETCD_VERSION" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3 <<EOF

require go.etcd.io/etcd/etcdctl/v3 $ETCD_VERSION
EOF
	build etcd "" go.etcd.io/etcd/server/v3 go.etcd.io/etcd/etcdctl/v3
	mv "$dir/bin/server" "$dir/bin/etcd"
}

build_containerd() {
	local dir m=github.com/containerd/containerd/v2
	dir=$(dir_of containerd)
	gomod "$dir" "$m" "$CONTAINERD_VERSION" "$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr" </dev/null
	GOFLAGS="$GOFLAGS -tags=no_btrfs,no_devmapper,no_zfs" build containerd \
		"-X $m/version.Version=$CONTAINERD_VERSION -X $m/version.Revision=module" \
		"$m/cmd/containerd" "$m/cmd/containerd-shim-runc-v2" "$m/cmd/ctr"
}

build_helm() {
	local dir m=helm.sh/helm/v3
	dir=$(dir_of helm)
	gomod "$dir" "$m" "$HELM_VERSION" "$m/cmd/helm" </dev/null
	# The Kubernetes version helm assumes without a cluster (helm template, lint), as helm's
	# Makefile sets it: client-go v0.N.x -> 1.N.
	local cg kminor ld
	cg=$(cd "$dir/mod" && go list -m -f '{{.Version}}' k8s.io/client-go)
	kminor=$(cut -d. -f2 <<<"$cg")
	ld="-X $m/internal/version.version=$HELM_VERSION -X $m/internal/version.gitTreeState=clean"
	for p in pkg/lint/rules pkg/chartutil; do ld="$ld -X $m/$p.k8sVersionMajor=1 -X $m/$p.k8sVersionMinor=$kminor"; done
	build helm "$ld" "$m/cmd/helm"
}

for c in "${comps[@]}"; do
	d=$(dir_of "$c")
	if ((!force)) && [[ -f $d/bin/.built ]]; then
		log "$c: cached in $d/bin ($(cat "$d/bin/.built"))"
		continue
	fi
	"build_$c"
done
