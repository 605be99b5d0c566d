#!/usr/bin/env python3
"""Renders a kustomize base without kubectl or kustomize, for the subset daemonset/ uses:
`resources` (files), `namespace`, `labels` (pairs, metadata only) and `configMapGenerator`
(files, options.labels, options.disableNameSuffixHash: true only). Anything else is an error, so
the renderer never silently differs from kustomize (scripts/validate-manifests.sh compares the
two where kubectl exists).

Usage: scripts/render-kustomize.py DIR > rendered.yaml
"""
import pathlib
import sys

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass",
                  "CustomResourceDefinition", "StorageClass", "PersistentVolume"}
KNOWN = {"apiVersion", "kind", "namespace", "labels", "resources", "configMapGenerator"}


def fail(msg):
    sys.exit(f"render-kustomize: {msg}")


def main(base):
    base = pathlib.Path(base)
    k = yaml.safe_load((base / "kustomization.yaml").read_text())
    unknown = set(k) - KNOWN
    if unknown:
        fail(f"unsupported kustomization fields: {sorted(unknown)}")
    namespace = k.get("namespace")
    labels = {}
    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            fail("labels with includeSelectors/includeTemplates are not supported")
        labels.update(entry["pairs"])
    objects = []
    for res in k.get("resources", []):
        path = base / res
        if path.is_dir():
            fail(f"resource {res} is a directory (not supported)")
        objects += [o for o in yaml.safe_load_all(path.read_text()) if o]
    for gen in k.get("configMapGenerator", []):
        opts = gen.get("options", {})
        if not opts.get("disableNameSuffixHash"):
            fail(f"configMapGenerator {gen['name']}: only disableNameSuffixHash: true is supported")
        if set(gen) - {"name", "files", "options"} or set(opts) - {"disableNameSuffixHash", "labels"}:
            fail(f"configMapGenerator {gen['name']}: unsupported fields")
        data = {}
        for f in gen["files"]:
            key, _, src = f.partition("=")
            src = src or key
            data[pathlib.Path(key).name] = (base / src).read_text()
        cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": gen["name"]}, "data": data}
        if opts.get("labels"):
            cm["metadata"]["labels"] = dict(opts["labels"])
        objects.append(cm)
    for o in objects:
        meta = o.setdefault("metadata", {})
        if namespace and o["kind"] not in CLUSTER_SCOPED:
            meta["namespace"] = namespace
        if labels:
            meta.setdefault("labels", {}).update(labels)
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False, default_flow_style=False)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        fail("usage: render-kustomize.py DIR")
    main(sys.argv[1])
