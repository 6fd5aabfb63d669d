"""TEST ONLY: the adversaries of the adversarial suite, inside real ofnode daemons.

A daemon started with ``OFNODE_TEST_ADVERSARY=tests.adversarial.malicious``
(refused by ``node/roles.py`` unless the genesis is a testnet's) calls
:func:`install`, which wraps the functions its roles call. Each wrapper reads
``<data dir>/adversary.json`` (``{"attack": NAME, "undercut": bool}``) at the
moment it runs, so a test turns a node into an adversary and back without
restarting it; ``none`` (or no file) is honest behaviour. What the adversary sees, tries and gets is appended to
``<data dir>/adversary.jsonl`` for the test to check.

Threat model: the adversary owns its node and everything the node software
does (the host side of the enclave, the relay, gossip, its identity key).
It does not own the simulated CPU: the sim quoting enclave measures the code
that is really launched, as SGX hardware would (on sim networks the QE's key
is in the genesis, so a provider *could* forge any quote; sim is not
confidential, see docs/backends.md).

Attacks (``attack`` values):

provider  ``tamper_ai``     flip one byte of the encrypted AI fed to the enclave
          ``swap_code``     launch a modified runtime that hands the AI key to the host
          ``replay_quote``  present the quote and key of an earlier job (new nonce, then old nonce)
          ``snoop``         keep every share request and sealed answer it relays and try to
                            get or open shares itself (replay, own key, own HPKE key)
          ``tamper_tls``    flip a bit of the enclave's TLS records on their way to the consumer
          ``forge``         splice the consumer onto a second enclave running the attacker's
                            own AI, and announce that enclave's certificate
dos       ``bad_sign``      sign every ACL entry with the enclave key hash changed
consumer  ``oversize``      announce a 1 TiB input to the enclave
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tempfile
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import trio

STOLEN = "stolen-keys.txt"


class _State:
    data_dir: Path = Path(".")
    last_evidence: Any = None
    evil_root: Path | None = None
    real_open: Any = None


S = _State()


def conf() -> dict[str, Any]:
    try:
        d = json.loads((S.data_dir / "adversary.json").read_text())
        return d if isinstance(d, dict) else {}
    except (OSError, ValueError):
        return {}


def attack() -> str:
    return str(conf().get("attack", "none"))


def note(event: str, **fields: Any) -> None:
    with open(S.data_dir / "adversary.jsonl", "a") as f:
        f.write(json.dumps({"ts": time.time(), "event": event, "attack": attack(), **fields}) + "\n")


def install(roles: Any) -> None:
    S.data_dir = Path(roles.node.data_dir)
    note("installed", roles=list(roles.node.config.roles))
    if roles.provider is not None:
        _install_provider(roles.provider)
    if roles.attest is not None:
        _install_dos()
    _install_consumer()


# -- provider -------------------------------------------------------------------------------------
def _install_provider(provider: Any) -> None:
    from enclave import host as ehost
    from node.provider import service as svc

    # ``undercut``: offer at price 0, so the coordinator picks this provider
    # first (the attacker wants the jobs); honest price otherwise.
    class Undercutting(type(provider)):  # type: ignore[misc]
        @property
        def price(self) -> int:
            return 0 if conf().get("undercut") else self.__dict__["_honest_price"]

        @price.setter
        def price(self, value: int) -> None:
            self.__dict__["_honest_price"] = value

    provider.__dict__["_honest_price"] = provider.__dict__.pop("price")
    provider.__class__ = Undercutting
    real_open, real_request_acl = ehost.open_enclave, svc.request_acl
    S.real_open = real_open
    real_request_shares, real_splice = svc.request_shares, svc.splice
    real_launcher, real_quote_fn = ehost.backend_launcher, ehost.sim_quote_fn
    forged: dict[str, Any] = {}

    def backend_launcher(backend: Any, **limits: Any):
        if attack() != "swap_code":
            return real_launcher(backend, **limits)
        from enclave.backends.base import (
            SCRATCH_DIR,
            SOCKET_DIR,
            EnclaveSpec,
            runtime_code_dirs,
        )

        evil = _evil_code()
        code = tuple(evil / "enclave" if d.name == "enclave" else d for d in runtime_code_dirs())

        async def launch(socket_dir: Path, socket_name: str, scratch_dir: Path, quote_source: str):
            argv = ehost.runtime_argv(f"{SOCKET_DIR}/{socket_name}", quote_source=quote_source, scratch=SCRATCH_DIR)
            spec = EnclaveSpec(argv=argv, code_dirs=code, socket_dir=socket_dir, scratch_dir=scratch_dir,
                               env={"PYTHONPATH": str(evil)}, **limits)
            note("launched swapped code", code=str(evil))
            return await backend.start(spec)

        return launch

    def sim_quote_fn(qe: Any, manifest: bytes, **kw: Any):
        if attack() != "swap_code":
            return real_quote_fn(qe, manifest, **kw)
        # The (simulated) CPU measures the code really loaded: the swapped copy.
        from enclave import measure
        from enclave.quotes.sim_qe import SimQuoteSource

        return SimQuoteSource(qe, measure.mrenclave(manifest, _evil_code() / "enclave"), **kw).get_quote

    @asynccontextmanager
    async def open_enclave(job: Any, *, ai: Any = None, **kw: Any):
        mode = attack()
        if mode == "tamper_ai" and callable(ai):
            inner = ai

            async def ai():
                first = True
                async for chunk in inner():
                    if first and chunk:
                        chunk = bytearray(chunk)
                        chunk[len(chunk) // 2] ^= 0x01
                        chunk, first = bytes(chunk), False
                        note("tampered AI ciphertext", request_id=job.request_id)
                    yield chunk
        async with real_open(job, ai=ai, **kw) as session:
            if mode == "forge":
                async with _forged_enclave(provider, job, kw) as fake:
                    forged[job.request_id] = fake
                    try:
                        yield session
                    finally:
                        forged.pop(job.request_id, None)
            else:
                yield session
            stolen = [m["stolen_key"] for m in session.served if isinstance(m.get("stolen_key"), str)]
            if stolen:
                with open(S.data_dir / STOLEN, "a") as f:  # noqa: ASYNC230 - a tiny append, once
                    f.write("".join(k + "\n" for k in stolen))
                note("stole the AI key", request_id=job.request_id)

    async def request_acl(host: Any, genesis: Any, evidence: Any, **kw: Any):
        from dataclasses import replace

        from node.dos.service import AclQuorumError

        mode, old = attack(), S.last_evidence
        if mode == "replay_quote" and old is not None and old.request_id != evidence.request_id:
            refusals = {}
            for variant, ev in (("old quote, new nonce", replace(evidence, quote=old.quote, enclave_key_spki=old.enclave_key_spki)),
                                ("old quote and old nonce", replace(evidence, quote=old.quote, enclave_key_spki=old.enclave_key_spki,
                                                                    nonce=old.nonce))):
                try:
                    await real_request_acl(host, genesis, ev, **kw)
                    note("replay accepted", variant=variant, request_id=evidence.request_id)
                except AclQuorumError as e:
                    refusals[variant] = e.refusals
                    note("replay refused", variant=variant, request_id=evidence.request_id, error=str(e)[:1500],
                         refusals=e.refusals)
            raise AclQuorumError(f"replayed evidence refused: {json.dumps(refusals)[:1500]}", {})
        grant = await real_request_acl(host, genesis, evidence, **kw)
        S.last_evidence = evidence
        return grant

    async def request_shares(host: Any, genesis: Any, request: dict[str, Any], **kw: Any):
        got = await real_request_shares(host, genesis, request, **kw)
        if attack() == "snoop":
            await _snoop(host, genesis, request, got, real_request_shares)
        return got

    async def splice(consumer: Any, enclave_stream: Any, **kw: Any):
        if attack() == "tamper_tls":
            return await real_splice(_Tampering(consumer), enclave_stream, **kw)
        if attack() == "forge" and forged:
            fake = next(iter(forged.values()))
            note("spliced the consumer onto the forged enclave")
            stream = await fake.open_stream()
            await enclave_stream.aclose()
            return await real_splice(consumer, stream, **kw)
        return await real_splice(consumer, enclave_stream, **kw)

    ehost.open_enclave = open_enclave
    ehost.backend_launcher = backend_launcher
    ehost.sim_quote_fn = sim_quote_fn
    svc.request_acl, svc.request_shares, svc.splice = request_acl, request_shares, splice
    gossip_publish = provider.gossip.publish

    async def publish(type_: str, payload: bytes) -> str:
        if type_ == "market.attested" and attack() == "forge":
            doc = json.loads(payload)
            fake = forged.get(doc["request_id"])
            if fake is not None:  # announce the forged enclave's certificate for the consumer to pin
                doc["cert_sha256"] = hashlib.sha256(fake.evidence.cert_der).hexdigest()
                payload = json.dumps(doc).encode()
                note("announced the forged certificate", request_id=doc["request_id"])
        return await gossip_publish(type_, payload)

    provider.gossip = _GossipProxy(provider.gossip, publish)


class _Tampering:
    """The consumer's side of the splice, flipping one bit of the first record the enclave sends
    after the consumer's second flight (its TLS Finished): the answer, or what precedes it."""

    def __init__(self, consumer: Any) -> None:
        self._c, self._from_consumer, self._done = consumer, 0, False

    async def receive_some(self, n: int | None = None) -> bytes:
        data = await self._c.receive_some(n)
        if data:
            self._from_consumer += 1
        return data

    async def send_all(self, data: bytes) -> None:
        if not self._done and self._from_consumer >= 2 and len(data) > 8:
            b = bytearray(data)
            b[-1] ^= 0x01
            data, self._done = bytes(b), True
            note("flipped a bit of the enclave's TLS record")
        await self._c.send_all(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._c, name)


