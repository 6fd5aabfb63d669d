"""Host + runtime subprocess + sim quotes, end to end over TLS 1.3.

Each test launches ``python -m enclave.runtime`` through ``enclave.host`` and
talks to it the way a consumer would: RA-TLS handshake through the host's
stream, verify the certificate before sending anything, send the input, check
the output and the signed receipt.
"""

from __future__ import annotations

import json

import pytest
import trio

from enclave import host
from enclave import ratls_verify as rv

from .conftest import EXAMPLES, make_job

SAMPLES = sorted((EXAMPLES / "digits" / "samples").glob("*.json"))


async def consumer(session: host.EnclaveSession, job: host.Job, verify_kwargs: dict, data: bytes, **kw):
    stream = await session.open_stream()
    tls, ev = await rv.open_trio_client(stream, expected_mrenclave=kw.pop("mrenclave"), nonce=job.nonce,
                                        **verify_kwargs, **kw)
    resp = await rv.trio_request(tls, data)
    await tls.aclose()
    return ev, resp


async def test_digits_label_over_ratls(qe, digits, verify_kwargs) -> None:
    job = make_job(digits)
    sample = EXAMPLES / "digits" / "samples" / "3-918.json"
    data = sample.read_bytes()
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        ev, resp = await consumer(enclave, job, verify_kwargs, data, mrenclave=digits.mrenclave)
    assert resp.status == "ok", resp.error
    assert json.loads(resp.output)["label"] == 3
    receipt = rv.verify_receipt(resp, ev, data, request_id=job.request_id)
    assert receipt["ai_cid"] == digits.cid
    assert ev.tcb_status == "UpToDate" and ev.mrenclave == digits.mrenclave
    assert ev.cert_der == enclave.evidence.cert_der  # the cert the host forwarded is the one TLS used
    assert enclave.exit == 0 and enclave.error is None
    assert resp.header["timing"]["infer_ms"] > 0


async def test_all_digit_samples_in_one_enclave(qe, digits, verify_kwargs) -> None:
    job = make_job(digits, max_requests=len(SAMPLES))
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        for sample in SAMPLES:
            data = sample.read_bytes()
            ev, resp = await consumer(enclave, job, verify_kwargs, data, mrenclave=digits.mrenclave,
                                      expected_cert_sha256=None)
            assert json.loads(resp.output)["label"] == int(sample.name.split("-")[0])
            rv.verify_receipt(resp, ev, data)
        with trio.fail_after(10):
            await enclave.finished.wait()
    assert enclave.exit == 0 and len(enclave.served) == len(SAMPLES)


async def test_python_ai_over_ratls(qe, wordcount, verify_kwargs) -> None:
    job = make_job(wordcount)
    data = "the cat and the hat\nthe end\n".encode()
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, wordcount.manifest.encode()),
                                 ai=wordcount.ciphertext, ai_key=wordcount.key) as enclave:
        ev, resp = await consumer(enclave, job, verify_kwargs, data, mrenclave=wordcount.mrenclave)
    assert resp.status == "ok", resp.error
    out = json.loads(resp.output)
    assert out["lines"] == 2 and out["words"] == 7 and out["top"][0] == ["the", 3]
    rv.verify_receipt(resp, ev, data, request_id=job.request_id)
    assert enclave.exit == 0


async def test_pinned_certificate(qe, digits, verify_kwargs) -> None:
    job = make_job(digits, max_requests=2)
    data = SAMPLES[0].read_bytes()
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        pin = rv.verify_ratls_cert(enclave.evidence.cert_der, expected_mrenclave=digits.mrenclave,
                                   nonce=job.nonce, **verify_kwargs).cert_sha256
        ev, resp = await consumer(enclave, job, verify_kwargs, data, mrenclave=digits.mrenclave,
                                  expected_cert_sha256=pin)
        assert resp.status == "ok"
        with pytest.raises(rv.RaTlsError) as err:
            await consumer(enclave, job, verify_kwargs, data, mrenclave=digits.mrenclave,
                           expected_cert_sha256="00" * 32)
        assert err.value.check == "pin"


async def test_wrong_expectations_stop_before_any_data_is_sent(qe, digits, verify_kwargs) -> None:
    """A consumer with another nonce or MRENCLAVE hangs up right after the handshake."""
    job = make_job(digits)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        for kw, check in (({"nonce": bytes(32)}, "report-data"), ({"expected_mrenclave": bytes(32)}, "mrenclave")):
            stream = await enclave.open_stream()
            args = {"expected_mrenclave": digits.mrenclave, "nonce": job.nonce, **verify_kwargs, **kw}
            with pytest.raises(rv.RaTlsError) as err:
                await rv.open_trio_client(stream, **args)
            assert err.value.check == check
        assert not any(s["answered"] for s in enclave.served)  # nothing was run


