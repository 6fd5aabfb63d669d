"""The in-enclave runtime: attest, fetch and check the AI, serve requests over TLS.

``python -m enclave.runtime --socket PATH|tcp:HOST:PORT|env:VAR [--quote-source sim-host|dev-attestation]
[--attestation-dir DIR] [--scratch DIR]``

Lifecycle (``docs/enclave-runtime.md``):

1. connect to the host's socket; wait for ``job``;
2. fresh P-256 key; two quotes (legacy: report data SHA-256(SPKI || nonce);
   DICE: SHA-256(claims)); RA-TLS certificate; send ``evidence``;
3. in the background: ``fetch_ai`` -> re-hash the ciphertext against the AI
   CID -> key from the KeyProvider -> decrypt into the scratch dir -> package
   ``ai.toml`` must equal the job's manifest -> ``check_files`` -> load runner;
4. serve each ``tls`` stream the host opens: handshake, input, run, output +
   signed receipt; after ``max_requests`` say ``bye`` and exit 0.

Any failure: ``{"op": "error"}`` to the host and exit status 1.  Every wait
has a timeout.  Standard library + ``cryptography`` (+ onnxruntime lazily).
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import queue
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from enclave import ratls
from enclave.cid import Cid, CidError
from enclave.ai_manifest import ManifestError, check_files, parse_manifest
from enclave import ai_object
from enclave.package import PackageError, open_package
from enclave.quotes import layout
from enclave.runtime import runners, tls
from enclave.runtime.channel import Channel, ChannelError
from enclave.quotes.source import QuoteSourceError
from enclave.runtime.keys import (HostTestHookKeyProvider, KeyContext, KeyProvider, KeyUnavailable,
                                  SecretStoreKeyProvider)
from enclave.unixfs import cid_of_chunks

JOB_TIMEOUT = 30.0  # host must send the job this soon
REPLY_TIMEOUT = 30.0  # quote / fetch_ai / key replies
ACL_TIMEOUT = 90.0  # ACL quorum + key shares: the DOS and secrets peers answer over the network
STREAM_TIMEOUT = 60.0  # silence on a stream
DEFAULT_DEADLINE = 600.0  # whole job, unless the job says otherwise
MAX_INPUT = 64 << 20
MAX_STREAMS = 32  # concurrent TLS streams


class Failure(Exception):
    """A reason to stop the job (sent to the host as the error)."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


