#!/usr/bin/env bash
# Assembles the sidecar-governor container image without a container engine: the same content as
# the Containerfile's final stage (the release binary, the shared libraries `ldd` lists, the
# default policy, /etc/passwd and /etc/group), as one layer, written with Python's tarfile and
# hashlib into an image archive.
#
#   scripts/build-image.sh [--format docker|oci] [--name NAME:TAG] [--out FILE] [--no-build]
#
# Defaults: --format docker (a docker-archive: manifest.json + config + layer, which
# `ctr -n k8s.io images import --snapshotter native FILE`, `podman load -i FILE` and
# `skopeo inspect docker-archive:FILE` read), --name sidecar-governor:dev,
# --out target/image/sidecar-governor-dev.tar (sidecar-governor-dev.oci.tar for --format oci,
# an OCI image layout: `skopeo inspect oci-archive:FILE`). Builds the release binary first unless
# --no-build (BIN=path overrides the binary). The archive is reproducible: fixed mtimes and owners.
# Checks: the image's root filesystem runs `sidecar-governor --version` under chroot (proving the
# libraries suffice) when run as root; `skopeo inspect` when skopeo is installed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

format=docker
name=sidecar-governor:dev
out=""
build=1
while [ $# -gt 0 ]; do
	case $1 in
	--format) format=$2; shift 2 ;;
	--name) name=$2; shift 2 ;;
	--out) out=$2; shift 2 ;;
	--no-build) build=0; shift ;;
	*) echo "usage: $0 [--format docker|oci] [--name NAME:TAG] [--out FILE] [--no-build]" >&2; exit 2 ;;
	esac
done
case $format in docker | oci) ;; *) echo "--format must be docker or oci" >&2; exit 2 ;; esac
target_dir=${CARGO_TARGET_DIR:-target}
bin=${BIN:-$target_dir/release/sidecar-governor}
if [ -z "$out" ]; then
	suffix=$([ "$format" = oci ] && echo .oci.tar || echo .tar)
	out=target/image/$(tr ':/' '--' <<<"${name##*/}")$suffix
fi
if [ "$build" = 1 ] && [ -z "${BIN:-}" ]; then
	cargo build --release --bin sidecar-governor
fi
[ -x "$bin" ] || { echo "no binary at $bin (build it, or set BIN=)" >&2; exit 1; }

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
install -D -m 0755 "$bin" "$root/usr/bin/sidecar-governor"
# The dynamic loader and every library ldd resolves, at the same paths.
ldd "$bin" | awk '/=> \//{print $3} /^\t\/[^ ]+ \(/{print $1}' | sort -u | while read -r lib; do
	install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
done
install -D -m 0644 daemonset/policy.yaml "$root/etc/sidecar-governor/policy.yaml"
mkdir -p "$root/var/lib/sidecar-governor" "$root/tmp"
chmod 1777 "$root/tmp"
printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$root/etc/passwd"
printf 'root:x:0:\nnobody:x:65534:\n' >"$root/etc/group"
chmod 0644 "$root/etc/passwd" "$root/etc/group"

if [ "$(id -u)" = 0 ] && command -v chroot >/dev/null; then
	if v=$(chroot "$root" /usr/bin/sidecar-governor --version 2>&1); then
		echo "image rootfs runs: $v"
	else
		echo "the image's root filesystem cannot run the binary: $v" >&2
		exit 1
	fi
fi

mkdir -p "$(dirname "$out")"
version=$("$bin" --version | awk '{print $2}')
python3 - "$root" "$out" "$format" "$name" "$version" <<'PY'
import hashlib, io, json, os, sys, tarfile

root, out, fmt, name, version = sys.argv[1:]
repo, _, tag = name.rpartition(":")
if not repo or "/" in tag:
    repo, tag = name, "latest"
# containerd names images fully: docker.io/library/NAME for a bare name (as the docker-archive
# import does), so the OCI form gets the same name.
first = repo.split("/")[0]
if "/" not in repo:
    image_name = f"docker.io/library/{repo}"
elif "." in first or ":" in first or first == "localhost":
    image_name = repo
else:
    image_name = f"docker.io/{repo}"

