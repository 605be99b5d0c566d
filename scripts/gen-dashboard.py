#!/usr/bin/env python3
"""Writes daemonset/grafana-dashboard.json (Grafana 10+ schema) from the panel list below.

Every metric named here must be exported by src/metrics.rs: tests/manifests.rs checks it (memory
series from the memory controller work are listed there as pending until they exist).
Run: python3 scripts/gen-dashboard.py  (scripts/validate-manifests.sh checks the file is current)
"""
import json
import pathlib
import sys

DS = {"type": "prometheus", "uid": "${datasource}"}
SEL = 'node=~"$node"'
PSEL = 'node=~"$node", namespace=~"$namespace"'


def target(expr, legend, ref):
    return {"datasource": DS, "expr": expr, "legendFormat": legend, "refId": ref, "range": True}


def panel(pid, title, kind, grid, exprs, unit="short", desc="", stack=False, extra=None):
    p = {
        "id": pid,
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DS,
        "gridPos": dict(zip(("x", "y", "w", "h"), grid)),
        "targets": [target(e, l, chr(ord("A") + i)) for i, (e, l) in enumerate(exprs)],
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": {},
    }
    if kind == "timeseries":
        p["fieldConfig"]["defaults"]["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 10 if stack else 0,
            "stacking": {"mode": "normal" if stack else "none"},
            "showPoints": "never",
        }
        p["options"] = {"legend": {"displayMode": "table", "placement": "right", "calcs": ["lastNotNull"]},
                        "tooltip": {"mode": "multi", "sort": "desc"}}
    if kind == "stat":
        p["options"] = {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area"}
    if extra:
        p.update(extra)
    return p


def row(pid, title, y):
    return {"id": pid, "type": "row", "title": title, "collapsed": False,
            "gridPos": {"x": 0, "y": y, "w": 24, "h": 1}, "panels": []}


panels = [
    row(1, "Overview", 0),
    panel(2, "Proxies governed", "stat", (0, 1, 4, 4),
          [(f"sum(sidecar_governor_proxies{{{SEL}}})", "proxies")],
          desc="Sidecar proxies the agents govern now."),
    panel(3, "Agents up", "stat", (4, 1, 4, 4),
          [(f'sum(up{{job="sidecar-governor", {SEL}}})', "up")]),
    panel(4, "CPU reclaimed", "stat", (8, 1, 4, 4),
          [(f"sum(sidecar_governor_cpu_original_millicores{{{PSEL}}} - sidecar_governor_cpu_quota_millicores{{{PSEL}}}) / 1000",
            "cores")],
          unit="none", desc="Original CPU limits minus the quotas in force, in cores."),
    panel(5, "Memory held back", "stat", (12, 1, 4, 4),
          [(f"sum(sidecar_governor_memory_max_bytes{{{PSEL}}} - sidecar_governor_memory_high_bytes{{{PSEL}}})",
            "bytes")],
          unit="bytes", desc="memory.max minus memory.high summed over proxies."),
    panel(6, "Dry run", "stat", (16, 1, 4, 4),
          [(f"max(sidecar_governor_dry_run{{{SEL}}})", "dry run")],
          desc="1 when any agent only decides and writes nothing."),
    panel(7, "Config reload failing", "stat", (20, 1, 4, 4),
          [(f"count(sidecar_governor_config_last_reload_successful{{{SEL}}} == 0) or vector(0)", "agents")],
          desc="Agents whose policy file holds a refused policy (they keep the last good one)."),
    row(8, "CPU", 5),
    panel(9, "CPU quota vs usage per proxy", "timeseries", (0, 6, 12, 9),
          [(f"sidecar_governor_cpu_quota_millicores{{{PSEL}}}", "quota {{namespace}}/{{pod}}"),
           (f"sidecar_governor_cpu_usage_millicores{{{PSEL}}}", "usage {{namespace}}/{{pod}}")],
          unit="none", desc="millicores"),
    panel(10, "Throttled ratio per proxy", "timeseries", (12, 6, 12, 9),
          [(f"sidecar_governor_cpu_throttled_ratio{{{PSEL}}}", "{{namespace}}/{{pod}}")],
          unit="percentunit", desc="Share of CFS periods throttled over the last tick."),
    panel(11, "CPU reclaimed per node", "timeseries", (0, 15, 12, 8),
          [(f"sum by (node) (sidecar_governor_cpu_original_millicores{{{PSEL}}} - sidecar_governor_cpu_quota_millicores{{{PSEL}}})",
            "{{node}}")],
          unit="none", stack=True, desc="millicores: original limits minus quotas in force"),
    panel(12, "Actions by reason", "timeseries", (12, 15, 12, 8),
          [(f"sum by (resource, direction, reason) (rate(sidecar_governor_actions_total{{{SEL}}}[$__rate_interval]))",
            "{{resource}} {{direction}} {{reason}}")],
          unit="ops", stack=True),
    row(13, "Memory", 23),
    panel(14, "memory.high vs usage per proxy", "timeseries", (0, 24, 12, 9),
          [(f"sidecar_governor_memory_high_bytes{{{PSEL}}}", "high {{namespace}}/{{pod}}"),
           (f"sidecar_governor_memory_usage_bytes{{{PSEL}}}", "usage {{namespace}}/{{pod}}")],
          unit="bytes"),
    panel(15, "Memory held back per node", "timeseries", (12, 24, 12, 9),
          [(f"sum by (node) (sidecar_governor_memory_max_bytes{{{PSEL}}} - sidecar_governor_memory_high_bytes{{{PSEL}}})",
            "{{node}}")],
          unit="bytes", stack=True),
    row(16, "Agent", 33),
    panel(17, "Tick duration", "timeseries", (0, 34, 8, 8),
          [(f"histogram_quantile(0.5, sum by (le, node) (rate(sidecar_governor_tick_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
            "p50 {{node}}"),
           (f"histogram_quantile(0.99, sum by (le, node) (rate(sidecar_governor_tick_duration_seconds_bucket{{{SEL}}}[$__rate_interval])))",
            "p99 {{node}}")],
          unit="s"),
    panel(18, "Errors by kind", "timeseries", (8, 34, 8, 8),
          [(f"sum by (kind) (rate(sidecar_governor_errors_total{{{SEL}}}[$__rate_interval]))", "{{kind}}"),
           (f"sum(rate(sidecar_governor_conflicts_total{{{SEL}}}[$__rate_interval]))", "conflicts")],
          unit="ops"),
    panel(19, "Config reloads and Events", "timeseries", (16, 34, 8, 8),
          [(f"sum by (result) (increase(sidecar_governor_config_reloads_total{{{SEL}}}[$__rate_interval]))",
            "reload {{result}}"),
           (f"sum by (result) (increase(sidecar_governor_events_total{{{SEL}}}[$__rate_interval]))",
            "event {{result}}")],
          unit="short"),
    panel(20, "Live policy per agent", "table", (0, 42, 24, 6),
          [(f"sidecar_governor_config_info{{{SEL}}}", "")],
          desc="The hash of each agent's live policy text; agents of one cluster should agree.",
          extra={"transformations": [{"id": "labelsToFields", "options": {}}]}),
]

dashboard = {
    "uid": "sidecar-governor",
    "title": "sidecar-governor",
    "description": "Service-mesh sidecars right-sized by sidecar-governor: quotas, usage, actions, agent health.",
    "tags": ["sidecar-governor", "service-mesh", "istio", "linkerd"],
    "timezone": "browser",
    "editable": True,
    "graphTooltip": 1,
    "refresh": "30s",
    "schemaVersion": 39,
    "version": 1,
    "time": {"from": "now-3h", "to": "now"},
    "annotations": {"list": []},
    "templating": {"list": [
        {"name": "datasource", "type": "datasource", "query": "prometheus", "label": "Data source",
         "current": {}, "hide": 0},
        {"name": "node", "type": "query", "label": "Node", "datasource": DS,
         "query": {"query": "label_values(sidecar_governor_proxies, node)", "refId": "node"},
         "definition": "label_values(sidecar_governor_proxies, node)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}, "hide": 0},
        {"name": "namespace", "type": "query", "label": "Namespace", "datasource": DS,
         "query": {"query": "label_values(sidecar_governor_cpu_quota_millicores, namespace)", "refId": "namespace"},
         "definition": "label_values(sidecar_governor_cpu_quota_millicores, namespace)",
         "includeAll": True, "multi": True, "allValue": ".*", "refresh": 2, "current": {}, "hide": 0},
    ]},
    "panels": panels,
}

out = pathlib.Path(__file__).resolve().parent.parent / "daemonset" / "grafana-dashboard.json"
text = json.dumps(dashboard, indent=2) + "\n"
if len(sys.argv) > 1 and sys.argv[1] == "--check":
    if out.read_text() != text:
        sys.exit(f"{out} is stale: run python3 scripts/gen-dashboard.py")
    print(f"{out.name}: current")
else:
    out.write_text(text)
    print(f"wrote {out}")
