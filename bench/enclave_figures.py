"""Enclave figures: start-to-ready time, and inference inside vs outside the enclave.

Run: .venv/bin/python bench/enclave_figures.py [--runs 20] [--requests 200] [--backend plain|sim|docker]

1. Start to ready, p50 over ``--runs`` fresh enclaves (digits AI, sim quotes):
   launch -> evidence at the host (process up, key made, both quotes, RA-TLS
   cert, TLS context loaded), then a consumer's first TLS 1.3 handshake +
   full RA-TLS verification (DCAP on both quotes).  Target: ready < 300 ms.
2. Digits inference, one enclave serving ``--requests`` requests, each on a
   fresh TLS connection: the ``sess.run`` call inside (the runtime reports it
   in the response's timing) vs the same onnxruntime call outside in this
   process with the same session options.  Target: ratio <= 1.2.  Also the
   end-to-end request latency (stream + handshake + pin check + request +
   response).

``--backend sim`` (or ``--sandbox``) launches through the sim backend
(bubblewrap), ``--backend docker`` through the docker backend (a hardened
container; target ready < 700 ms), and then also times a bare
``docker run --rm`` of the same image in the same run, for reference.
Prints plain numbers.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import trio

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from enclave import host, measure  # noqa: E402
from enclave import ratls_verify as rv  # noqa: E402
from enclave.ai_manifest import load_manifest  # noqa: E402
from enclave import ai_object
from enclave.package import new_key, seal_dir  # noqa: E402
from enclave.quotes.sim_pki import SimPki  # noqa: E402
from enclave.quotes.sim_qe import SimQuotingEnclave  # noqa: E402
from enclave.unixfs import cid_of_chunks  # noqa: E402

from bench.results import figure, samples  # noqa: E402

DIGITS = Path(__file__).resolve().parents[1] / "examples" / "digits"
SAMPLES = sorted((DIGITS / "samples").glob("*.json"))


def p50(xs: list[float]) -> float:
    return statistics.median(xs)


def pct(xs: list[float], q: float) -> float:
    return sorted(xs)[min(len(xs) - 1, int(q * len(xs)))]


class Setup:
    def __init__(self, backend: str) -> None:
        now = int(time.time())
        self.pki = SimPki.generate("bench", now=now)
        self.qe = SimQuotingEnclave(self.pki, seed=b"bench", now=now)
        self.collateral = self.qe.collateral(now=now)
        self.key = new_key()
        buf = io.BytesIO()
        seal_dir(DIGITS, buf, self.key)
        self.ct = ai_object.header((DIGITS / "ai.toml").read_bytes()) + buf.getvalue()
        self.cid = cid_of_chunks([self.ct])
        self.manifest = (DIGITS / "ai.toml").read_text()
        self.mrenclave = measure.mrenclave(self.manifest.encode())
        self.quote_fn = host.sim_quote_fn(self.qe, self.manifest.encode())
        self.launcher = host.subprocess_launcher
        self.backend = None
        if backend != "plain":
            from enclave.backends import get_backend

            self.backend = get_backend(backend)
            if not self.backend.available().ok:
                sys.exit(f"{backend} backend unavailable: {self.backend.available().reason}")
            self.launcher = host.backend_launcher(self.backend, cpu_seconds=600)

    def job(self, n: int = 1) -> host.Job:
        return host.Job("bench-" + os.urandom(4).hex(), os.urandom(32), self.cid, self.manifest, max_requests=n)

    def verify(self, job: host.Job, **kw) -> dict:
        return {"expected_mrenclave": self.mrenclave, "nonce": job.nonce, "root_ca_der": self.pki.root_cert_der,
                "collateral": self.collateral, **kw}


async def start_to_ready(s: Setup, runs: int) -> None:
    evidence, handshake, ready, inner = [], [], [], []
    for _ in range(runs + 1):  # the first run warms the OS caches; not counted
        job = s.job()
        t0 = time.perf_counter()
        async with s_open(s, job) as enclave:
            t1 = time.perf_counter()
            tls, _ = await rv.open_trio_client(await enclave.open_stream(), **s.verify(job))
            t2 = time.perf_counter()
            await enclave.wait_ai_ready()
            t3 = time.perf_counter()
            await tls.aclose()
        evidence.append((t1 - t0) * 1e3)
        handshake.append((t2 - t1) * 1e3)
        ready.append((t3 - t0) * 1e3)
        inner.append(enclave.evidence.timing["evidence_ms"] + enclave.evidence.timing["tls_ms"])
    evidence, handshake, ready, inner = evidence[1:], handshake[1:], ready[1:], inner[1:]
    total = [a + b for a, b in zip(evidence, handshake)]
    print(f"start to ready, p50 over {runs} enclaves (ms):")
    print(f"  launch -> evidence at host           {p50(evidence):7.1f}   (p90 {pct(evidence, .9):.1f})")
    print(f"    of which key+2 quotes+cert+TLS ctx  {p50(inner):7.1f}   (inside the runtime)")
    print(f"  first TLS handshake + RA-TLS verify   {p50(handshake):7.1f}")
    target = 700 if s.backend is not None and s.backend.name == "docker" else 300
    print(f"  launch -> TLS up (target < {target})       {p50(total):7.1f}   (p90 {pct(total, .9):.1f})")
    print(f"  launch -> AI fetched, checked, loaded {p50(ready):7.1f}")
    name = s.backend.name if s.backend is not None else "plain"
    figure(f"ready_{name}", p50(total), "ms", label=f"enclave start to ready (TLS up), p50, {name}", target=target)
    samples(f"ready_{name}", total, "ms", label=f"enclave start to ready, {name}")


def s_open(s: Setup, job: host.Job):
    return host.open_enclave(job, quote_fn=s.quote_fn, ai=s.ct, ai_key=s.key, launcher=s.launcher)


def outside_runs(n: int, pause_ms: float = 0.0) -> list[float]:
    """The same onnxruntime call as the runtime's onnx runner, in this process.

    ``pause_ms`` > 0 sleeps between calls, like the enclave's AI thread waits
    between requests: a 10-microsecond call is 2-4x slower when the core was
    idle (cold caches, clock), which is not enclave overhead.
    """
    import numpy as np
    import onnxruntime as ort

    m = load_manifest(DIGITS)
    spec = m.io.onnx
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = m.resources.cpu
    sess = ort.InferenceSession(str(DIGITS / m.entry), sess_options=opts, providers=["CPUExecutionProvider"])
    names = list(spec.outputs.values())
    out = []
    for i in range(n + 20):
        body = json.loads(SAMPLES[i % len(SAMPLES)].read_bytes())
        x = np.asarray(body[spec.input_key]).astype(spec.input_dtype).reshape((1, *spec.input_shape))
        if pause_ms:
            time.sleep(pause_ms / 1e3)
        t = time.perf_counter()
        sess.run(names, {spec.input_name: x})
        out.append((time.perf_counter() - t) * 1e3)
    return out[20:]


async def inference(s: Setup, n: int) -> None:
    before = outside_runs(n)
    warm = 20
    job = s.job(n + warm)
    inside, e2e = [], []
    async with s_open(s, job) as enclave:
        await enclave.wait_ai_ready()
        pin = rv.verify_ratls_cert(enclave.evidence.cert_der, **s.verify(job)).cert_sha256
        for i in range(n + warm):
            data = SAMPLES[i % len(SAMPLES)].read_bytes()
            t = time.perf_counter()
            stream = await enclave.open_stream()
            tls = trio.SSLStream(stream, rv.client_context())
            await tls.do_handshake()
            if hashlib.sha256(tls.getpeercert(binary_form=True) or b"").hexdigest() != pin:
                raise SystemExit("the enclave presented another certificate than the attested one")
            resp = await rv.trio_request(tls, data)
            await tls.aclose()
            e2e.append((time.perf_counter() - t) * 1e3)
            assert resp.status == "ok", resp.error
            inside.append(resp.header["timing"]["infer_ms"])
    inside, e2e = inside[warm:], e2e[warm:]
    paced = outside_runs(n, pause_ms=p50(e2e))
    print(f"digits inference, {n} requests (ms):")
    print(f"  sess.run inside the enclave, p50      {p50(inside):8.4f}   (one call per request, "
          f"every {p50(e2e):.1f} ms)")
    print(f"  same call outside, paced alike, p50   {p50(paced):8.4f}")
    print(f"  overhead ratio inside/outside         {p50(inside) / p50(paced):8.2f}   (target <= 1.2)")
    name = s.backend.name if s.backend is not None else "plain"
    figure(f"infer_{name}", p50(inside) * 1000, "µs", label=f"digits sess.run inside ({name}), p50",
           reference=p50(paced) * 1000, reference_label="same call outside, paced alike")
    figure(f"request_{name}", p50(e2e), "ms", label=f"end-to-end request on a fresh TLS stream ({name}), p50")
    print(f"  same call outside, back to back, p50  {p50(before):8.4f}   (warm core; ratio "
          f"{p50(inside) / p50(before):.2f})")
    print(f"  end to end per request, p50           {p50(e2e):8.2f}   (p90 {pct(e2e, .9):.2f}; new stream + "
          "TLS 1.3 handshake + pin check + request + response)")


async def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--backend", choices=["plain", "sim", "docker"], default="plain",
                    help="how the runtime is launched (default: a plain subprocess)")
    ap.add_argument("--sandbox", action="store_true", help="same as --backend sim")
    args = ap.parse_args()
    backend = "sim" if args.sandbox else args.backend
    s = Setup(backend)
    print(f"launcher: {backend}; digits AI package {len(s.ct)} bytes")
    await start_to_ready(s, args.runs)
    if backend == "docker":
        bare_docker_run(s, args.runs)
    await inference(s, args.requests)


def bare_docker_run(s: Setup, runs: int) -> None:
    """Reference: ``docker run --rm`` of the same image running ``true`` (no hardening, no Python)."""
    import subprocess

    image = s.backend.ensure_image()
    argv = ["docker", "run", "--rm", "--network", "none", "-v", "/usr:/usr:ro", image, "/usr/bin/true"]
    times = []
    for _ in range(runs + 1):
        t = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL)
        times.append((time.perf_counter() - t) * 1e3)
    print(f"  reference: bare `docker run --rm IMAGE true` {p50(times[1:]):7.1f}   (p90 {pct(times[1:], .9):.1f})")
    figure("bare_docker_run", p50(times[1:]), "ms", label="bare `docker run --rm IMAGE true`, p50 (reference)")


if __name__ == "__main__":
    trio.run(main)
