"""Issue 2 figures on a real 10-node testnet on loopback.

- `testnet up --nodes 10` until all connected (wall time of the CLI command);
- gossip at 5 msg/s across 10 nodes: delivery ratio, propagation p50/p95
  (receive time minus the envelope's send timestamp; same machine clock),
  measured once the network has settled: `testnet up` returns as soon as every
  link is up, while the daemons still finish starting (10 processes importing
  py-libp2p keep both cores busy ~1 s longer) and the first messages queued
  behind that (200-600 ms each, most of the p95). The wait until every node's
  gossip mesh is formed and the daemons' CPU is quiet is its own figure;
- RSS of each idle node; `ofnode status` wall time (fresh CLI process each).

Usage: .venv/bin/python bench/node_figures.py [--nodes 10] [--messages 100] [--rate 5]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.results import figure, samples  # noqa: E402
from node.api.client import ApiClient  # noqa: E402
from node.config import _load_defaults  # noqa: E402

CLI = [sys.executable, "-m", "node.cli.main"]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_s(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime + stime
    return total / tick


def settle(clients: list[ApiClient], pids: list[int], degree_low: int, timeout: float = 60.0,
           window: float = 0.5) -> float:
    """Wait until every node's gossip mesh has ``degree_low`` peers and all daemons together used
    less than 0.05 core per node over the last ``window`` s (10 nodes: 0.5; idle they use ~0.05,
    starting ~1.8); returns the seconds waited, or ``timeout`` (with a warning) if that never came."""
    quiet_cores = 0.05 * len(pids)
    t0 = time.monotonic()
    last, last_t = cpu_s(pids), t0
    while time.monotonic() - t0 < timeout:
        time.sleep(window)  # a sampling interval of the CPU counters, not a wait for state
        now_cpu, now = cpu_s(pids), time.monotonic()
        busy = (now_cpu - last) / (now - last_t)
        last, last_t = now_cpu, now
        meshes = [len(c.call("gossip.state")["mesh"]) for c in clients]
        if busy < quiet_cores and min(meshes) >= degree_low:
            return now - t0
    print(f"warning: the network did not settle within {timeout:g} s; measuring anyway", file=sys.stderr)
    return timeout


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=10)
    ap.add_argument("--messages", type=int, default=100)
    ap.add_argument("--rate", type=float, default=5.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    d = Path(tempfile.mkdtemp(prefix="ofnode-bench-")) / "tn"
    res: dict[str, float] = {}
    t0 = time.monotonic()
    up = subprocess.run([*CLI, "testnet", "up", "--nodes", str(a.nodes), "--dos", "2", "--secrets", "3",
                         "--providers", "2", "--dir", str(d), "--json"], capture_output=True, text=True)
    res["testnet_up_s"] = time.monotonic() - t0
    if up.returncode:
        print(up.stderr, file=sys.stderr)
        return 1
    state = json.loads(up.stdout)
    nodes = state["nodes"]
    try:
        clients = [ApiClient(n["socket"]) for n in nodes]
        degree_low = _load_defaults()["gossip"]["degree_low"]
        res["settle_s"] = settle(clients, [n["pid"] for n in nodes], min(degree_low, a.nodes - 1))
        ids: list[str] = []
        start = time.monotonic()
        for k in range(a.messages):
            target = start + k / a.rate
            time.sleep(max(0.0, target - time.monotonic()))
            ids.append(clients[k % len(nodes)].call("gossip.publish", {"text": f"bench {k}"})["id"])
        lat: list[float] = []
        delivered = 0
        for c in clients:
            for msg_id in ids:
                r = c.call("gossip.wait", {"id": msg_id, "timeout": 5})
                if r["received"]:
                    delivered += 1
                    if r["copies"] != 1:
                        print(f"duplicate delivery of {msg_id}", file=sys.stderr)
                    lat.append(r["received_ms"] - r["timestamp_ms"])
        # Exclude each publisher's own local delivery from propagation figures.
        remote = []
        for i, c in enumerate(clients):
            for k, msg_id in enumerate(ids):
                if k % len(nodes) == i:
                    continue
                r = c.call("gossip.wait", {"id": msg_id, "timeout": 1})
                if r["received"]:
                    remote.append(r["received_ms"] - r["timestamp_ms"])
        res["gossip_delivery_pct"] = 100.0 * delivered / (len(ids) * len(nodes))
        res["gossip_p50_ms"] = statistics.median(remote)
        res["gossip_p95_ms"] = pct(remote, 95)
        res["gossip_max_ms"] = max(remote)
        time.sleep(3)  # let the network idle before measuring memory
        rss = [rss_mb(n["pid"]) for n in nodes]
        res["rss_idle_mb_mean"] = statistics.mean(rss)
        res["rss_idle_mb_max"] = max(rss)
        walls = []
        for _ in range(20):
            t = time.monotonic()
            subprocess.run([*CLI, "--socket", nodes[0]["socket"], "status", "--json"], check=True, capture_output=True)
            walls.append((time.monotonic() - t) * 1000)
        res["status_wall_ms_p50"] = statistics.median(walls)
        res["status_wall_ms_max"] = max(walls)
        for c in clients:
            c.close()
    finally:
        subprocess.run([*CLI, "testnet", "down", "--dir", str(d)], capture_output=True)
    figure("testnet_up", res["testnet_up_s"], "s", label=f"`testnet up --nodes {a.nodes}` until all connected",
           target=10)
    figure("settle", res["settle_s"], "s", label="after `testnet up`, until meshes formed and daemons idle")
    figure("gossip_delivery", res["gossip_delivery_pct"], "%", label=f"gossip delivery at {a.rate:g} msg/s",
           target=100, better="higher")
    figure("gossip_p50", res["gossip_p50_ms"], "ms", label="gossip propagation p50")
    figure("gossip_p95", res["gossip_p95_ms"], "ms", label="gossip propagation p95", target=100)
    figure("rss_idle", res["rss_idle_mb_mean"], "MB", label="RSS per idle node (mean)", target=120)
    figure("status_wall", res["status_wall_ms_p50"], "ms", label="`ofnode status` wall time p50", target=300)
    samples("gossip_latency", remote, "ms", label=f"gossip propagation, {a.nodes} nodes")
    if a.json:
        print(json.dumps(res, indent=2))
    else:
        print(f"nodes: {a.nodes}, messages: {a.messages} at {a.rate:g}/s")
        for k, v in res.items():
            print(f"{k:24} {v:10.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
