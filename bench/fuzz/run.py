"""Run the atheris fuzz harnesses (``bench/fuzz/harnesses.py``) and report.

    python bench/fuzz/run.py --seconds 60                 # each harness 60 s, one after another
    python bench/fuzz/run.py --seconds 20 --only quote --only market
    python bench/fuzz/run.py --seconds 20 --multiplex     # every harness in one process (the CI run)
    python bench/fuzz/run.py --reproduce NAME FILE        # replay a crash without atheris

Each harness runs in its own subprocess (``bench/fuzz/target.py``) with a seed
corpus of real, valid inputs; the corpus it grows is kept under
``--workdir/NAME/corpus`` (default ``/tmp/ofnode-fuzz``), so a later run with the
same workdir starts where this one stopped. Reported per harness: executions,
execs/s, libFuzzer's coverage (``cov``: instrumented edges of ``node``/``enclave``
code; ``ft``: features), corpus size, and any crash, whose input is saved under
``--workdir/crashes`` with the command that replays it. Exit status 1 on a crash.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
TARGET = Path(__file__).with_name("target.py")

from bench.fuzz import harnesses as H  # noqa: E402
from bench.results import figure  # noqa: E402


@dataclass
class Result:
    name: str
    seconds: float
    execs: int = 0
    execs_per_s: int = 0
    cov: int = 0
    ft: int = 0
    corpus: int = 0
    crashes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.crashes and not self.error


def write_seeds(name: str, directory: Path) -> int:
    directory.mkdir(parents=True, exist_ok=True)
    names = H.names() if name == "all" else [name]
    n = 0
    for i, hname in enumerate(names):
        for seed in H.get(hname).seeds():
            data = bytes([i]) + seed if name == "all" else seed
            (directory / hashlib.sha1(data).hexdigest()).write_bytes(data)
            n += 1
    return n


_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)
_COV = re.compile(r"cov: (\d+) ft: (\d+) corp: (\d+)/")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")


def run_one(name: str, seconds: float, workdir: Path, *, timeout_s: int = 10, max_len: int = 0,
            quiet: bool = True) -> Result:
    base = workdir / name
    seeds, corpus, crashes = base / "seeds", base / "corpus", workdir / "crashes"
    for d in (corpus, crashes):
        d.mkdir(parents=True, exist_ok=True)
    write_seeds(name, seeds)
    args = [sys.executable, str(TARGET), name, f"-max_total_time={max(1, int(seconds))}", f"-timeout={timeout_s}",
            "-rss_limit_mb=2048", "-print_final_stats=1", f"-artifact_prefix={crashes}/{name}-",
            *([f"-max_len={max_len}"] if max_len else []), str(corpus), str(seeds)]
    res = Result(name, seconds)
    t0 = time.monotonic()
    try:
        p = subprocess.run(args, cwd=REPO, capture_output=True, text=True, errors="replace",
                           timeout=2 * seconds + 600, env={**os.environ, "OFNODE_FUZZ_SCRATCH": str(base / "scratch")})
        out = p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"").decode(errors="replace") + (e.stderr or b"").decode(errors="replace")
        res.error = "the fuzzer did not stop in time"
        p = None
    res.seconds = round(time.monotonic() - t0, 1)
    stats = {k: int(v) for k, v in _STAT.findall(out)}
    res.execs = stats.get("number_of_executed_units", 0)
    res.execs_per_s = stats.get("average_exec_per_sec", 0)
    covs = _COV.findall(out)
    if covs:
        res.cov, res.ft, res.corpus = map(int, covs[-1])
    res.crashes = _ARTIFACT.findall(out)
    if p is not None and p.returncode != 0 and not res.crashes:
        res.error = f"exit status {p.returncode}"
    if not res.ok:
        log = crashes / f"{name}-{int(time.time())}.log"
        log.write_text(out)
        if not quiet or res.error:
            print(out[-4000:], file=sys.stderr)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=30, help="per harness (default 30)")
    ap.add_argument("--only", action="append", default=[], help="a harness name (repeatable)")
    ap.add_argument("--multiplex", action="store_true", help="all harnesses in one process")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/ofnode-fuzz"))
    ap.add_argument("--fresh", action="store_true", help="forget the corpus of earlier runs")
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--list", action="store_true", help="list the harnesses")
    ap.add_argument("--reproduce", nargs=2, metavar=("NAME", "FILE"))
    a = ap.parse_args(argv)
    if a.list:
        for h in H.REGISTRY.values():
            print(f"{h.name:18} {h.rejects:24} {h.decoder}")
        return 0
    if a.reproduce:
        return subprocess.call([sys.executable, str(TARGET), a.reproduce[0], "--reproduce", a.reproduce[1]], cwd=REPO)
    for n in a.only:
        if n not in H.REGISTRY:
            ap.error(f"no harness {n!r}; --list shows them")
    if a.fresh and a.workdir.exists():
        shutil.rmtree(a.workdir)
    names = ["all"] if a.multiplex else (a.only or H.names())
    results = []
    print(f"{'harness':18} {'s':>6} {'execs':>9} {'execs/s':>8} {'cov':>5} {'ft':>6} {'corpus':>6}  result")
    for n in names:
        r = run_one(n, a.seconds, a.workdir)
        results.append(r)
        verdict = "ok" if r.ok else (f"CRASH {', '.join(r.crashes)}" if r.crashes else f"ERROR {r.error}")
        print(f"{n:18} {r.seconds:6.1f} {r.execs:9} {r.execs_per_s:8} {r.cov:5} {r.ft:6} {r.corpus:6}  {verdict}",
              flush=True)
        for c in r.crashes:
            print(f"    replay: python bench/fuzz/run.py --reproduce {n} {c}")
        figure(f"execs_{n}", r.execs_per_s, "execs/s", label=f"fuzz `{n}`: {r.cov} edges, corpus {r.corpus}"
               + ("" if r.ok else " — CRASH"), better="higher")
    figure("harnesses_ok", sum(r.ok for r in results), "", label=f"harnesses without a crash, of {len(results)}",
           target=len(results), better="higher")
    if a.json:
        a.json.write_text(json.dumps([asdict(r) for r in results], indent=1))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
