"""The gramine-direct and gramine-sgx backends, run through STAND-IN Gramine tools.

Gramine cannot be installed on these machines. ``tests/helpers/gramine_standin/``
holds executables named like Gramine's tools that record their argv (in the
work directory's ``gramine-standin.log``) and do what the real ones would on
the files: ``gramine-manifest`` runs our stage-2 reproduction, the signer
writes placeholder keys and signatures, and ``gramine-direct``/``gramine-sgx``
verify every trusted file's hash and then exec ``libos.entrypoint`` with
``loader.argv`` and ``loader.env`` WITHOUT any isolation. So these tests run
the backends' real ``start()`` path (render, build, sign, launch, relay) and
the real runtime, but prove nothing about Gramine's or SGX's isolation.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import pytest
import trio

from enclave import gramine_manifest as gm
from enclave import host
from enclave import ratls_verify as rv
from enclave.backends import (
    BackendError,
    BackendUnavailable,
    EnclaveSpec,
    backend_names,
    gramine,
    inventory,
)
from enclave.quotes.sim_pki import SimPki
from enclave.quotes.sim_qe import SimQuotingEnclave
from tests.enclave.conftest import EXAMPLES, NOW, make_job, seal

STANDIN = Path(__file__).resolve().parents[1] / "helpers" / "gramine_standin"
STANDIN_INSTALL = gm.GramineInstall(STANDIN / "pkglib")
SAMPLE = EXAMPLES / "digits" / "samples" / "4-1023.json"


@pytest.fixture(scope="module")
def digits():
    return seal(EXAMPLES / "digits")


@pytest.fixture(scope="module")
def sim_qe() -> tuple[SimQuotingEnclave, dict]:
    """A simulated QE and the verifier's arguments for its quotes."""
    pki = SimPki.generate("gramine-tests", now=NOW)
    qe = SimQuotingEnclave(pki, seed=b"gramine-tests", now=NOW)
    # no "now": certificates are checked when they are made (valid from 5 min before), not at import
    return qe, {"root_ca_der": pki.root_cert_der, "collateral": qe.collateral(now=NOW)}


@pytest.fixture
def no_gramine(monkeypatch, tmp_path):
    """A PATH with the usual system tools but certainly no Gramine."""
    empty = tmp_path / "bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", f"{empty}:/usr/bin:/bin")


@pytest.fixture
def standin_path(monkeypatch):
    """The stand-in tools first on PATH (their ``python3`` is this interpreter's)."""
    monkeypatch.setenv("PATH", f"{STANDIN}:{Path(sys.executable).parent}:{os.environ['PATH']}")


def log_of(workdir: Path) -> list[dict]:
    return [json.loads(line) for line in (workdir / "gramine-standin.log").read_text().splitlines()]


def test_exact_command_lines(tmp_path) -> None:
    direct = gramine.build_commands("direct")
    assert direct.manifest == ["gramine-manifest", "ofenclave.manifest.in", "ofenclave.manifest"]
    assert (direct.keygen, direct.sign, direct.run) == (None, None, ["gramine-direct", "ofenclave"])
    key = tmp_path / "enclave-key.pem"
    sgx = gramine.build_commands("sgx", key, key_exists=False)
    assert sgx.manifest == direct.manifest
    assert sgx.keygen == ["gramine-sgx-gen-private-key", str(key)]
    assert sgx.sign == ["gramine-sgx-sign", "--manifest", "ofenclave.manifest",
                        "--output", "ofenclave.manifest.sgx", "--key", str(key)]
    assert sgx.run == ["gramine-sgx", "ofenclave"]
    assert gramine.build_commands("sgx", key, key_exists=True).keygen is None
    with pytest.raises(ValueError):
        gramine.build_commands("sgx")


def test_quote_sources() -> None:
    assert gramine.GramineSgxBackend.quote_source == "dev-attestation"
    assert gramine.GramineDirectBackend.quote_source == "sim-host"  # no SGX: the host's simulated QE


