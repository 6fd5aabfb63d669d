"""Run every benchmark and write ``docs/performance.md`` with tables and PNG plots.

Run: .venv/bin/python bench/report.py [--quick] [--only NAME ...] [--soak-minutes N] [--skip NAME ...]

Each benchmark runs as its own process with ``OFNODE_BENCH_RESULTS`` pointing
at a JSON-lines file (see ``bench/results.py``); its printed output is kept
in ``bench/results/<name>.txt``. The report then shows, per part of the
system, every figure beside the reference measured in the same run, the
ratio, the issue's target and whether it is met, and plots the
distributions (CDFs) and curves (e.g. gossip latency against network size,
RSS over a soak) into ``docs/perf/``.

``--only NAME ...`` runs those benchmarks and keeps every other one's last
results (dated) in the report; ``--render-only`` runs nothing.

Hand-written notes survive regeneration: everything in the old
``docs/performance.md`` from the line ``<!-- notes -->`` on is kept.
A benchmark that fails is reported as failed (with the tail of its output);
the others still run.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
OUT_DIR = BENCH / "results"
NOTES_MARK = "<!-- notes -->"
PY = sys.executable


@dataclass
class Bench:
    name: str
    section: str
    argv: list[str]
    quick: list[str] | None = None  # argv for --quick (None: same as argv)
    timeout: float = 1800
    tags: list[str] = field(default_factory=lambda: [""])  # one run per tag; "{tag}" in argv is replaced


def benches(soak_minutes: float) -> list[Bench]:
    b = [
        Bench("node", "Node foundation: testnets and gossip", ["bench/node_figures.py", "--nodes", "{tag}"],
              tags=["5", "10", "20", "30"]),
        Bench("cid", "Content addressing", ["bench/cid_vs_sha256.py"], ["bench/cid_vs_sha256.py", "--size", "128"]),
        Bench("publish", "AI publishing", ["bench/ai_publish.py"], ["bench/ai_publish.py", "--mib", "64"]),
        Bench("package", "AI packages", ["bench/ai_package.py"], ["bench/ai_package.py", "--size-mib", "64"]),
        Bench("fetch", "Exchange (Bitswap fetch)", ["bench/fetch_figures.py"],
              ["bench/fetch_figures.py", "--size", "64", "--runs", "1"]),
        Bench("quotes", "Simulated quotes", ["bench/quote_verify.py"], ["bench/quote_verify.py", "0.5"]),
        Bench("attest", "Attestation and keys", ["bench/attest_figures.py"],
              ["bench/attest_figures.py", "--seconds", "1", "--rounds", "50"]),
        Bench("enclave", "Enclaves", ["bench/enclave_figures.py", "--backend", "{tag}"], tags=["plain", "sim", "docker"]),
        Bench("sandbox", "Enclaves", ["bench/sandbox_start.py"], ["bench/sandbox_start.py", "10"]),
        Bench("flow", "The whole flow", ["bench/flow_figures.py"], ["bench/flow_figures.py", "--jobs", "20"]),
        Bench("soak", "Scale and soak", ["bench/soak.py", "--minutes", str(soak_minutes),
                                         "--out", "bench/results/soak-report.json"]),
        Bench("chaos", "Scale and soak", ["bench/chaos.py", "--minutes", "2", "--out", "bench/results/chaos-report.json"],
              ["bench/chaos.py", "--minutes", "1", "--out", "bench/results/chaos-report.json"]),
        Bench("attacks", "Adversarial suite", ["bench/attacks.py"]),
        Bench("fuzz", "Fuzzing", ["bench/fuzz/run.py", "--seconds", "5"], ["bench/fuzz/run.py", "--seconds", "2"]),
    ]
    return [x for x in b if (ROOT / x.argv[0]).exists()]


# -- running ---------------------------------------------------------------

def run(bench: Bench, quick: bool, records: list[dict], status: dict[str, str]) -> None:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for tag in (bench.tags[:2] if quick and len(bench.tags) > 2 else bench.tags):
        argv = [a.replace("{tag}", tag) for a in ((bench.quick or bench.argv) if quick else bench.argv)]
        label = f"{bench.name}[{tag}]" if tag else bench.name
        res = OUT_DIR / f"{label}.jsonl"
        res.unlink(missing_ok=True)
        env = {**os.environ, "OFNODE_BENCH_RESULTS": str(res), "PYTHONUNBUFFERED": "1"}
        print(f"== {label}: {' '.join(argv)}", flush=True)
        t0 = time.monotonic()
        with open(OUT_DIR / f"{label}.txt", "w") as out:
            try:
                rc = subprocess.run([PY, *argv], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
                                    timeout=bench.timeout, check=False).returncode
            except subprocess.TimeoutExpired:
                rc = -1
        took = time.monotonic() - t0
        status[label] = "ok" if rc == 0 else ("timed out" if rc == -1 else f"exit {rc}")
        print(f"   {status[label]} in {took:.0f} s", flush=True)
        if res.exists():
            for line in res.read_text().splitlines():
                r = json.loads(line)
                r["run"], r["tag"], r["section"] = bench.name, tag, bench.section
                records.append(r)


# -- rendering -------------------------------------------------------------

def fmt(v: float | None) -> str:
    if v is None:
        return ""
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 0.1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def verdict(r: dict) -> str:
    if r.get("target") is None:
        return ""
    ok = r["value"] <= r["target"] if r["better"] == "lower" else r["value"] >= r["target"]
    return "met" if ok else "**not met**"


def figure_table(rows: list[dict]) -> list[str]:
    out = ["| figure | measured | reference, same run | ratio | target | |",
           "| --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        unit = f" {r['unit']}" if r["unit"] else ""
        ref = f"{fmt(r['reference'])}{unit} ({r['reference_label']})" if r.get("reference") is not None else ""
        ratio = fmt(r["value"] / r["reference"]) if r.get("reference") else ""
        tgt = ""
        if r.get("target") is not None:
            tgt = f"{'≤' if r['better'] == 'lower' else '≥'} {fmt(r['target'])}{unit}"
        label = r["label"] + (f" [{r['tag']}]" if r.get("tag") else "")
        out.append(f"| {label} | {fmt(r['value'])}{unit} | {ref} | {ratio} | {tgt} | {verdict(r)} |")
    return out


def plot_samples(r: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    for values, name in ((r["values"], r["label"]), (r.get("reference"), r.get("reference_label"))):
        if values:
            xs = sorted(values)
            ax.step(xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=name or None)
    ax.set_xlabel(r["unit"])
    ax.set_ylabel("fraction ≤ x")
    ax.set_title(r["label"], fontsize=10)
    ax.grid(alpha=0.3)
    if r.get("reference"):
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_series(r: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.6))
    ax.plot(r["x"], r["y"], marker="o", ms=3, label=r["label"])
    if r.get("reference"):
        ax.plot(r["x"], r["reference"], linestyle="--", label=r.get("reference_label") or "reference")
        ax.legend(fontsize=8)
    ax.set_xlabel(r["x_unit"])
    ax.set_ylabel(r["y_unit"])
    ax.set_title(r["label"], fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def sweeps(records: list[dict]) -> list[dict]:
    """Figures of a benchmark run at several sizes (node counts) become curves: value against size."""
    by_key: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in records:
        if r["kind"] == "figure" and r["tag"].isdigit():
            by_key[(r["run"], r["key"])].append(r)
    out = []
    for (run_name, key), rs in by_key.items():
        if len(rs) < 2:
            continue
        rs.sort(key=lambda r: int(r["tag"]))
        out.append({"kind": "series", "key": f"{run_name}-{key}-vs-size", "section": rs[0]["section"],
                    "x": [int(r["tag"]) for r in rs], "y": [r["value"] for r in rs], "x_unit": "nodes",
                    "y_unit": rs[0]["unit"], "label": f"{rs[0]['label']} against network size"})
    return out


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text().splitlines()
    meminfo = Path("/proc/meminfo").read_text().splitlines()
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), "?")
    mem = next((int(line.split()[1]) for line in meminfo if line.startswith("MemTotal")), 0)
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPUs ({model}), {mem / 2**20:.0f} GiB, Linux {platform.release()}, "
            f"Python {platform.python_version()}; load average at the end {load}")


def render(records: list[dict], status: dict[str, str], argv: list[str], old: str) -> str:
    plots = ROOT / "docs" / "perf"
    plots.mkdir(parents=True, exist_ok=True)
    for p in plots.glob("*.png"):
        p.unlink()
    records = records + sweeps(records)
    sections: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        sections[r["section"]].append(r)
    lines = [
        "# Performance",
        "",
        "Generated by `bench/report.py` (" + " ".join(argv) + ") on "
        + dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC") + ".",
        "Every figure is measured beside its reference in the same run, on the same machine:",
        machine() + ".",
        "Printed output of each benchmark: `bench/results/<name>.txt`.",
        "",
        "| benchmark | result |",
        "| --- | --- |",
        *[f"| `{k}` | {v} |" for k, v in status.items()],
        "",
    ]
    order = list(dict.fromkeys(b.section for b in benches(0)))
    for section in sorted(sections, key=lambda s: order.index(s) if s in order else len(order)):
        rs = sections[section]
        lines += [f"## {section}", ""]
        figs = [r for r in rs if r["kind"] == "figure"]
        if figs:
            lines += figure_table(figs) + [""]
        for r in rs:
            if r["kind"] not in ("samples", "series"):
                continue
            name = f"{r['key']}{'-' + r['tag'] if r.get('tag') else ''}.png".replace("/", "-")
            try:
                (plot_samples if r["kind"] == "samples" else plot_series)(r, plots / name)
            except ImportError:
                lines += [f"(plot of {r['label']} skipped: matplotlib is not installed)", ""]
                continue
            lines += [f"![{r['label']}](perf/{name})", ""]
    for label, st in status.items():
        if st != "ok":
            tail = (OUT_DIR / f"{label}.txt").read_text(errors="replace").splitlines()[-15:]
            lines += [f"### `{label}` {st}", "", "```", *tail, "```", ""]
    notes = old[old.index(NOTES_MARK):] if NOTES_MARK in old else (
        f"{NOTES_MARK}\n## Notes (hand-written; kept when the report is regenerated)\n\n"
        "Numbers in these notes come from the runs named beside them; the tables above are the current run.\n\n"
        + old.split("\n", 1)[1] if old.startswith("# Performance") else old)
    return "\n".join(lines) + "\n" + notes.rstrip() + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller runs (minutes, not an hour)")
    ap.add_argument("--only", nargs="*", help="run only these benchmarks (names: node cid publish ...)")
    ap.add_argument("--skip", nargs="*", default=[], help="leave these benchmarks out")
    ap.add_argument("--soak-minutes", type=float, default=10)
    ap.add_argument("--out", default=str(ROOT / "docs" / "performance.md"))
    ap.add_argument("--render-only", action="store_true", help="re-render from bench/results/*.jsonl, run nothing")
    a = ap.parse_args()
    todo = [b for b in benches(a.soak_minutes) if (not a.only or b.name in a.only) and b.name not in a.skip]
    records: list[dict] = []
    status: dict[str, str] = {}
    # Benchmarks not run now keep their last results (bench/results/*.jsonl), so a
    # partial run (--only) still renders the whole report, each result dated.
    for b in benches(a.soak_minutes):
        if b.name in a.skip or (a.render_only and b not in todo):
            continue
        if b in todo and not a.render_only:
            run(b, a.quick, records, status)
            continue
        for tag in b.tags:
            label = f"{b.name}[{tag}]" if tag else b.name
            res = OUT_DIR / f"{label}.jsonl"
            if res.exists():
                when = dt.datetime.fromtimestamp(res.stat().st_mtime, dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
                status[label] = f"ok (run at {when})"
                for line in res.read_text().splitlines():
                    r = json.loads(line)
                    r["run"], r["tag"], r["section"] = b.name, tag, b.section
                    records.append(r)
    out = Path(a.out)
    old = out.read_text() if out.exists() else ""
    text = render(records, status, ["bench/report.py", *sys.argv[1:]], old)
    tmp = out.with_suffix(".tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(f"wrote {out} ({len(records)} records; {sum(not s.startswith('ok') for s in status.values())} benchmark(s) not ok)")
    return 0 if all(s.startswith("ok") for s in status.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