class Runtime:
    def __init__(self, chan: Channel, scratch: Path, quote_source: str, attestation_dir: str) -> None:
        self.chan, self.scratch = chan, scratch
        self.quote_source, self.attestation_dir = quote_source, attestation_dir
        self.ai_ready = threading.Event()
        self.slot_lock = threading.Lock()
        self.work: queue.Queue = queue.Queue()  # (input, reply box) for the AI thread
        self.served = self.claimed = 0
        self.active = 0
        self.runner: runners.Runner | None = None

    # ---- 1. the job
    def read_job(self) -> None:
        kind, msg = self.chan.next_event(JOB_TIMEOUT)
        if kind != "ctrl" or msg.get("op") != "job":
            raise Failure(f"expected a job first, got {kind} {msg!r}"[:300])
        job: dict = msg
        try:
            self.request_id = str(job["request_id"])
            self.nonce = bytes.fromhex(job["nonce"])
            self.ai_cid = str(job["ai_cid"])
            self.cid = Cid.decode(self.ai_cid).to_v1()
            self.manifest_bytes = job["manifest"].encode()
            self.max_requests = int(job.get("max_requests", 1))
            self.key_source = str(job.get("key_source", "secret-store"))
            self.secrets_peers = [str(p) for p in job.get("secrets_peers", [])][:64]
            self.deadline = time.monotonic() + float(job.get("timeout", DEFAULT_DEADLINE))
        except (KeyError, TypeError, ValueError, AttributeError, OverflowError, CidError) as exc:
            raise Failure(f"malformed job: {exc!r}") from None
        if self.key_source not in ("secret-store", "host-test-hook"):
            raise Failure(f"malformed job: unknown key_source {self.key_source!r}")
        if len(self.nonce) != 32 or not 1 <= self.max_requests <= 1e6 or not 0 < self.deadline - time.monotonic() < 1e9:
            raise Failure("malformed job: nonce must be 32 bytes, max_requests 1..1e6, timeout 0..1e9 s (not NaN)")
        self.manifest = parse_manifest(self.manifest_bytes)

    # ---- 2. attestation
    def get_quote(self, report_data: bytes) -> bytes:
        if self.quote_source == "dev-attestation":
            from enclave.quotes.dev_attestation import DevAttestationQuoteSource

            return DevAttestationQuoteSource(self.attestation_dir).get_quote(report_data)
        _, reply = self.chan.request({"op": "quote", "report_data": report_data.hex()}, REPLY_TIMEOUT)
        try:
            quote = base64.b64decode(reply["quote"], validate=True)
            if layout.parse(quote).report_data != report_data:
                raise Failure("host returned a quote over other report data")
        except (KeyError, TypeError, ValueError, layout.QuoteFormatError) as exc:
            raise Failure(f"host returned no valid quote: {exc}") from None
        return quote

    def attest(self) -> None:
        t0 = time.perf_counter()
        self.key = ratls.new_key()
        self.cert_der, quote = ratls.make_evidence(self.key, self.nonce, self.get_quote)
        self.mrenclave = layout.parse(quote).mr_enclave.hex()
        t1 = time.perf_counter()
        self.tls_ctx = tls.server_context(self.key, self.cert_der, self.scratch)
        t2 = time.perf_counter()
        self.chan.send({"op": "evidence", "cert": _b64(self.cert_der), "quote": _b64(quote),
                        "mrenclave": self.mrenclave,
                        "timing": {"evidence_ms": (t1 - t0) * 1e3, "tls_ms": (t2 - t1) * 1e3}})

    # ---- 3. the AI
    def ai_thread(self, keys: KeyProvider) -> None:
        """Prepare the AI, then run every request: one long-lived thread keeps the AI's
        thread-local state warm (onnxruntime's first run on a new thread is ~5x slower)."""
        try:
            self._prepare(keys)
            self.chan.send({"op": "ai_ready"})
            self.ai_ready.set()
        except Exception as exc:  # noqa: BLE001 - any failure here ends the job
            self.chan.post(("fatal", f"{type(exc).__name__}: {exc}"))
            return
        while True:
            data, box = self.work.get()
            try:
                box.put((True, self.runner(data)))
            except Exception as exc:  # noqa: BLE001 - handed to the request that caused it
                box.put((False, exc))

    def _prepare(self, keys: KeyProvider) -> None:
        kind, st = self.chan.request({"op": "fetch_ai"}, REPLY_TIMEOUT)
        if kind != "stream" or st.info.get("kind") != "ai":
            raise Failure("host answered fetch_ai without an ai stream")
        pkg = self.scratch / "ai.pkg"

        def chunks():
            while (chunk := st.recv(STREAM_TIMEOUT)) is not None:
                f.write(chunk)
                yield chunk
            if st.closed_reason:
                raise Failure(f"host could not supply the AI: {st.closed_reason}")

        with open(pkg, "wb") as f:
            cid = cid_of_chunks(chunks())
        if Cid.decode(cid) != self.cid:
            raise Failure(f"AI CID mismatch: the host's bytes hash to {cid}, the job names {self.ai_cid}; "
                          "refusing the AI")
        key = keys.get_key(KeyContext(self.request_id, self.ai_cid, self.key, self.cert_der))
        ai_dir = self.scratch / "ai"
        try:
            with open(pkg, "rb") as f:
                public, encrypted = ai_object.split(iter(lambda: f.read(1 << 20), b""))
                if public != self.manifest_bytes:
                    raise Failure("the AI object's public manifest differs from the job's (measured) manifest")
                open_package(encrypted, bytes(key), ai_dir)
        except (PackageError, ai_object.AiObjectError) as exc:
            raise Failure(f"cannot decrypt the AI: {exc}") from None
        finally:
            key[:] = bytes(len(key))  # wipe (Python may hold other copies; this is what we can do)
            del key
        if (ai_dir / "ai.toml").read_bytes() != self.manifest_bytes:
            raise Failure("the package's ai.toml differs from the job's (measured) manifest")
        check_files(ai_dir, self.manifest)
        self.runner = runners.load(self.manifest, ai_dir)

    # ---- 4. requests
    def serve(self, st) -> None:
        conn = tls.TlsConn(self.tls_ctx, st, STREAM_TIMEOUT)
        ok, answered = False, False  # a stream that ends before its input is not a request
        try:
            conn.handshake()
            (n,) = tls.REQ_HEADER.unpack(conn.read_exact(tls.REQ_HEADER.size))
            if n > MAX_INPUT:
                conn.write(tls.encode_response({"status": "error", "error": f"input over {MAX_INPUT} bytes"}))
                return
            data = conn.read_exact(n)
            with self.slot_lock:  # claim one of the job's request slots
                answered = self.claimed < self.max_requests
                self.claimed += answered
            if not answered:
                conn.write(tls.encode_response({"status": "error", "error": "this enclave has no requests left"}))
                return
            t0 = time.perf_counter()
            box: queue.Queue = queue.Queue(1)
            self.work.put((data, box))
            try:
                ok, result = box.get(timeout=max(0.0, self.deadline - time.monotonic()))
            except queue.Empty:
                raise Failure("no result before the job deadline") from None
            if not ok:
                why = f"bad request: {result}" if isinstance(result, runners.BadRequest) else \
                    f"AI failed: {type(result).__name__}: {result}"
                conn.write(tls.encode_response({"status": "error", "error": why}))  # to the consumer only
                return
            output, infer_s = result
            receipt = {"v": 1, "request_id": self.request_id, "ai_cid": self.ai_cid, "mrenclave": self.mrenclave,
                       "input_sha256": hashlib.sha256(data).hexdigest(),
                       "output_sha256": hashlib.sha256(output).hexdigest()}
            sig = self.key.sign(tls.canonical(receipt), ec.ECDSA(hashes.SHA256()))
            timing = {"infer_ms": infer_s * 1e3, "total_ms": (time.perf_counter() - t0) * 1e3}
            conn.write(tls.encode_response({"status": "ok", "receipt": receipt, "signature": _b64(sig),
                                            "timing": timing}, output))
            ok = True
        except (ChannelError, Failure) as exc:
            print(f"enclave: stream {st.id}: {exc}", file=sys.stderr)
        finally:
            conn.close()
            self.chan.post(("served", {"stream": st.id, "ok": ok, "answered": answered}))

    def loop(self) -> None:
        while True:
            left = self.deadline - time.monotonic()
            if left <= 0:
                raise Failure("job deadline passed")
            try:
                kind, item = self.chan.next_event(min(left, 1.0))
            except ChannelError:
                if self.chan.error:
                    raise
                continue  # just the 1 s tick
            if kind == "fatal":
                raise Failure(item)
            if kind == "served":
                self.active -= 1
                self.served += item["answered"]
                self.chan.send({"op": "served", **item})
                if self.served >= self.max_requests:
                    self.chan.send({"op": "bye", "served": self.served})
                    return
            elif kind == "stream":
                if item.info.get("kind") != "tls" or self.active >= MAX_STREAMS:
                    item.close("refused: not a tls stream, or too many at once")
                    continue
                self.active += 1
                threading.Thread(target=self.serve, args=(item,), daemon=True).start()
            elif item.get("op") == "shutdown":
                self.chan.send({"op": "bye", "served": self.served})
                return
            else:
                raise Failure(f"unexpected control message {item.get('op')!r}")

    def run(self) -> None:
        self.read_job()
        self.attest()
        keys: KeyProvider = (HostTestHookKeyProvider(self.chan, REPLY_TIMEOUT) if self.key_source == "host-test-hook"
                             else SecretStoreKeyProvider(self.chan, ACL_TIMEOUT, self.secrets_peers))
        threading.Thread(target=self.ai_thread, args=(keys,), name="ai", daemon=True).start()
        self.loop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m enclave.runtime")
    p.add_argument("--socket", required=True)
    p.add_argument("--quote-source", choices=("sim-host", "dev-attestation"), default="sim-host")
    p.add_argument("--attestation-dir", default="/dev/attestation")
    p.add_argument("--scratch", help="directory for the private working dir (default: the temp dir)")
    args = p.parse_args(argv)
    sys.dont_write_bytecode = True
    address = os.environ.get(args.socket[4:], "") if args.socket.startswith("env:") else args.socket  # Gramine
    try:
        chan = Channel.connect(address)
    except (OSError, ValueError) as exc:
        print(f"enclave: cannot connect to {address!r}: {exc}", file=sys.stderr)
        return 1
    scratch = Path(tempfile.mkdtemp(prefix="ofnode-enclave-", dir=args.scratch))
    try:
        Runtime(chan, scratch, args.quote_source, args.attestation_dir).run()
        return 0
    except (Failure, ChannelError, ManifestError, PackageError, QuoteSourceError, KeyUnavailable) as exc:
        msg = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - report anything, never hang
        msg = f"internal error: {type(exc).__name__}: {exc}"
    finally:
        shutil.rmtree(scratch, ignore_errors=True)  # the decrypted AI never outlives the job
    try:
        chan.send({"op": "error", "error": msg[:4000]})
    except ChannelError:
        pass
    chan.sock.close()
    print(f"enclave: {msg}", file=sys.stderr)
    return 1