def test_unavailable_without_gramine_says_what_to_install(no_gramine) -> None:
    direct = gramine.GramineDirectBackend().available()
    assert not direct.ok
    assert direct.reason.startswith("Gramine is not installed (no gramine-manifest, gramine-direct on PATH)")
    assert "packages.gramineproject.io" in direct.reason
    sgx = gramine.GramineSgxBackend().available()
    assert not sgx.ok
    assert "no gramine-manifest, gramine-sgx-gen-private-key, gramine-sgx-sign, gramine-sgx on PATH" in sgx.reason


def test_sgx_without_sgx_hardware_names_each_missing_part(standin_path, monkeypatch, tmp_path) -> None:
    monkeypatch.setattr(gramine, "SGX_DEVICES", (str(tmp_path / "sgx_enclave"), str(tmp_path / "sgx_provision")))
    monkeypatch.setattr(gramine, "AESM_SOCKET", str(tmp_path / "aesm.socket"))
    monkeypatch.setattr(gramine, "QUOTE_PROVIDER", (str(tmp_path / "libdcap_quoteprov.so*"),))
    a = gramine.GramineSgxBackend().available()
    assert not a.ok and "Gramine is not installed" not in a.reason  # the (stand-in) tools are there
    for part in ("sgx_enclave", "sgx_provision", "sgx-aesm-service", "libsgx-dcap-default-qpl"):
        assert part in a.reason, part
    for p in (*gramine.SGX_DEVICES, gramine.AESM_SOCKET, str(tmp_path / "libdcap_quoteprov.so.1")):
        Path(p).touch()
    assert gramine.GramineSgxBackend().available().ok
    assert gramine.GramineDirectBackend().available().ok


def test_inventory_lists_both_not_ok_with_reasons(no_gramine) -> None:
    assert {"gramine-direct", "gramine-sgx"} <= set(backend_names())
    from enclave import backends

    for name in ("gramine-direct", "gramine-sgx"):
        backends._INSTANCES.pop(name, None)  # availability is cached per instance
    try:
        inv = inventory.detect(refresh=True)
        statuses = {b.name: b for b in inv.backends}
        for name in ("gramine-direct", "gramine-sgx"):
            assert not statuses[name].ok and "Gramine is not installed" in statuses[name].reason
            assert name not in inv.working_backends()
            assert inv.to_dict()["backends"][name]["ok"] is False
        assert inv.gramine_sgx is None and inv.gramine_direct is None
    finally:
        for name in ("gramine-direct", "gramine-sgx"):
            backends._INSTANCES.pop(name, None)
        inventory.detect(refresh=True)


async def test_start_refuses_what_it_cannot_run(standin_path, tmp_path) -> None:
    backend = gramine.GramineDirectBackend()
    (tmp_path / "s").mkdir()
    (tmp_path / "w").mkdir()

    def spec(*argv: str) -> EnclaveSpec:
        return EnclaveSpec(argv=argv, code_dirs=(), socket_dir=tmp_path / "s", scratch_dir=tmp_path / "w")

    with pytest.raises(BackendError, match="run only 'python -m enclave.runtime"):
        await backend.start(spec(sys.executable, "-c", "print(1)"))
    with pytest.raises(BackendError, match="--socket must name a socket in /run/ofnode"):
        await backend.start(spec(sys.executable, "-m", "enclave.runtime", "--socket", "/elsewhere/x.sock"))
    with pytest.raises(BackendUnavailable):
        await gramine.GramineSgxBackend().start(spec(sys.executable, "-m", "enclave.runtime", "--socket",
                                                     "/run/ofnode/enclave.sock"))


def spying_launcher(backend, seen: dict, **limits):
    """backend_launcher, remembering the work dir (the scratch dir) before open_enclave removes it."""
    inner = host.backend_launcher(backend, **limits)

    async def launch(socket_dir, name, scratch_dir, quote_source):
        seen["workdir"] = scratch_dir
        return await inner(socket_dir, name, scratch_dir, quote_source)

    return launch