async def test_tampered_ciphertext_is_refused(qe, digits) -> None:
    job = make_job(digits)
    bad = bytearray(digits.ciphertext)
    bad[len(bad) // 2] ^= 1
    with pytest.raises(host.EnclaveError, match="AI CID mismatch"):
        async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                     ai=bytes(bad), ai_key=digits.key) as enclave:
            await enclave.wait_ai_ready(timeout=10)
    assert enclave.exit == 1


async def test_wrong_key_is_a_clear_error(qe, digits) -> None:
    job = make_job(digits)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=bytes(32)) as enclave:
        with pytest.raises(host.EnclaveError, match="cannot decrypt the AI: chunk 0: authentication failed"):
            await enclave.wait_ai_ready(timeout=10)
    assert enclave.exit == 1


async def test_no_key_is_a_clear_error(qe, digits) -> None:
    job = make_job(digits)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=None) as enclave:
        with pytest.raises(host.EnclaveError, match="host has no key"):
            await enclave.wait_ai_ready(timeout=10)
    assert enclave.exit == 1


async def test_manifest_must_match_the_package(qe, digits, wordcount) -> None:
    """The job's (measured) manifest must be the ai.toml inside the package."""
    job = make_job(digits, manifest=wordcount.manifest)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, wordcount.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        with pytest.raises(host.EnclaveError, match="public manifest differs"):
            await enclave.wait_ai_ready(timeout=10)


async def test_public_manifest_must_match_the_packaged_one(qe, digits, wordcount) -> None:
    """An object whose clear manifest was swapped (CID recomputed to match) is still refused."""
    from enclave import ai_object
    from enclave.unixfs import cid_of_chunks

    _, encrypted = ai_object.split([digits.ciphertext])
    forged = ai_object.header(wordcount.manifest.encode()) + b"".join(encrypted)
    job = make_job(digits, manifest=wordcount.manifest)
    job = host.Job(job.request_id, job.nonce, cid_of_chunks([forged]), job.manifest)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, wordcount.manifest.encode()),
                                 ai=forged, ai_key=digits.key) as enclave:
        with pytest.raises(host.EnclaveError, match="ai.toml differs"):
            await enclave.wait_ai_ready(timeout=10)


async def test_ai_source_failure_is_reported(qe, digits) -> None:
    async def broken():
        yield digits.ciphertext[:1000]
        raise OSError("block not found")

    job = make_job(digits)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=broken, ai_key=digits.key) as enclave:
        with pytest.raises(host.EnclaveError, match="host could not supply the AI: AI source failed: block not found"):
            await enclave.wait_ai_ready(timeout=10)


async def test_bad_request_gets_an_error_response(qe, digits, verify_kwargs) -> None:
    job = make_job(digits)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        _, resp = await consumer(enclave, job, verify_kwargs, b'{"pixels": [1, 2]}', mrenclave=digits.mrenclave)
    assert resp.status == "error" and "exactly 64 numbers" in resp.error
    assert resp.output == b"" and "receipt" not in resp.header
    assert enclave.exit == 0


async def test_malformed_job_fails_fast(qe, digits) -> None:
    job = make_job(digits, nonce=b"short")
    with pytest.raises(host.EnclaveError, match="nonce must be 32 bytes"):
        async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                     ai=digits.ciphertext, ai_key=digits.key):
            pass


async def test_missing_quote_source_fails_fast(digits) -> None:
    with pytest.raises(host.EnclaveError, match="host refused 'quote'"):
        async with host.open_enclave(make_job(digits), quote_fn=None, ai=digits.ciphertext, ai_key=digits.key):
            pass


