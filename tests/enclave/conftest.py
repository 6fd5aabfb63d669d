"""Shared fixtures: a sim PKI + quoting enclave, sealed example AIs, and a job runner."""

from __future__ import annotations

import io
import os
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from enclave import host, measure
from enclave import ai_object
from enclave.package import new_key, seal_dir
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave
from enclave.unixfs import cid_of_chunks

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NOW = int(time.time())


@dataclass(frozen=True)
class Sealed:
    """An example AI as a provider holds it: ciphertext, its CID, the key, the manifest."""

    name: str
    ciphertext: bytes
    cid: str
    key: bytes
    manifest: str

    @property
    def mrenclave(self) -> bytes:
        return measure.mrenclave(self.manifest.encode())


def seal(directory: Path) -> Sealed:
    key = new_key()
    buf = io.BytesIO()
    seal_dir(directory, buf, key, chunk_size=64 << 10)
    ct = ai_object.header((directory / "ai.toml").read_bytes()) + buf.getvalue()
    return Sealed(directory.name, ct, cid_of_chunks([ct]), key, (directory / "ai.toml").read_text())


@pytest.fixture(scope="session")
def pki() -> SimPki:
    return SimPki.generate("enclave-tests", now=NOW)


@pytest.fixture(scope="session")
def qe(pki: SimPki) -> SimQuotingEnclave:
    return SimQuotingEnclave(pki, seed=b"enclave-tests", now=NOW)


@pytest.fixture(scope="session")
def collateral(qe: SimQuotingEnclave):
    return qe.collateral(now=NOW)


@pytest.fixture(scope="session")
def digits() -> Sealed:
    return seal(EXAMPLES / "digits")


@pytest.fixture(scope="session")
def wordcount() -> Sealed:
    return seal(EXAMPLES / "wordcount-python")


@pytest.fixture
def verify_kwargs(pki, collateral):
    """Keyword arguments for verify_ratls_cert, minus the per-job ones.

    ``now`` is the test's own time: certificates are valid from 5 minutes before
    they are made, and a long suite makes them well after the session's NOW."""
    return {"root_ca_der": pki.root_cert_der, "collateral": collateral, "now": int(time.time())}


def make_job(ai: Sealed, **kw) -> host.Job:
    return host.Job(kw.pop("request_id", "req-" + os.urandom(4).hex()), kw.pop("nonce", os.urandom(32)),
                    kw.pop("ai_cid", ai.cid), kw.pop("manifest", ai.manifest), **kw)
