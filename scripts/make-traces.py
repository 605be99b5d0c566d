#!/usr/bin/env python3
"""Writes the example traces for `sidecar-governor simulate` to examples/traces/.

Deterministic (fixed seeds): running it again rewrites the same files. Three shapes, four proxies
each, an hour or less, rows only where demand changes (at most every second), so the files stay
small:

- steady.csv:  flat demand with a little noise, one proxy idle.
- bursty.csv:  low baselines with short bursts (Envoy under spiky traffic), plus one config push
               that hits every proxy at the same few seconds.
- diurnal.csv: a day compressed into an hour: demand follows a sine from night to peak; one proxy's
               memory grows with mesh size (xDS config), not traffic.

Format (see src/simulate/trace.rs): time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes,
cpu_limit_millicores,memory_limit_bytes — the limits on each proxy's first row only.

Usage: scripts/make-traces.py [OUT_DIR]
"""

import math
import os
import random
import sys

MI = 1 << 20
HEADER = (
    "time,proxy,cpu_millicores,memory_bytes,unreclaimable_bytes,"
    "cpu_limit_millicores,memory_limit_bytes"
)


class Writer:
    """Collects rows, dropping those that repeat the proxy's previous demand."""

    def __init__(self, title):
        self.title = title
        self.rows = []
        self.last = {}
        self.limits = {}

    def proxy(self, name, cpu_limit=2000, memory_limit=1024 * MI):
        self.limits[name] = (cpu_limit, memory_limit)

    def row(self, t, name, cpu, mem, anon, force=False):
        cpu = round(max(cpu, 0.0), 1)
        mem = int(mem) // 4096 * 4096
        anon = min(int(anon) // 4096 * 4096, mem)
        value = (cpu, mem, anon)
        if not force and self.last.get(name) == value:
            return
        first = name not in self.last
        self.last[name] = value
        cpu_limit, memory_limit = self.limits[name] if first else ("", "")
        self.rows.append((t, name, cpu, mem, anon, cpu_limit, memory_limit))

    def close(self, end):
        for name, (cpu, mem, anon) in self.last.items():
            self.rows.append((end, name, cpu, mem, anon, "", ""))

    def write(self, path):
        self.rows.sort(key=lambda r: (r[0], r[1]))
        with open(path, "w", encoding="utf-8") as f:
            f.write(f"# {self.title}\n# written by scripts/make-traces.py; do not edit by hand\n")
            f.write(HEADER + "\n")
            for t, name, cpu, mem, anon, cl, ml in self.rows:
                cpu_text = f"{cpu:g}"
                f.write(f"{t},{name},{cpu_text},{mem},{anon},{cl},{ml}\n")


def steady(out):
    rng = random.Random(1)
    w = Writer("steady: flat demand with noise, 30 min")
    end = 1800
    spec = [
        # name, cpu, cpu noise, memory MiB, anon share, cpu limit, memory limit
        ("shop/cart-7d9f", 40, 6, 90, 0.85, 2000, 1024 * MI),
        ("shop/checkout-5c1a", 350, 40, 140, 0.9, 1000, 512 * MI),
        ("shop/web-6b2e", 800, 80, 180, 0.8, 2000, 1024 * MI),
        ("batch/report-0", 2, 1, 45, 0.9, 2000, 1024 * MI),
    ]
    for name, _, _, _, _, cl, ml in spec:
        w.proxy(name, cl, ml)
    for t in range(0, end, 5):
        for name, cpu, noise, mem, share, _, _ in spec:
            c = cpu + rng.gauss(0, noise)
            m = mem * MI * (1 + rng.uniform(-0.01, 0.01))
            w.row(t, name, c, m, m * share)
    w.close(end)
    w.write(os.path.join(out, "steady.csv"))


def bursty(out):
    rng = random.Random(2)
    w = Writer("bursty: low baselines, short bursts, one config push at 900 s; 30 min")
    end = 1800
    push = range(900, 904)
    spec = [
        # name, base cpu, burst cpu range, burst gap range (s), burst length range (s), MiB
        ("api/gateway-client-3f2", 60, (900, 1500), (60, 150), (3, 15), 110),
        ("api/search-8e41", 200, (1200, 1900), (90, 240), (5, 30), 160),
        ("api/auth-1a9c", 20, (300, 500), (120, 300), (2, 6), 70),
        ("api/notify-77d0", 5, (100, 250), (200, 400), (1, 4), 50),
    ]
    for name, *_ in spec:
        w.proxy(name)
    state = {}
    for name, *_ in spec:
        state[name] = {"next": rng.randint(20, 120), "until": -1, "level": 0.0, "extra": 0.0}
    for t in range(end):
        for name, base, (lo, hi), (glo, ghi), (llo, lhi), mib in spec:
            s = state[name]
            if t >= s["next"]:
                s["until"] = t + rng.randint(llo, lhi)
                s["level"] = rng.uniform(lo, hi)
                s["next"] = s["until"] + rng.randint(glo, ghi)
            bursting = t < s["until"]
            if t in push:
                cpu = max(base * 6, 400) + rng.uniform(0, 100)
            elif bursting:
                cpu = s["level"] * rng.uniform(0.9, 1.1)
            elif t % 5 == 0:
                cpu = base * rng.uniform(0.8, 1.2)
            else:
                cpu = w.last.get(name, (base,))[0]
            # Bursts allocate buffers (anon) that drain slowly afterwards.
            if bursting or t in push:
                s["extra"] = min(s["extra"] + 2 * MI, 40 * MI)
            elif t % 5 == 0:
                s["extra"] = max(s["extra"] - MI, 0)
            mem = mib * MI + s["extra"]
            anon = mib * MI * 0.8 + s["extra"]
            w.row(t, name, cpu, mem, anon)
    w.close(end)
    w.write(os.path.join(out, "bursty.csv"))


def diurnal(out):
    rng = random.Random(3)
    w = Writer("diurnal: a day in an hour (night -> peak -> night); mesh-size memory growth")
    end = 3600
    spec = [
        # name, night cpu, peak cpu, phase (s), MiB at night, MiB at peak
        ("web/frontend-2b7c", 30, 1100, 0, 120, 170),
        ("web/api-9d3e", 15, 700, 300, 100, 140),
        ("web/worker-4f6a", 5, 250, 900, 80, 95),
        ("mesh/big-config-0", 10, 120, 0, 100, 100),
    ]
    for name, *_ in spec:
        w.proxy(name)
    for t in range(0, end, 10):
        for name, night, peak, phase, m_night, m_peak in spec:
            day = 0.5 - 0.5 * math.cos(2 * math.pi * ((t - phase) % end) / end)
            cpu = night + (peak - night) * day * rng.uniform(0.92, 1.08)
            if name == "mesh/big-config-0":
                # Memory follows the number of endpoints in the mesh: it grows, traffic or not.
                mem = (100 + 150 * t / end) * MI
                anon = mem * 0.95
            else:
                mem = (m_night + (m_peak - m_night) * day) * MI
                anon = mem * 0.75
            w.row(t, name, cpu, mem, anon)
    w.close(end)
    w.write(os.path.join(out, "diurnal.csv"))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "examples", "traces")
    os.makedirs(out, exist_ok=True)
    steady(out)
    bursty(out)
    diurnal(out)


if __name__ == "__main__":
    main()
