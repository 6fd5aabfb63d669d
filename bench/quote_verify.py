"""Throughput of sim quote generation and of dcap_qvl verification of those quotes.

Run: .venv/bin/python bench/quote_verify.py [seconds-per-measurement]
Prints plain numbers (operations per second, single thread).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Callable

import dcap_qvl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from enclave.quotes.sim_pki import SimPki  # noqa: E402
from enclave.quotes.sim_qe import SimQuotingEnclave  # noqa: E402

from bench.results import figure  # noqa: E402


def rate(fn: Callable[[], object], seconds: float) -> float:
    """Calls per second of ``fn`` over about ``seconds`` of wall time."""
    fn()  # warm up
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        for _ in range(50):
            fn()
        n += 50
    return n / elapsed


def main() -> None:
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    now = int(time.time())
    start = time.perf_counter()
    pki = SimPki.generate("bench", now=now)
    qe = SimQuotingEnclave(pki, seed=b"bench", now=now)
    setup_ms = (time.perf_counter() - start) * 1000
    mrenclave, report_data = os.urandom(32), os.urandom(64)
    quote = qe.quote(mrenclave, report_data)
    collateral = qe.collateral(now=now)
    root = pki.root_cert_der
    assert dcap_qvl.verify_with_root_ca(quote, collateral, root, now).status == "UpToDate"

    print(f"quote bytes: {len(quote)}")
    print(f"sim PKI + QE setup ms: {setup_ms:.1f}")
    made = rate(lambda: qe.quote(mrenclave, report_data), seconds)
    verified = rate(lambda: dcap_qvl.verify_with_root_ca(quote, collateral, root, now), seconds)
    print(f"sim quotes generated per second: {made:.0f}")
    print(f"sim collateral sets generated per second: {rate(lambda: qe.collateral(now=now), seconds):.0f}")
    print(f"dcap_qvl.verify_with_root_ca per second: {verified:.0f}")
    figure("sim_quotes_per_s", made, "/s", label="sim quotes made per second",
           reference=verified, reference_label="dcap-qvl verifications per second", better="higher")


if __name__ == "__main__":
    main()