def add(tar, arcname, data=None, path=None, mode=0o644, kind=tarfile.REGTYPE):
    info = tarfile.TarInfo(arcname)
    info.mode, info.mtime, info.uid, info.gid, info.uname, info.gname = mode, 0, 0, 0, "", ""
    info.type = kind
    if kind == tarfile.REGTYPE:
        if path is not None:
            data = open(path, "rb").read()
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    else:
        tar.addfile(info)

# The layer: every file under root, sorted, owned by root, mtime 0.
layer_buf = io.BytesIO()
with tarfile.open(fileobj=layer_buf, mode="w", format=tarfile.PAX_FORMAT) as layer:
    entries = []
    for dirpath, dirnames, filenames in os.walk(root):
        for d in dirnames:
            entries.append(os.path.join(dirpath, d))
        for f in filenames:
            entries.append(os.path.join(dirpath, f))
    for full in sorted(entries, key=lambda p: os.path.relpath(p, root)):
        rel = os.path.relpath(full, root)
        st = os.lstat(full)
        mode = st.st_mode & 0o7777
        if os.path.isdir(full) and not os.path.islink(full):
            add(layer, rel + "/", mode=mode, kind=tarfile.DIRTYPE)
        else:
            add(layer, rel, path=full, mode=mode)
layer_bytes = layer_buf.getvalue()
layer_digest = hashlib.sha256(layer_bytes).hexdigest()

config = {
    "architecture": "amd64",
    "os": "linux",
    "created": "1970-01-01T00:00:00Z",
    "config": {
        "User": "0:0",
        "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
        "Entrypoint": ["/usr/bin/sidecar-governor"],
        "Cmd": ["run", "--config=/etc/sidecar-governor/policy.yaml"],
        "ExposedPorts": {"9477/tcp": {}},
        "WorkingDir": "/",
        "Labels": {
            "org.opencontainers.image.title": "sidecar-governor",
            "org.opencontainers.image.version": version,
            "org.opencontainers.image.licenses": "Apache-2.0",
        },
    },
    "rootfs": {"type": "layers", "diff_ids": [f"sha256:{layer_digest}"]},
    "history": [{"created": "1970-01-01T00:00:00Z", "created_by": "scripts/build-image.sh"}],
}
config_bytes = json.dumps(config, sort_keys=True, separators=(",", ":")).encode()
config_digest = hashlib.sha256(config_bytes).hexdigest()

with tarfile.open(out, mode="w", format=tarfile.PAX_FORMAT) as tar:
    add(tar, "blobs/", mode=0o755, kind=tarfile.DIRTYPE)
    add(tar, "blobs/sha256/", mode=0o755, kind=tarfile.DIRTYPE)
    add(tar, f"blobs/sha256/{config_digest}", config_bytes)
    add(tar, f"blobs/sha256/{layer_digest}", layer_bytes)
    if fmt == "docker":
        manifest = [{
            "Config": f"blobs/sha256/{config_digest}",
            "RepoTags": [f"{repo}:{tag}"],
            "Layers": [f"blobs/sha256/{layer_digest}"],
        }]
        add(tar, "manifest.json", json.dumps(manifest, separators=(",", ":")).encode())
        add(tar, "repositories", json.dumps({repo: {tag: layer_digest}}).encode())
    else:
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                       "digest": f"sha256:{config_digest}", "size": len(config_bytes)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                        "digest": f"sha256:{layer_digest}", "size": len(layer_bytes)}],
        }
        manifest_bytes = json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()
        manifest_digest = hashlib.sha256(manifest_bytes).hexdigest()
        add(tar, f"blobs/sha256/{manifest_digest}", manifest_bytes)
        index = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{manifest_digest}", "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {"org.opencontainers.image.ref.name": tag,
                                "io.containerd.image.name": f"{image_name}:{tag}"},
            }],
        }
        add(tar, "oci-layout", b'{"imageLayoutVersion":"1.0.0"}')
        add(tar, "index.json", json.dumps(index, separators=(",", ":")).encode())
print(f"layer sha256:{layer_digest} ({len(layer_bytes)} bytes), config sha256:{config_digest}")
PY
echo "wrote $out ($format archive of $name, $(du -h "$out" | cut -f1))"
if command -v skopeo >/dev/null; then
	transport=$([ "$format" = oci ] && echo oci-archive || echo docker-archive)
	skopeo inspect --config "$transport:$out" >/dev/null && echo "skopeo inspect $transport:$out: ok"
fi