async def test_gramine_direct_runs_the_digits_ai_through_the_standin(standin_path, sim_qe, digits) -> None:
    qe, verify_kwargs = sim_qe
    backend = gramine.GramineDirectBackend()
    assert backend.available().ok, backend.available().reason
    seen: dict = {}
    job = make_job(digits)
    data = SAMPLE.read_bytes()
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key,
                                 launcher=spying_launcher(backend, seen, cpu_seconds=60)) as enclave:
        stream = await enclave.open_stream()
        tls, ev = await rv.open_trio_client(stream, expected_mrenclave=digits.mrenclave, nonce=job.nonce,
                                            **verify_kwargs)
        resp = await rv.trio_request(tls, data)
        await tls.aclose()
        workdir = seen["workdir"]
        calls = log_of(workdir)
        final = (workdir / "ofenclave.manifest").read_text()
    assert resp.status == "ok", resp.error
    assert json.loads(resp.output)["label"] == 4
    rv.verify_receipt(resp, ev, data, request_id=job.request_id)
    assert enclave.exit.reason == "ok", enclave.exit
    # the exact tools, in order, in the work directory
    assert [c["argv"] for c in calls] == [
        ["gramine-manifest", "ofenclave.manifest.in", "ofenclave.manifest"],
        ["gramine-direct", "ofenclave"],
    ]
    assert {c["cwd"] for c in calls} == {str(workdir)}
    # the manifest the enclave ran from is right for the limits the spec gave
    limits = backend.limits(EnclaveSpec(argv=("x",), code_dirs=(), socket_dir=workdir, scratch_dir=workdir), None)
    assert gm.check_manifest(final, limits=limits, argv=gm.enclave_argv(gm.RuntimeLayout.current(), "sim-host"),
                             required=gm.runtime_files(gm.RuntimeLayout.current())) == []


class StandinSgxBackend(gramine.GramineSgxBackend):
    """gramine-sgx with its hardware checks waived: no SGX here, only the stand-in tools."""

    def _check(self):
        return gramine.Availability(True, "STAND-IN: SGX checks waived for the test")


async def test_gramine_sgx_builds_signs_and_runs_with_dev_attestation(standin_path, tmp_path, digits) -> None:
    """The sgx path: key generated once, manifest signed, loader started; the runtime inside
    asks /dev/attestation for its quote, which this host does not have: the failure proves it."""
    key = tmp_path / "keys" / "enclave-key.pem"
    backend = StandinSgxBackend(signing_key=key)
    for attempt in range(2):
        seen: dict = {}
        job = make_job(digits)
        with pytest.raises(host.EnclaveError) as err:
            async with host.open_enclave(job, quote_fn=None, ai=digits.ciphertext, ai_key=digits.key,
                                         launcher=spying_launcher(backend, seen, cpu_seconds=60)):
                pass
        assert "/dev/attestation/attestation_type" in str(err.value), err.value
        assert key.read_text().startswith("STAND-IN KEY")
    assert backend.commands().keygen is None  # the key exists now: not generated again


def play_dev_attestation(tmp_path: Path, qe, mrenclave: bytes) -> Path:
    """A directory that answers like Gramine's /dev/attestation (the sim QE signs; a FIFO
    hands out one quote per read, over the report data last written)."""
    d = tmp_path / "attestation"
    d.mkdir()
    (d / "attestation_type").write_text("dcap")
    (d / "user_report_data").write_bytes(b"")
    os.mkfifo(d / "quote")

    def responder() -> None:
        last = b""
        for _ in range(2):  # the runtime asks for two quotes (legacy + DICE)
            while len(rd := (d / "user_report_data").read_bytes()) != 64 or rd == last:
                time.sleep(0.001)
            last = rd
            with open(d / "quote", "wb") as out:
                out.write(qe.quote(mrenclave, rd))

    threading.Thread(target=responder, daemon=True).start()
    return d