async def test_pyopenssl_verify_callback(qe, digits, verify_kwargs) -> None:
    """The pyOpenSSL variant fails the handshake itself on a bad enclave and passes a good one."""
    from OpenSSL import SSL

    from enclave.runtime import tls as wire

    async def flush(conn, stream) -> None:
        try:
            await stream.send_all(conn.bio_read(1 << 20))
        except SSL.WantReadError:  # nothing to send
            pass

    async def handshake(stream, ctx):
        conn = SSL.Connection(ctx, None)  # memory BIOs, pumped over the enclave stream
        conn.set_app_data(None)
        conn.set_connect_state()
        while True:
            try:
                conn.do_handshake()
                await flush(conn, stream)
                return conn
            except SSL.WantReadError:
                await flush(conn, stream)
                conn.bio_write(await stream.receive_some())

    job = make_job(digits)
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key) as enclave:
        bad = rv.pyopenssl_context(expected_mrenclave=bytes(32), nonce=job.nonce, **verify_kwargs)
        stream = await enclave.open_stream()
        with pytest.raises(SSL.Error):
            await handshake(stream, bad)
        await stream.aclose()
        good = rv.pyopenssl_context(expected_mrenclave=digits.mrenclave, nonce=job.nonce, **verify_kwargs)
        stream = await enclave.open_stream()
        conn = await handshake(stream, good)
        assert isinstance(conn.get_app_data(), rv.VerifiedEvidence)
        conn.sendall(wire.encode_request(SAMPLES[3].read_bytes()))
        await flush(conn, stream)
        buf = b""
        while True:
            data = await stream.receive_some()
            if not data:
                break
            conn.bio_write(data)
            try:
                while chunk := conn.recv(1 << 16):
                    buf += chunk
            except (SSL.WantReadError, SSL.ZeroReturnError):
                pass
        (hlen,) = wire.RESP_HEADER.unpack(buf[:4])
        header = json.loads(buf[4 : 4 + hlen])
        assert header["status"] == "ok" and json.loads(buf[4 + hlen :])["label"] == 3


@pytest.mark.parametrize("backend_name", ["sim", "docker"])
async def test_digits_in_a_backend(backend_name, qe, digits, verify_kwargs) -> None:
    """The same flow with the runtime launched as a provider does: in a bubblewrap
    sandbox (sim) or a hardened container (docker), on encrypted input."""
    from enclave.backends import get_backend
    from tests.parts import require_part

    backend = get_backend(backend_name)
    require_part(f"{backend_name} backend", backend.available().ok, backend.available().reason)
    job = make_job(digits)
    data = SAMPLES[7].read_bytes()
    async with host.open_enclave(job, quote_fn=host.sim_quote_fn(qe, digits.manifest.encode()),
                                 ai=digits.ciphertext, ai_key=digits.key,
                                 launcher=host.backend_launcher(backend, cpu_seconds=60)) as enclave:
        ev, resp = await consumer(enclave, job, verify_kwargs, data, mrenclave=digits.mrenclave)
    assert json.loads(resp.output)["label"] == 7
    rv.verify_receipt(resp, ev, data, request_id=job.request_id)
    assert enclave.exit.reason == "ok", enclave.exit


async def test_dev_attestation_quote_source(qe, digits, verify_kwargs, tmp_path) -> None:
    """``--quote-source dev-attestation``: quotes through Gramine's file protocol (a FIFO stand-in)."""
    import os
    import threading
    import time

    d = tmp_path / "attestation"
    d.mkdir()
    (d / "attestation_type").write_text("dcap")
    (d / "user_report_data").write_bytes(b"")
    os.mkfifo(d / "quote")

    def responder() -> None:  # plays Gramine: quote whatever was last written to user_report_data
        last = b""
        for _ in range(2):  # the runtime asks for two quotes (legacy + DICE)
            while len(rd := (d / "user_report_data").read_bytes()) != 64 or rd == last:
                time.sleep(0.001)  # a FIFO reader sees EOF only once no writer is left: one at a time
            last = rd
            with open(d / "quote", "wb") as out:
                out.write(qe.quote(digits.mrenclave, rd))

    threading.Thread(target=responder, daemon=True).start()

    async def launcher(socket_dir, name, scratch, quote_source):
        argv = host.runtime_argv(socket_dir / name, quote_source="dev-attestation", scratch=scratch,
                                 attestation_dir=d)
        return host._Subprocess(await trio.lowlevel.open_process(argv, cwd=str(EXAMPLES.parent)))

    job = make_job(digits)
    data = SAMPLES[5].read_bytes()
    async with host.open_enclave(job, quote_fn=None, ai=digits.ciphertext, ai_key=digits.key,
                                 launcher=launcher) as enclave:
        ev, resp = await consumer(enclave, job, verify_kwargs, data, mrenclave=digits.mrenclave)
    assert json.loads(resp.output)["label"] == 5
    rv.verify_receipt(resp, ev, data)
