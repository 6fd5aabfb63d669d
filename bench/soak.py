"""Scale and soak: a 30-node testnet on this machine, its figures, then a soak with memory watched.

1. ``testnet up`` of N nodes (default 30: 3 DOS quorum 2, 5 secrets threshold 3,
   4 providers, the rest plain) until every node is linked to every other;
   the idle CPU of the whole network;
2. gossip at that size, the method of bench/node_figures.py: M messages at R
   msg/s, publishers rotating; delivery and propagation p50/p95/max (receive
   time minus the envelope's send timestamp, same clock; own deliveries left out);
3. DHT: provider lookup of the published AI from a fresh peer that knows one
   plain node only (``find_providers`` through the Kademlia DHT, a new peer each
   time), and ``store get`` of the AI object on a plain node that does not hold it;
4. jobs: J sequential digit jobs from rotating plain consumers, submit -> result
   p50/p95, every label checked;
5. soak for ``--minutes``: a steady job stream (one at a time) and gossip at
   ``--soak-rate`` msg/s; every ``--sample-s`` seconds each node's RSS (VmRSS
   from /proc/PID/status), CPU and liveness. RSS growth per node = mean of the
   last two samples against the mean of the samples of the first minute.

Prints plain numbers; writes ``--out`` (default bench/results/soak.json) with
every figure and the RSS time series of every node.

Usage: .venv/bin/python bench/soak.py [--nodes 30] [--minutes 10] [--sample-s 30]
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.results import figure, samples, series  # noqa: E402
from node import testnet  # noqa: E402
from node.api.client import ApiClient, ApiUnavailable, call  # noqa: E402
from node.api.jsonrpc import RpcError  # noqa: E402

DIGITS = ROOT / "examples" / "digits"
SAMPLES = sorted((DIGITS / "samples").glob("*.json"))


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(q * (len(xs) - 1))))] if xs else float("nan")


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return float("nan")


def cpu_s(pid: int) -> float:
    try:
        f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")


def alive(node: dict) -> bool:
    try:
        return node["data_dir"].encode() in Path(f"/proc/{node['pid']}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False


def say(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def label_of(job: dict) -> int:
    return json.loads(base64.b64decode(job["output_b64"]))["label"]


# -- gossip ---------------------------------------------------------------------------
def gossip_figures(nodes: list[dict], messages: int, rate: float) -> dict:
    clients = [ApiClient(n["socket"], timeout=30) for n in nodes]
    ids: list[tuple[int, str]] = []
    start = time.monotonic()
    for k in range(messages):
        time.sleep(max(0.0, start + k / rate - time.monotonic()))
        pub = k % len(nodes)
        ids.append((pub, clients[pub].call("gossip.publish", {"text": f"soak bench {k}"})["id"]))
    remote: list[float] = []
    delivered = dups = 0
    for i, c in enumerate(clients):
        for pub, msg_id in ids:
            r = c.call("gossip.wait", {"id": msg_id, "timeout": 10})
            if not r["received"]:
                continue
            delivered += 1
            dups += r["copies"] != 1
            if pub != i:
                remote.append(r["received_ms"] - r["timestamp_ms"])
    for c in clients:
        c.close()
    return {"messages": messages, "rate": rate, "delivery_pct": 100.0 * delivered / (len(ids) * len(nodes)),
            "duplicates": dups, "p50_ms": statistics.median(remote), "p95_ms": pct(remote, 0.95),
            "max_ms": max(remote), "latencies_ms": remote}


# -- DHT ------------------------------------------------------------------------------
def dht_lookups(bootstraps: list[str], cid: str, publisher: str, n: int) -> list[dict]:
    """Each lookup from a new peer (fresh identity, empty routing table) that dials one node."""
    import trio

    from enclave.cid import Cid
    from node.identity import Identity
    from node.metrics import node_metrics
    from node.p2p.host import P2PHost
    from node.store.providers import find_providers

    import logging

    import multiaddr
    from libp2p.kad_dht.kad_dht import DHTMode, KadDHT
    from libp2p.tools.anyio_service import background_trio_service

    logging.getLogger("libp2p").setLevel(logging.CRITICAL)

    async def one(addr: str) -> dict:
        # A DHT *client*: the nodes do not put it in their routing tables, so the peers of
        # earlier lookups, gone by now, do not slow the later ones down.
        h = P2PHost(identity=Identity.generate(), listen=["/ip4/127.0.0.1/tcp/0"], bootstrap=[],
                    metrics=node_metrics())
        async with h.host.run(listen_addrs=[multiaddr.Multiaddr("/ip4/127.0.0.1/tcp/0")]):
            h.dht = KadDHT(h.host, DHTMode.CLIENT)
            async with background_trio_service(h.dht):
                if not await h.connect_addr(addr):
                    return {"ok": False, "error": f"could not dial {addr}"}
                t = time.perf_counter()
                infos = await find_providers(h.dht, Cid.decode(cid), limit=1, timeout=30)
                ms = (time.perf_counter() - t) * 1000
                found = [i.peer_id.to_base58() for i in infos]
                return {"ok": bool(found), "ms": ms, "publisher_found": publisher in found, "found": len(found)}

    out = []
    for k in range(n):
        out.append(trio.run(one, bootstraps[k % len(bootstraps)]))
    return out


# -- jobs -----------------------------------------------------------------------------
def job_once(node: dict, cid: str, k: int, deadline: float = 120) -> tuple[bool, float, str]:
    sample = SAMPLES[k % len(SAMPLES)]
    t = time.perf_counter()
    try:
        job = call(node["socket"], "job.submit", {"ai_cid": cid, "input_path": str(sample), "deadline_s": deadline},
                   timeout=deadline + 30)
    except (RpcError, ApiUnavailable, OSError) as e:
        return False, time.perf_counter() - t, str(e)[:200]
    ok = label_of(job) == int(sample.name[0])
    return ok, time.perf_counter() - t, "" if ok else "wrong label"


# -- soak -----------------------------------------------------------------------------
class Soak:
    def __init__(self, nodes: list[dict], consumers: list[dict], cid: str, minutes: float, sample_s: float,
                 gossip_rate: float, job_gap_s: float) -> None:
        self.nodes, self.consumers, self.cid = nodes, consumers, cid
        self.minutes, self.sample_s, self.gossip_rate, self.job_gap = minutes, sample_s, gossip_rate, job_gap_s
        self.stop = threading.Event()
        self.jobs: list[tuple[float, bool, float, str]] = []  # (t, ok, seconds, error)
        self.gossip_ids: list[tuple[int, str]] = []
        self.gossip_errors = 0
        self.t: list[float] = []
        self.rss: list[list[float]] = []  # per sample, per node
        self.cpu_cores: list[float] = []  # whole network, per interval
        self.dead: dict[int, float] = {}

    def _jobs(self) -> None:
        k = 0
        while not self.stop.is_set():
            node = self.consumers[k % len(self.consumers)]
            ok, sec, err = job_once(node, self.cid, k)
            self.jobs.append((time.monotonic() - self.t0, ok, sec, err))
            k += 1
            self.stop.wait(self.job_gap)

    def _gossip(self) -> None:
        k = 0
        start = time.monotonic()
        while not self.stop.is_set():
            self.stop.wait(max(0.0, start + k / self.gossip_rate - time.monotonic()))
            if self.stop.is_set():
                break
            pub = k % len(self.nodes)
            try:
                self.gossip_ids.append((pub, call(self.nodes[pub]["socket"], "gossip.publish",
                                                  {"text": f"soak {k}"}, timeout=30)["id"]))
            except (RpcError, ApiUnavailable, OSError):
                self.gossip_errors += 1
            k += 1

    def _sample(self, prev_cpu: list[float], prev_t: float) -> tuple[list[float], float]:
        now = time.monotonic()
        self.t.append(now - self.t0)
        self.rss.append([rss_mb(n["pid"]) for n in self.nodes])
        cpu = [cpu_s(n["pid"]) for n in self.nodes]
        if prev_cpu:
            self.cpu_cores.append(sum(b - a for a, b in zip(prev_cpu, cpu) if not (math.isnan(a) or math.isnan(b))) / (now - prev_t))
        for i, n in enumerate(self.nodes):
            if i not in self.dead and not alive(n):
                self.dead[i] = now - self.t0
                say(f"node{i} DIED at {now - self.t0:.0f} s into the soak")
        return cpu, now

    def run(self) -> None:
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self._jobs, daemon=True),
                   threading.Thread(target=self._gossip, daemon=True)]
        for th in threads:
            th.start()
        end = self.t0 + self.minutes * 60
        cpu, t = self._sample([], 0.0)
        while time.monotonic() < end:
            time.sleep(max(0.0, min(self.sample_s, end - time.monotonic())))
            cpu, t = self._sample(cpu, t)
            r = [x for x in self.rss[-1] if not math.isnan(x)]
            done = sum(1 for j in self.jobs if j[1])
            say(f"soak {self.t[-1]:5.0f} s: RSS median {statistics.median(r):.0f} MB, max {max(r):.0f} MB; "
                f"CPU {self.cpu_cores[-1]:.2f} cores; jobs {done}/{len(self.jobs)} right; "
                f"gossip sent {len(self.gossip_ids)}")
        self.stop.set()
        for th in threads:
            th.join(timeout=200)

    def growth(self) -> dict:
        first = [k for k, t in enumerate(self.t) if t <= 60.0] or [0]
        last = list(range(max(0, len(self.t) - 2), len(self.t)))
        per_node = []
        for i in range(len(self.nodes)):
            base = statistics.mean(self.rss[k][i] for k in first)
            end = statistics.mean(self.rss[k][i] for k in last)
            per_node.append(100.0 * (end - base) / base if not (math.isnan(base) or math.isnan(end)) else float("nan"))
        ok = [g for g in per_node if not math.isnan(g)]
        return {"per_node_pct": per_node, "max_pct": max(ok), "median_pct": statistics.median(ok),
                "max_node": per_node.index(max(ok)), "baseline_samples": len(first)}

    def notes_in(self) -> list[float]:
        """Each node's count of delivered ``node.note`` envelopes (its metrics), own ones included."""
        out = []
        for n in self.nodes:
            try:
                text = call(n["socket"], "metrics.text", {}, timeout=30)
            except (RpcError, ApiUnavailable, OSError):
                out.append(float("nan"))
                continue
            line = next((x for x in text.splitlines()
                         if x.startswith('ofnode_gossip_in_total{') and 'type="node.note"' in x), None)
            out.append(float(line.rsplit(" ", 1)[1]) if line else 0.0)
        return out

    def gossip_delivery(self, before: list[float], after: list[float]) -> dict:
        """Delivery of the soak's gossip on every node, from the nodes' own counters: each node
        must have delivered every message sent during the soak once (gossip.wait cannot tell:
        a node keeps only its last 1024 received messages)."""
        sent = len(self.gossip_ids)
        got = [a - b for a, b in zip(after, before) if not (math.isnan(a) or math.isnan(b))]
        return {"nodes_counted": len(got), "sent": sent,
                "delivery_pct": 100.0 * sum(min(g, sent) for g in got) / max(1, sent * len(got)),
                "min_node_pct": 100.0 * min(got) / max(1, sent) if got else None}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=30)
    ap.add_argument("--dos", type=int, default=3)
    ap.add_argument("--secrets", type=int, default=5)
    ap.add_argument("--providers", type=int, default=4)
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--sample-s", type=float, default=30.0)
    ap.add_argument("--messages", type=int, default=60, help="gossip figure: messages")
    ap.add_argument("--rate", type=float, default=2.0, help="gossip figure: messages per second")
    ap.add_argument("--jobs", type=int, default=20, help="job figure: sequential jobs")
    ap.add_argument("--lookups", type=int, default=10, help="DHT figure: provider lookups")
    ap.add_argument("--soak-rate", type=float, default=0.5, help="soak: gossip messages per second")
    ap.add_argument("--job-gap", type=float, default=1.0, help="soak: seconds between one job's end and the next")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "soak.json"))
    a = ap.parse_args()
    res: dict = {"nodes": a.nodes, "layout": {"dos": a.dos, "secrets": a.secrets, "providers": a.providers},
                 "minutes": a.minutes, "cpus": os.cpu_count(), "loadavg_start": os.getloadavg()}
    d = Path(tempfile.mkdtemp(prefix="ofnode-soak-")) / "tn"
    say(f"testnet up: {a.nodes} nodes ({a.dos} DOS, {a.secrets} secrets, {a.providers} providers) in {d}")
    t = time.monotonic()
    state = testnet.up(d, nodes=a.nodes, dos=a.dos, secrets=a.secrets, providers=a.providers, dos_quorum=2,
                       timeout=600, say=say)
    res["up_s"] = time.monotonic() - t
    nodes = state["nodes"]
    plain = [n for n in nodes if not n["roles"]] or nodes
    rc = 0
    gossip_lat: list[float] = []
    try:
        say(f"up in {res['up_s']:.1f} s; idle for 60 s")
        time.sleep(30)
        c0, t0 = [cpu_s(n["pid"]) for n in nodes], time.monotonic()
        time.sleep(30)
        res["idle_cpu_cores"] = sum(b - a for a, b in zip(c0, [cpu_s(n["pid"]) for n in nodes])) / (time.monotonic() - t0)
        res["rss_idle_mb"] = {"mean": statistics.mean(rss_mb(n["pid"]) for n in nodes),
                              "max": max(rss_mb(n["pid"]) for n in nodes)}
        say(f"idle: {res['idle_cpu_cores']:.2f} cores for the whole network; RSS mean {res['rss_idle_mb']['mean']:.0f} MB")

        say(f"gossip: {a.messages} messages at {a.rate:g}/s")
        g = gossip_figures(nodes, a.messages, a.rate)
        res["gossip"] = {k: v for k, v in g.items() if k != "latencies_ms"}
        gossip_lat = g["latencies_ms"]
        say(f"gossip delivery {g['delivery_pct']:.1f} %, p50 {g['p50_ms']:.0f} ms, p95 {g['p95_ms']:.0f} ms, "
            f"max {g['max_ms']:.0f} ms")

        t = time.monotonic()
        cid = call(nodes[0]["socket"], "ai.publish", {"dir": str(DIGITS)}, timeout=300)["cid"]
        res["publish_s"] = time.monotonic() - t
        say(f"digits AI published by node0 in {res['publish_s']:.1f} s: {cid}")
        boots = [n["addr"] for n in plain]
        look = dht_lookups(boots, cid, nodes[0]["peer_id"], a.lookups)
        ok = [x["ms"] for x in look if x.get("ok")]
        res["dht"] = {"lookups": len(look), "found": len(ok), "publisher_found": sum(bool(x.get("publisher_found"))
                                                                                     for x in look),
                      "p50_ms": statistics.median(ok) if ok else None, "p95_ms": pct(ok, 0.95) if ok else None,
                      "max_ms": max(ok) if ok else None}
        say(f"DHT provider lookup from a new peer: {len(ok)}/{len(look)} found, p50 {res['dht']['p50_ms']} ms, "
            f"p95 {res['dht']['p95_ms']} ms")
        getter = plain[len(plain) // 2]
        out = d.parent / "got.bin"
        t = time.monotonic()
        got = call(getter["socket"], "store.get", {"cid": cid, "out": str(out)}, timeout=300)
        res["store_get"] = {"s": time.monotonic() - t, "bytes": got["size"], "node": getter["name"]}
        say(f"store get of the AI object ({got['size']} bytes) on {getter['name']}: {res['store_get']['s']:.2f} s")

        say(f"jobs: {a.jobs} sequential")
        lat, errs = [], []
        for k in range(a.jobs):
            ok_, sec, err = job_once(plain[k % len(plain)], cid, k)
            (lat if ok_ else errs).append(sec if ok_ else err)
        res["jobs"] = {"n": a.jobs, "right": len(lat), "errors": errs, "p50_s": statistics.median(lat) if lat else None,
                       "p95_s": pct(lat, 0.95) if lat else None, "max_s": max(lat) if lat else None}
        say(f"jobs right {len(lat)}/{a.jobs}; submit -> result p50 {res['jobs']['p50_s']:.2f} s, "
            f"p95 {res['jobs']['p95_s']:.2f} s")

        say(f"soak: {a.minutes:g} min, jobs one at a time (gap {a.job_gap:g} s), gossip {a.soak_rate:g} msg/s, "
            f"samples every {a.sample_s:g} s")
        soak = Soak(nodes, plain, cid, a.minutes, a.sample_s, a.soak_rate, a.job_gap)
        notes_before = soak.notes_in()
        soak.run()
        time.sleep(5)  # the last messages propagate
        gr = soak.growth()
        sj = [j for j in soak.jobs]
        right = [j[2] for j in sj if j[1]]
        errors: dict[str, int] = {}
        for j in sj:
            if not j[1]:
                errors[j[3][:120]] = errors.get(j[3][:120], 0) + 1
        gd = soak.gossip_delivery(notes_before, soak.notes_in())
        gd.pop("sent", None)
        res["soak"] = {
            "t_s": soak.t, "rss_mb": soak.rss, "cpu_cores": soak.cpu_cores, "growth": gr,
            "died": {f"node{i}": round(t, 1) for i, t in soak.dead.items()},
            "jobs": {"n": len(sj), "right": len(right), "errors": errors,
                     "p50_s": statistics.median(right) if right else None, "p95_s": pct(right, 0.95) if right else None,
                     "per_minute": 60 * len(right) / (a.minutes * 60)},
            "gossip": {"sent": len(soak.gossip_ids), "publish_errors": soak.gossip_errors, **gd},
            "rss_mb_start": {"median": statistics.median(soak.rss[0]), "max": max(soak.rss[0])},
            "rss_mb_end": {"median": statistics.median(soak.rss[-1]), "max": max(soak.rss[-1])},
        }
    finally:
        res["loadavg_end"] = os.getloadavg()
        testnet.down(d)
    out_path = Path(a.out)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(json.dumps(res, indent=1))

    s = res["soak"]
    print()
    print(f"nodes {a.nodes} ({a.dos} DOS, {a.secrets} secrets, {a.providers} providers) on {os.cpu_count()} CPUs; "
          f"load average at start {res['loadavg_start'][0]:.1f}, end {res['loadavg_end'][0]:.1f} (shared machine)")
    print(f"testnet_up_s                 {res['up_s']:8.1f}")
    print(f"idle_cpu_cores (network)     {res['idle_cpu_cores']:8.2f}")
    print(f"rss_idle_mb mean / max       {res['rss_idle_mb']['mean']:8.1f} / {res['rss_idle_mb']['max']:.1f}")
    g = res["gossip"]
    print(f"gossip delivery_pct          {g['delivery_pct']:8.1f}   ({g['messages']} msgs at {g['rate']:g}/s)")
    print(f"gossip p50 / p95 / max ms    {g['p50_ms']:8.0f} / {g['p95_ms']:.0f} / {g['max_ms']:.0f}")
    dh = res["dht"]
    print(f"dht lookup p50 / p95 ms      {dh['p50_ms'] or float('nan'):8.0f} / {dh['p95_ms'] or float('nan'):.0f}   "
          f"({dh['found']}/{dh['lookups']} found)")
    print(f"store_get_s                  {res['store_get']['s']:8.2f}   ({res['store_get']['bytes']} bytes)")
    j = res["jobs"]
    print(f"jobs right                   {j['right']:8d} / {j['n']}")
    print(f"job p50 / p95 s              {j['p50_s'] or float('nan'):8.2f} / {j['p95_s'] or float('nan'):.2f}")
    print(f"soak minutes                 {a.minutes:8.1f}   samples {len(s['t_s'])}")
    print(f"soak jobs right              {s['jobs']['right']:8d} / {s['jobs']['n']}   "
          f"(p50 {s['jobs']['p50_s'] or float('nan'):.2f} s)")
    for e, n in s["jobs"]["errors"].items():
        print(f"  failed {n}x: {e}")
    print(f"soak gossip sent             {s['gossip']['sent']:8d}   delivered on {s['gossip']['nodes_counted']} nodes: "
          f"{s['gossip']['delivery_pct']:.1f} % (worst node {s['gossip']['min_node_pct'] or float('nan'):.1f} %)")
    print(f"soak CPU cores mean          {statistics.mean(s['cpu_cores']) if s['cpu_cores'] else float('nan'):8.2f}")
    print(f"rss growth max / median %    {s['growth']['max_pct']:8.1f} / {s['growth']['median_pct']:.1f}   "
          f"(node{s['growth']['max_node']}; target < 10)")
    print(f"rss median MB start / end    {s['rss_mb_start']['median']:8.1f} / {s['rss_mb_end']['median']:.1f}")
    print(f"nodes died                   {len(s['died']):8d}   {s['died'] or ''}")
    print(f"wrote {out_path}")

    figure("scale_up", res["up_s"], "s", label=f"`testnet up` of {a.nodes} nodes until fully connected")
    figure("scale_idle_cpu", res["idle_cpu_cores"], "cores", label=f"idle CPU of the {a.nodes}-node network")
    figure("scale_gossip_p50", g["p50_ms"], "ms", label=f"gossip propagation p50, {a.nodes} nodes")
    figure("scale_gossip_p95", g["p95_ms"], "ms", label=f"gossip propagation p95, {a.nodes} nodes")
    figure("scale_gossip_delivery", g["delivery_pct"], "%", label=f"gossip delivery, {a.nodes} nodes", target=100,
           better="higher")
    if dh["p50_ms"] is not None:
        figure("scale_dht_lookup_p50", dh["p50_ms"], "ms", label=f"DHT provider lookup from a new peer, {a.nodes} nodes")
    if j["p50_s"] is not None:
        figure("scale_job_p50", j["p50_s"] * 1000, "ms", label=f"submit -> result p50, {a.nodes} nodes")
        figure("scale_job_p95", j["p95_s"] * 1000, "ms", label=f"submit -> result p95, {a.nodes} nodes")
    figure("soak_rss_growth_max", s["growth"]["max_pct"], "%", label=f"RSS growth over a {a.minutes:g}-min soak, worst node",
           target=10)
    figure("soak_rss_growth_median", s["growth"]["median_pct"], "%", label="RSS growth over the soak, median node",
           target=10)
    figure("soak_nodes_died", len(s["died"]), "nodes", label="nodes that died during the soak", target=0)
    samples("scale_gossip_latency", gossip_lat, "ms", label=f"gossip propagation, {a.nodes} nodes")
    series("soak_rss_median", [x / 60 for x in s["t_s"]], [statistics.median(r) for r in s["rss_mb"]],
           x_unit="min", y_unit="MB", label=f"RSS per node over the soak (median of {a.nodes})",
           reference=[max(r) for r in s["rss_mb"]], reference_label="max node")
    if s["growth"]["max_pct"] >= 10 or s["died"]:
        rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