async def test_gramine_sgx_runs_the_digits_ai_with_quotes_from_dev_attestation(
        standin_path, tmp_path, sim_qe, digits) -> None:
    """The whole sgx path with stand-ins: build, sign, launch; the runtime's quotes come from
    /dev/attestation (a played directory bound there), the host answers none (quote_fn=None)."""
    qe, verify_kwargs = sim_qe
    from tests.parts import require_part

    require_part("bubblewrap (plays /dev/attestation for the stand-in)", shutil.which("bwrap") is not None)
    att = play_dev_attestation(tmp_path, qe, digits.mrenclave)
    backend = StandinSgxBackend(signing_key=tmp_path / "enclave-key.pem")
    inner = host.backend_launcher(backend, cpu_seconds=60)

    async def launch(socket_dir, name, scratch_dir, quote_source):
        (scratch_dir / "gramine-standin-attestation").write_text(str(att))
        return await inner(socket_dir, name, scratch_dir, quote_source)

    job = make_job(digits)
    data = SAMPLE.read_bytes()
    async with host.open_enclave(job, quote_fn=None, ai=digits.ciphertext, ai_key=digits.key,
                                 launcher=launch) as enclave:
        stream = await enclave.open_stream()
        tls, ev = await rv.open_trio_client(stream, expected_mrenclave=digits.mrenclave, nonce=job.nonce,
                                            **verify_kwargs)
        resp = await rv.trio_request(tls, data)
        await tls.aclose()
    assert json.loads(resp.output)["label"] == 4
    rv.verify_receipt(resp, ev, data, request_id=job.request_id)
    assert enclave.exit.reason == "ok", enclave.exit


async def test_gramine_sgx_command_sequence(standin_path, tmp_path) -> None:
    """The sgx build and launch, step by step, in a work dir that outlives the enclave."""
    key = tmp_path / "enclave-key.pem"
    backend = StandinSgxBackend(signing_key=key)
    sock, work = tmp_path / "sock", tmp_path / "work"
    sock.mkdir()
    work.mkdir()
    spec = EnclaveSpec(argv=host.runtime_argv("/run/ofnode/enclave.sock", scratch="/scratch"), code_dirs=(),
                       socket_dir=sock, scratch_dir=work, cpu_seconds=30)
    # Nobody listens on the socket: the relay takes the runtime's TCP connection, cannot
    # reach the host's listener and closes it, so the runtime (which did start) exits 1.
    async with await backend.start(spec) as proc:
        with trio.fail_after(30):
            info = await proc.wait()
    assert info.reason == "error" and info.code == 1, info
    assert "enclave: ChannelError: channel: host closed the channel" in info.stderr_tail
    assert [c["argv"] for c in log_of(work)] == [
        ["gramine-manifest", "ofenclave.manifest.in", "ofenclave.manifest"],
        ["gramine-sgx-gen-private-key", str(key)],
        ["gramine-sgx-sign", "--manifest", "ofenclave.manifest", "--output", "ofenclave.manifest.sgx",
         "--key", str(key)],
        ["gramine-sgx", "ofenclave"],
    ]
    assert (work / "ofenclave.sig").is_file()
    signed = (work / "ofenclave.manifest.sgx").read_text()
    assert gm.check_manifest(signed, argv=gm.enclave_argv(gm.RuntimeLayout.current(), "dev-attestation")) == []


def test_provider_offers_sgx_only_with_a_working_gramine_sgx_backend() -> None:
    """SGX devices alone do not make an SGX provider: the gramine-sgx backend must be available."""
    from dataclasses import replace
    from types import SimpleNamespace

    from node.provider.service import ProviderService

    inv = inventory.detect()
    with_devices = replace(inv, sgx=replace(inv.sgx, enclave_device=True, provision_device=True))

    def tees(inv_, sgx_ok: bool) -> list[str]:
        statuses = tuple(b for b in inv_.backends if b.name != "gramine-sgx")
        statuses += (inventory.BackendStatus("gramine-sgx", sgx_ok, "test"),)
        me = SimpleNamespace(backend_name="sim", inventory=replace(inv_, backends=statuses),
                             genesis=SimpleNamespace(sim_root_key=""))
        return ProviderService.tees(me)  # type: ignore[arg-type]

    assert "sgx" not in tees(with_devices, sgx_ok=False)
    assert "sgx" in tees(with_devices, sgx_ok=True)