class _GossipProxy:
    def __init__(self, real: Any, publish: Any) -> None:
        self._real, self.publish = real, publish

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def _evil_code() -> Path:
    """A copy of enclave/ whose runtime hands the rebuilt AI key to the host."""
    if S.evil_root is None:
        import enclave

        root = Path(tempfile.mkdtemp(prefix="ofnode-evil-code-"))
        shutil.copytree(Path(enclave.__file__).resolve().parent, root / "enclave",
                        ignore=shutil.ignore_patterns("__pycache__"))
        keys = root / "enclave" / "runtime" / "keys.py"
        src = keys.read_text()
        honest = "            return sc.rebuild_key(opened)\n"
        assert honest in src, "keys.py changed: update the swapped-code attack"
        keys.write_text(src.replace(honest, (
            "            key = sc.rebuild_key(opened)\n"
            "            self.chan.send({'op': 'served', 'stream': 0, 'ok': True, 'answered': False,"
            " 'stolen_key': bytes(key).hex()})\n"
            "            return key\n")))
        for d in [root, *root.rglob("*")]:
            d.chmod(0o755 if d.is_dir() else 0o644)
        S.evil_root = root
    return S.evil_root


async def _snoop(host: Any, genesis: Any, request: dict[str, Any], got: Any, real_request_shares: Any) -> None:
    """What a provider can do with what it relays: keep it, replay it, re-sign it."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from enclave import secret_client as sc

    answers = list(got.answers.values())
    note("relayed share request", request=request, answers=answers)
    mine = sc.new_hpke_key()
    opened = 0
    for a in answers:  # the sealed shares, opened with the attacker's own HPKE key
        try:
            sc.open_share(a, mine, request["acl_entry"])
            opened += 1
        except Exception as e:  # noqa: BLE001 - the attack's failure is the point
            note("could not open a sealed share", error=f"{type(e).__name__}: {e}"[:300])
    replay = await real_request_shares(host, genesis, request, timeout=5)
    for a in replay.answers.values():
        try:
            sc.open_share(a, mine, request["acl_entry"])
            opened += 1
        except Exception as e:  # noqa: BLE001
            note("could not open a replayed share", error=f"{type(e).__name__}: {e}"[:300])
    own_key = ec.generate_private_key(ec.SECP256R1())
    forged = sc.build_share_request(request["acl_entry"], request["dos_signatures"], own_key, mine)
    own = await real_request_shares(host, genesis, forged, timeout=5)
    note("own enclave key", answers=len(own.answers), refusals=own.refusals)
    resigned = dict(forged, enclave_key_spki=request["enclave_key_spki"])
    res = await real_request_shares(host, genesis, resigned, timeout=5)
    note("enclave key, own HPKE key", answers=len(res.answers), refusals=res.refusals)
    opened += len(own.answers) + len(res.answers)
    note("snoop result", opened=opened,
         spki=base64.b64encode(own_key.public_key().public_bytes(
             serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()[:16])


FORGED_AI = '''def run(data: bytes) -> bytes:
    return b'{"label": 7, "forged": true}'
'''


@asynccontextmanager
async def _forged_enclave(provider: Any, job: Any, kw: dict[str, Any]):
    """A real (honest-code) enclave running the attacker's own AI for the consumer's request."""
    from enclave import host as ehost
    from enclave.ai_manifest import format_files_table, hash_tree
    from node.store.ai_publish import load_ai_key, publish_ai, read_manifest
    from node.store.unixfs import iter_file_blocks

    d = S.data_dir / "forged-ai"
    if not d.exists():
        d.mkdir()
        (d / "forge.py").write_text(FORGED_AI)
        head = ('name = "forged"\nversion = "1.0.0"\nruntime = "python"\nentry = "forge:run"\n\n'
                '[resources]\ncpu = 1\nmemory = "256MiB"\nenclave_size = "512MiB"\nthreads = 1\n\n'
                '[io]\ninput = "bytes"\noutput = "bytes"\n\n')
        (d / "ai.toml").write_text(head + format_files_table(hash_tree(d)))
    blocks = provider.store.blocks
    pub = await trio.to_thread.run_sync(publish_ai, d, blocks, S.data_dir)
    raw, _ = await trio.to_thread.run_sync(read_manifest, pub.cid, blocks)
    from enclave.cid import Cid

    root = Cid.decode(pub.cid)

    async def chunks():
        for c in iter_file_blocks(root, blocks.get):
            yield c

    fake_job = ehost.Job(job.request_id, job.nonce, pub.cid, raw.decode(), max_requests=1)
    async with S.real_open(
            fake_job, quote_fn=ehost.sim_quote_fn(provider._sim_qe(), raw), ai=chunks,
            ai_key=load_ai_key(S.data_dir, pub.cid), launcher=kw["launcher"]) as fake:
        note("forged enclave up", request_id=job.request_id, ai=pub.cid)
        yield fake


# -- dos --------------------------------------------------------------------------------------------
def _install_dos() -> None:
    from node.dos import acl

    real_sign = acl.AclEntry.sign

    def sign(self: Any, identity: Any):
        if attack() != "bad_sign":
            return real_sign(self, identity)
        from dataclasses import replace

        bad = replace(self, enclave_key_sha256=hashlib.sha256(os.urandom(32)).hexdigest())
        note("signed a bad ACL entry", request_id=self.request_id)
        return real_sign(bad, identity)

    acl.AclEntry.sign = sign


# -- consumer -------------------------------------------------------------------------------------------
def _install_consumer() -> None:
    from enclave import ratls_verify

    real_request = ratls_verify.trio_request

    async def trio_request(stream: Any, data: bytes, **kw: Any):
        mode = attack()
        if mode == "oversize":
            note("announced an oversized input")
            await stream.send_all((1 << 40).to_bytes(8, "big") + data[:1024])
            return await _read_response(stream, kw)
        return await real_request(stream, data, **kw)

    async def _read_response(stream: Any, kw: dict[str, Any]):
        from enclave import ratls_verify as rv

        (hlen,) = rv.wire.RESP_HEADER.unpack(await rv._receive_exact(stream, rv.wire.RESP_HEADER.size))
        header = rv.parse_response_header(await rv._receive_exact(stream, hlen))
        return rv.Response(header["status"], await rv._receive_exact(stream, header["output_len"]), header)

    ratls_verify.trio_request = trio_request
