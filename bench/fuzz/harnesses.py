"""One fuzz harness per decoder of outside bytes (issue 8).

Each :class:`Harness` has a ``target(data: bytes) -> None`` that feeds ``data``
to one decoder and lets through only what is a bug: the decoder's documented
rejection (its own exception type) is swallowed; any other exception, a broken
round trip or a failed property is raised. ``seeds()`` builds real, valid
inputs (the seed corpus: mutations of valid inputs reach deep code quickly).

The same registry drives the atheris runner (``bench/fuzz/run.py``) and the
hypothesis tests (``tests/fuzz/``). Nothing here is imported by the node.
"""
from __future__ import annotations

import atexit
import functools
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
NETWORK = "fuzznet"
T0_MS = 1_790_000_000_000  # a fixed "now" so that envelopes and certificates never go stale
NOW_S = int(time.time())  # certificates and collateral are made for this process's "now"
KEY = bytes(range(32))  # the package key the harnesses encrypt seeds with


class Bug(AssertionError):
    """A property a decoder must hold was broken (not a rejection)."""


@dataclass(frozen=True)
class Harness:
    name: str
    decoder: str  # what is fuzzed, for the docs and reports
    rejects: str  # the only exception the decoder may raise
    target: Callable[[bytes], bool]  # True: the decoder accepted the input
    seeds: Callable[[], list[bytes]]


REGISTRY: dict[str, Harness] = {}


def harness(name: str, decoder: str, rejects: str, seeds: Callable[[], list[bytes]]):
    def register(fn: Callable[[bytes], None]) -> Callable[[bytes], None]:
        REGISTRY[name] = Harness(name, decoder, rejects, fn, seeds)
        return fn
    return register


def check(cond: bool, what: str) -> None:
    if not cond:
        raise Bug(what)


# ---------------------------------------------------------------------------
# shared fixtures (built once per process)

@functools.cache
def _ids() -> list[Any]:
    from node.identity import Identity
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    # deterministic keys: seeds are the same in every run
    return [Identity(Ed25519PrivateKey.from_private_bytes(hashlib.sha256(b"fuzz%d" % i).digest())) for i in range(4)]


@functools.cache
def _pki() -> Any:
    from enclave.quotes.sim_pki import SimPki
    from enclave.quotes.sim_qe import SimQuotingEnclave

    pki = SimPki.generate(NETWORK, now=NOW_S - 86400)
    return pki, SimQuotingEnclave(pki, seed=b"fuzz-platform", now=NOW_S - 3600)


MRENCLAVE = hashlib.sha256(b"fuzz enclave").digest()
NONCE = bytes(range(32))


@functools.cache
def _ratls() -> dict[str, Any]:
    from cryptography.hazmat.primitives.asymmetric import ec
    from enclave import ratls

    pki, qe = _pki()
    key = ec.derive_private_key(int.from_bytes(hashlib.sha256(b"fuzz tls key").digest(), "big") >> 8, ec.SECP256R1())
    cert, _ = ratls.make_evidence(key, NONCE, lambda rd: qe.quote(MRENCLAVE, rd))
    spki = ratls.spki_der(key)
    claims = ratls.dice_claims(spki, NONCE)
    dice = ratls.dice_evidence(qe.quote(MRENCLAVE, ratls.dice_report_data(claims)), claims)
    legacy = qe.quote(MRENCLAVE, ratls.report_data(spki, NONCE))
    # "made": the certificate is valid from 5 minutes before it was made, which may be
    # long after this module was imported (a slow run): verify at the time it was made.
    return {"cert": cert, "spki": spki, "dice": dice, "legacy": legacy, "key": key, "made": int(time.time()),
            "collateral": qe.collateral(now=NOW_S), "root": pki.root_cert_der}


def _text(data: bytes) -> str:
    return data.decode("utf-8", "surrogateescape")


def _ai_dirs() -> list[Path]:
    return sorted(p.parent for p in EXAMPLES.glob("*/ai.toml"))


# ---------------------------------------------------------------------------
# gossip envelopes (node/p2p/envelope.py)

def _envelope_seeds() -> list[bytes]:
    from node.p2p.envelope import seal

    a = _ids()[0]
    return [seal(a, NETWORK, "node.note", b"hello", timestamp_ms=T0_MS),
            seal(a, NETWORK, "market.request", b'{"id":"00"}', timestamp_ms=T0_MS - 5000),
            seal(_ids()[1], NETWORK, "node.announce", b"", timestamp_ms=T0_MS + 1000)]


@harness("envelope", "node.p2p.envelope.open_envelope", "EnvelopeRejected", _envelope_seeds)
def envelope(data: bytes) -> bool:
    from node.p2p.envelope import EnvelopeRejected, message_id, open_envelope

    try:
        msg = open_envelope(data, NETWORK, max_bytes=65536, max_age_ms=120_000, max_future_ms=10_000, now=T0_MS)
    except EnvelopeRejected as e:
        check(e.reason in ("oversize", "malformed", "bad_signature", "wrong_network", "stale", "future"), e.reason)
        return False
    check(message_id(data) == msg.id, "message_id differs from the opened envelope's id")
    return True


# ---------------------------------------------------------------------------
# market messages (node/market/messages.py)

def _market_objects() -> list[Any]:
    from node.market import messages as m

    p = [i.peer_id for i in _ids()]
    cid = "bafkreifzjut3te2nhyekklss27nh3k72ysco7y32koao5eei66wof36n5e"
    rid = "ab" * 16
    return [
        m.ExecutionRequest(rid, cid, m.Requirements(cpu=2, memory=1 << 20, tee="sim", backend="sim", max_price=3),
                           "11" * 32, T0_MS, 300),
        m.Offer(rid, "sim", "sim", 1, 4, 1 << 30, ("/ip4/127.0.0.1/tcp/4001",), 2),
        m.Assignment(rid, p[1], 1, T0_MS, (p[2],)),
        m.Failed(rid, "no offer"), m.Retry(rid, p[1], 0), m.Done(rid, True), m.Decline(rid, 0, "manifest refused"),
        *([m.Attested(rid, 0, p[1], "cd" * 32, _acl_entry_dict(), [_acl_sig_dict()])] if hasattr(m, "Attested") else []),
    ]


def _market_seeds() -> list[bytes]:
    from node.market import messages as m

    return [m.encode(o) for o in _market_objects()]


@harness("market", "node.market.messages: decode + every message's parse", "MessageError", _market_seeds)
def market(data: bytes) -> bool:
    from node.market import messages as m

    try:
        d = m.decode(data)
    except m.MessageError:
        return False
    classes = [m.ExecutionRequest, m.Offer, m.Assignment, m.Failed, m.Retry, m.Done, m.Decline]
    if hasattr(m, "Attested"):
        classes.append(m.Attested)
    accepted = False
    for cls in classes:
        try:
            obj = cls.parse(d)
        except m.MessageError:
            continue
        check(cls.parse(m.decode(m.encode(obj))) == obj, f"{cls.__name__} does not round-trip")
        accepted = True
    return accepted


def _announce_seeds() -> list[bytes]:
    return [json.dumps({"name": "node0", "roles": ["provider", "dos"], "addrs": ["/ip4/127.0.0.1/tcp/4001"],
                        "version": "0.1.0", "inventory": {"cpu": 4, "memory": 1 << 30, "tees": ["sim"],
                                                          "backends": ["sim"]}}).encode(),
            json.dumps({"name": "n", "roles": [], "addrs": []}).encode()]


@harness("announce", "node.daemon.parse_announcement (node.announce payloads)", "AnnounceError", _announce_seeds)
def announce(data: bytes) -> bool:
    from node.daemon import AnnounceError, parse_announcement

    try:
        info = parse_announcement(data)
    except AnnounceError:
        return False
    json.dumps(info)  # what the node keeps is plain JSON
    check(len(info["name"]) <= 64 and len(info["addrs"]) <= 16, "announcement limits not applied")
    return True


# ---------------------------------------------------------------------------
# JSON-RPC (node/api/server.py framing + dispatch)

@functools.cache
def _api() -> Any:
    from node.api.server import ApiServer
    from node.metrics import node_metrics

    s = ApiServer(Path("/nonexistent/fuzz.sock"), node_metrics())

    async def echo(text: str = "", n: int = 0) -> dict[str, Any]:
        return {"text": text, "n": n}

    async def slow(progress, steps: int = 1) -> int:
        for i in range(min(int(steps), 3)):
            await progress({"step": i})
        return steps

    async def boom() -> None:
        raise RuntimeError("method failed")

    s.method("echo", echo)
    s.method("slow", slow)
    s.method("boom", boom)
    return s


def _jsonrpc_seeds() -> list[bytes]:
    return [b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"hi","n":2}}',
            b'{"jsonrpc":"2.0","id":"a","method":"slow","params":{"steps":2}}',
            b'[{"jsonrpc":"2.0","id":1,"method":"echo"},{"jsonrpc":"2.0","method":"boom"}]',
            b'{"jsonrpc":"2.0","id":2,"method":"echo","params":null}',
            b'[{"jsonrpc":"2.0","id":null,"method":"rpc.nope","params":[1]},{"jsonrpc":"2.0","id":3,"method":"echo"}]']


@harness("jsonrpc", "node.api.server: one request line (parse, batch, dispatch, reply)", "(a JSON-RPC error reply)",
         _jsonrpc_seeds)
def jsonrpc(data: bytes) -> bool:
    import trio

    out: list[bytes] = []

    async def send(b: bytes) -> None:
        out.append(b)

    async def go() -> None:
        await _api()._answer_line(data, send)

    trio.run(go)
    ok = False
    for line in out:
        check(line.endswith(b"\n") and b"\n" not in line[:-1], "reply is not one line")
        reply = json.loads(line.decode("utf-8"))  # must be strict UTF-8 JSON
        for r in reply if isinstance(reply, list) else [reply]:
            check(isinstance(r, dict) and r.get("jsonrpc") == "2.0", "reply is not a JSON-RPC object")
            ok = ok or "result" in r or r.get("method") == "progress"
    return ok


# ---------------------------------------------------------------------------
# AI manifest, AI object, package (enclave/)

def _manifest_seeds() -> list[bytes]:
    return [(d / "ai.toml").read_bytes() for d in _ai_dirs()]


@harness("ai_manifest", "enclave.ai_manifest.parse_manifest (ai.toml)", "ManifestError", _manifest_seeds)
def ai_manifest(data: bytes) -> bool:
    from enclave.ai_manifest import ManifestError, parse_manifest

    try:
        parse_manifest(data)
    except ManifestError:
        return False
    return True


def _ai_object_seeds() -> list[bytes]:
    from enclave import ai_object

    return [ai_object.header(m) + b"encrypted package" for m in _manifest_seeds()[:2]] + [ai_object.header(b"")]


@harness("ai_object", "enclave.ai_object.split (AI object header)", "AiObjectError", _ai_object_seeds)
def ai_object(data: bytes) -> bool:
    from enclave import ai_object as ao

    results = []
    for step in (len(data) or 1, 7):
        try:
            manifest, tail = ao.split(data[i:i + step] for i in range(0, len(data), step))
        except ao.AiObjectError as e:
            results.append(str(e))
            continue
        rest = b"".join(tail)
        check(ao.header(manifest) + rest == data, "split loses or invents bytes")
        results.append(manifest)
    check(results[0] == results[1], "split depends on how the bytes are chunked")
    return isinstance(results[0], bytes)


@functools.cache
def _package_plain() -> bytes:
    from enclave.package import pack

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "ai"
        (root / "pkg").mkdir(parents=True)
        (root / "ai.toml").write_text('name = "x"\n')
        (root / "pkg" / "m.py").write_text("def run(b):\n    return b\n")
        (root / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(root / "run.sh", 0o755)
        return b"".join(pack(root))


def _decrypt_seeds() -> list[bytes]:
    from enclave.package import encrypt_stream

    return [b"".join(encrypt_stream([_package_plain()], KEY, chunk_size=64)),
            b"".join(encrypt_stream([b"x" * 100], KEY, chunk_size=64)),
            b"".join(encrypt_stream([], KEY, chunk_size=64))]


@harness("package_decrypt", "enclave.package.decrypt_stream (encrypted AI package)", "PackageError", _decrypt_seeds)
def package_decrypt(data: bytes) -> bool:
    from enclave.package import PackageError, decrypt_stream

    try:
        for _ in decrypt_stream(data, KEY):
            pass
    except PackageError:
        return False
    return True


@functools.cache
def _scratch() -> Path:
    given = os.environ.get("OFNODE_FUZZ_SCRATCH")  # run.py's, under its workdir (libFuzzer exits without atexit)
    if given:
        shutil.rmtree(given, ignore_errors=True)
        Path(given).mkdir(parents=True)
        return Path(given)
    path = Path(tempfile.mkdtemp(prefix="ofnode-fuzz-"))
    atexit.register(shutil.rmtree, path, True)
    return path


@harness("package_unpack", "enclave.package.unpack (decrypted AI archive)", "PackageError",
         lambda: [_package_plain()])
def package_unpack(data: bytes) -> bool:
    from enclave.package import PackageError, unpack

    dest = _scratch() / "out"
    try:
        tree = unpack(data, dest, max_bytes=1 << 20, max_files=64)
    except PackageError:
        check(not dest.exists(), "a refused archive left files behind")
        return False
    finally:
        if dest.exists():
            shutil.rmtree(dest)
    check(all(not p.startswith("/") and ".." not in p.split("/") for p in tree), "unsafe path accepted")
    return True


# ---------------------------------------------------------------------------
# quotes and RA-TLS

def _quote_seeds() -> list[bytes]:
    _, qe = _pki()
    return [qe.quote(MRENCLAVE, bytes(64)), qe.quote(MRENCLAVE, bytes(range(64)), debug=True)]


@harness("quote", "enclave.quotes.layout.parse (DCAP v3 quote)", "QuoteFormatError", _quote_seeds)
def quote(data: bytes) -> bool:
    from enclave.quotes import layout

    try:
        q = layout.parse(data)
    except layout.QuoteFormatError:
        return False
    check(q.to_bytes() == data, "quote does not round-trip")
    return True


@harness("ratls_cert", "enclave.ratls_verify.verify_ratls_cert (RA-TLS certificate)", "RaTlsError",
         lambda: [_ratls()["cert"]])
def ratls_cert(data: bytes) -> bool:
    from enclave import ratls_verify as rv

    r = _ratls()
    try:
        ev = rv.verify_ratls_cert(data, expected_mrenclave=MRENCLAVE, nonce=NONCE, root_ca_der=r["root"],
                                  collateral=r["collateral"], now=r["made"])
    except rv.RaTlsError:
        return False
    check(ev.spki_der == r["spki"], "a certificate for another key verified")
    return True


@harness("ratls_dice", "enclave.ratls_verify: TCG DICE evidence (CBOR) of an RA-TLS certificate", "RaTlsError",
         lambda: [_ratls()["dice"]])
def ratls_dice(data: bytes) -> bool:
    from enclave import ratls_verify as rv
    from enclave.quotes import layout

    r = _ratls()
    try:
        rv._verify_dice(data, layout.parse(r["legacy"]), r["spki"], NONCE, r["collateral"], r["root"],
                        NOW_S, ("UpToDate",))
    except rv.RaTlsError:
        return False
    return True


def _response_seeds() -> list[bytes]:
    return [json.dumps({"status": "ok", "output_len": 5, "receipt": {"v": 1}, "signature": "AA=="}).encode(),
            json.dumps({"status": "error", "error": "bad request"}).encode()]


@harness("enclave_response", "enclave.ratls_verify.parse_response_header (the enclave's answer)", "RaTlsError",
         _response_seeds)
def enclave_response(data: bytes) -> bool:
    from enclave import ratls_verify as rv

    try:
        h = rv.parse_response_header(data, max_output=1 << 20)
    except rv.RaTlsError:
        return False
    check(0 <= h["output_len"] <= 1 << 20 and isinstance(h["status"], str), "header fields not checked")
    return True


@functools.cache
def _digits() -> Callable[[bytes], tuple[bytes, float]]:
    from enclave.ai_manifest import load_manifest
    from enclave.runtime import runners

    return runners.load(load_manifest(EXAMPLES / "digits"), EXAMPLES / "digits")


@harness("onnx_input", "enclave.runtime.runners: an onnx AI's JSON input (the digits example)", "BadRequest",
         lambda: [p.read_bytes() for p in sorted((EXAMPLES / "digits" / "samples").glob("*.json"))[:3]])
def onnx_input(data: bytes) -> bool:
    from enclave.runtime.runners import BadRequest

    try:
        out, _ = _digits()(data)
    except BadRequest:
        return False
    check(isinstance(json.loads(out), dict), "output is not a JSON object")
    return True


def _collateral_seeds() -> list[bytes]:
    from node.dos.collateral import COLLATERAL_FIELDS

    _, qe = _pki()
    doc = qe.collateral_dict(now=NOW_S)
    return [json.dumps(doc).encode()] + [bytes([i]) + doc[k].encode() for i, k in enumerate(COLLATERAL_FIELDS)]


@harness("collateral", "node.dos.collateral.parse_collateral (DCAP collateral JSON)", "CollateralError",
         _collateral_seeds)
def collateral(data: bytes) -> bool:
    from node.dos.collateral import COLLATERAL_FIELDS, CollateralError, parse_collateral

    accepted = False
    if data:  # also: the input as the value of one field of real collateral (reaches the certificate parsers)
        field = COLLATERAL_FIELDS[data[0] % len(COLLATERAL_FIELDS)]
        try:
            parse_collateral({**_collateral_doc(), field: data[1:].decode("utf-8", "surrogateescape")})
            accepted = True
        except CollateralError:
            pass
    try:
        parse_collateral(data)
    except CollateralError:
        return accepted
    return True


@functools.cache
def _collateral_doc() -> dict[str, str]:
    _, qe = _pki()
    return qe.collateral_dict(now=NOW_S)


def _pccs_seeds() -> list[bytes]:
    d = _collateral_doc()
    tcb = ('{"tcbInfo":%s,"signature":"%s"}' % (d["tcb_info"], d["tcb_info_signature"])).encode()
    return [tcb, bytes.fromhex(d["pck_crl"]), d["pck_crl"].encode()]


@harness("pccs_response", "node.dos.collateral: PCCS/PCS responses (signed JSON bodies, CRLs)", "CollateralError",
         _pccs_seeds)
def pccs_response(data: bytes) -> bool:
    from node.dos import collateral as c

    accepted = False
    try:
        body, sig = c._signed_body(data.decode("utf-8", "replace"), "tcbInfo", "tcb")
        check(isinstance(json.loads(body), dict | list | str | int | float | bool | None), "member is not JSON")
        accepted = True
    except c.CollateralError:
        pass
    try:
        der = c._crl_der(data, "pckcrl")
        c._crl_next_update(der, "pckcrl")
        accepted = True
    except c.CollateralError:
        pass
    return accepted


# ---------------------------------------------------------------------------
# content addressing: CIDs, dag-pb/UnixFS, Bitswap

def _cid_seeds() -> list[bytes]:
    from enclave.cid import DAG_PB, RAW, Cid

    return [Cid.for_block(RAW, b"x").to_bytes(), Cid.for_block(DAG_PB, b"y").to_bytes(),
            Cid.for_block(DAG_PB, b"y", version=0).to_bytes()]


@harness("cid_bytes", "enclave.cid.Cid.from_bytes (binary CID)", "CidError", _cid_seeds)
def cid_bytes(data: bytes) -> bool:
    from enclave.cid import Cid, CidError

    try:
        c = Cid.from_bytes(data)
    except CidError:
        return False
    check(Cid.from_bytes(c.to_bytes()) == c and Cid.decode(c.encode()) == c, "CID does not round-trip")
    return True


def _cid_text_seeds() -> list[bytes]:
    from enclave.cid import Cid

    return [Cid.from_bytes(b).encode().encode() for b in _cid_seeds()] + [
        b"QmdfTbBqBPQ7VNxZEYEj14VmRuZBkqFbiwReogJgS1zR1n"]


@harness("cid_text", "enclave.cid.Cid.decode (CID strings)", "CidError", _cid_text_seeds)
def cid_text(data: bytes) -> bool:
    from enclave.cid import Cid, CidError

    try:
        c = Cid.decode(_text(data))
    except CidError:
        return False
    check(Cid.decode(c.encode()) == c, "CID string does not round-trip")
    return True


def _dagpb_seeds() -> list[bytes]:
    from enclave.unixfs import import_chunks

    from enclave.cid import DAG_PB, RAW, Cid
    from node.store.unixfs import T_DIRECTORY, T_FILE, PBLink, PBNode, UnixfsData, encode_pbnode, encode_unixfs

    blocks: list[bytes] = []
    import_chunks([bytes(300_000)], put=lambda cid, block: blocks.append(bytes(block)))
    raw, pb = Cid.for_block(RAW, b"leaf"), Cid.for_block(DAG_PB, b"node")
    return [b for b in blocks if len(b) < 4096][:2] + [
        encode_pbnode(PBNode((PBLink(raw, "a", 4), PBLink(pb, None, None)),
                             encode_unixfs(UnixfsData(T_FILE, b"hi", 10, (4, 4))))),
        encode_pbnode(PBNode((PBLink(raw, "x.txt", 4),), encode_unixfs(UnixfsData(T_DIRECTORY)))),
        encode_pbnode(PBNode((), None))]


@harness("dagpb", "node.store.unixfs.decode_pbnode + decode_unixfs (dag-pb / UnixFS blocks)", "UnixfsError",
         _dagpb_seeds)
def dagpb(data: bytes) -> bool:
    from node.store.unixfs import UnixfsError, decode_pbnode, decode_unixfs, encode_pbnode, encode_unixfs

    try:
        node = decode_pbnode(data)
    except UnixfsError:
        node = None
    if node is not None:
        check(decode_pbnode(encode_pbnode(node)) == node, "dag-pb node does not round-trip")
        if node.data is not None:
            try:
                fs = decode_unixfs(node.data)
            except UnixfsError:
                fs = None
            if fs is not None:
                check(decode_unixfs(encode_unixfs(fs)) == fs, "UnixFS data does not round-trip")
    try:
        decode_unixfs(data)
    except UnixfsError:
        pass
    return node is not None


def _bitswap_seeds() -> list[bytes]:
    from enclave.cid import RAW, Cid
    from node.store import bitswap_pb2 as pb
    from node.store.exchange import block_prefix, encode_answer

    c = Cid.for_block(RAW, b"block")
    msg = pb.Message()
    msg.wantlist.full = True
    e = msg.wantlist.entries.add()
    e.block, e.priority, e.wantType, e.sendDontHave = c.to_bytes(), 1, 1, True
    body = msg.SerializeToString()
    ans = encode_answer([(block_prefix(c), b"block")], [(c.to_bytes(), 1)])
    return [body, _strip_varint(ans)]  # decode_message takes the body without its length prefix


def _strip_varint(b: bytes) -> bytes:
    from enclave.cid import decode_uvarint

    _, pos = decode_uvarint(b, 0)
    return b[pos:]


@harness("bitswap", "node.store.exchange.decode_message (Bitswap 1.2 message)", "ProtocolViolation", _bitswap_seeds)
def bitswap(data: bytes) -> bool:
    from node.store.exchange import ProtocolViolation, decode_message

    try:
        decode_message(data)
    except ProtocolViolation:
        return False
    return True


# ---------------------------------------------------------------------------
# DOS and secrets wire messages (node/dos, node/secrets, enclave/secret_client)

def _acl_entry_dict() -> dict[str, Any]:
    from enclave.cid import RAW, Cid

    return {"network_id": NETWORK, "request_id": "ab" * 16, "ai_cid": Cid.for_block(RAW, b"ai").encode(),
            "enclave_key_sha256": hashlib.sha256(_ratls()["spki"]).hexdigest(), "measurement": MRENCLAVE.hex(),
            "consumer": _ids()[2].peer_id, "not_after": NOW_S + 3600}


def _acl_sig_dict() -> dict[str, Any]:
    from node.dos.acl import AclEntry

    return AclEntry.from_dict(_acl_entry_dict()).sign(_ids()[0]).to_dict()


def _dos_seeds() -> list[bytes]:
    import base64
    from enclave import secret_client

    r = _ratls()
    ev = {"request_id": "ab" * 16, "ai_cid": _acl_entry_dict()["ai_cid"], "consumer": _ids()[2].peer_id,
          "nonce": NONCE.hex(), "quote": base64.b64encode(r["legacy"]).decode(),
          "enclave_key_spki": base64.b64encode(r["spki"]).decode(), "not_after": NOW_S + 600}
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.derive_private_key(12345, ec.SECP256R1())
    req = secret_client.build_share_request(_acl_entry_dict(), [_acl_sig_dict()], key,
                                            secret_client.new_hpke_key())
    return [json.dumps(x, separators=(",", ":")).encode() for x in (ev, _acl_entry_dict(), _acl_sig_dict(), req)]


@harness("dos_wire", "node.dos.wire.decode_body + parse_evidence, AclEntry/AclSignature.from_dict, "
                     "parse_share_request", "WireError / AclError", _dos_seeds)
def dos_wire(data: bytes) -> bool:
    from node.dos import wire
    from node.dos.acl import AclEntry, AclError, AclSignature
    from node.dos.service import parse_evidence
    from node.secrets.release import parse_share_request

    try:
        d = wire.decode_body(data)
    except wire.WireError:
        return False
    accepted = False
    for fn, err in ((parse_evidence, wire.WireError), (parse_share_request, wire.WireError),
                    (AclEntry.from_dict, AclError), (AclSignature.from_dict, AclError)):
        try:
            obj = fn(d)
        except err:
            continue
        accepted = True
        if isinstance(obj, (AclEntry, AclSignature)):
            check(type(obj).from_dict(obj.to_dict()) == obj, f"{type(obj).__name__} does not round-trip")
    return accepted


@harness("wire_frame", "node.dos.wire.read_message (length-prefixed stream frame)", "WireError",
         lambda: [__import__("node.dos.wire", fromlist=["encode_frame"]).encode_frame(json.loads(s), 1 << 16)
                  for s in _dos_seeds()[:2]])
def wire_frame(data: bytes) -> bool:
    import trio
    from node.dos import wire

    class Stream:
        def __init__(self) -> None:
            self.pos = 0

        async def read(self, n: int) -> bytes:
            chunk = data[self.pos:self.pos + min(n, 1 + len(data) // 3)]  # in pieces
            self.pos += len(chunk)
            return chunk

    async def go() -> bool:
        try:
            await wire.read_message(Stream(), 1 << 16)
        except wire.WireError:
            return False
        return True

    return trio.run(go)


@functools.cache
def _secrets() -> dict[str, Any]:
    from enclave import secret_client
    from node.genesis import Genesis, Policy
    from node.secrets.audit import AuditLog
    from node.secrets.release import Releaser
    from node.secrets.service import SecretsService
    from node.secrets.shamir import key_check, split_key
    from node.secrets.share_store import ShareStore

    class NoAudit(AuditLog):  # the real one fsyncs a line per decision
        def __init__(self) -> None:
            pass

        def append(self, event: str, **fields: Any) -> dict[str, Any]:
            return {}

    ids = _ids()
    g = Genesis(network_id=NETWORK, created="2026-11-27T00:00:00Z", dos_peers=(ids[0].peer_id, ids[1].peer_id),
                dos_quorum=1, secrets_peers=(ids[3].peer_id, ids[1].peer_id), secrets_threshold=2,
                policy=Policy(mrenclave=(MRENCLAVE.hex(),), sim_root_ca=_ratls()["root"]))
    store = ShareStore(_scratch() / "shares")
    ai_key = bytes(range(100, 132))
    entry = _acl_entry_dict()
    store.deposit(ai_cid=entry["ai_cid"], version=1, index=1, threshold=2, n=2,
                  share=split_key(ai_key, 2, 2)[0].value, key_check=key_check(ai_key), owner="publisher")
    hpke = secret_client.new_hpke_key()
    request = secret_client.build_share_request(entry, [_acl_sig_dict()], _ratls()["key"], hpke)
    releaser = Releaser(ids[3], g, store, NoAudit(), clock=lambda: NOW_S)
    answer = releaser.decide(ids[2].peer_id, request)
    check(answer.get("ok") is True, f"the seed share request is refused: {answer}")
    deposit = {"op": "deposit", "ai_cid": entry["ai_cid"], "version": 2, "index": 1, "threshold": 2, "n": 2,
               "share": split_key(ai_key, 2, 2)[0].value.hex(), "key_check": key_check(ai_key)}
    vault_store = ShareStore(_scratch() / "vault")  # deposits never touch `store`; the revoke seed revokes this one
    vault_store.deposit(ai_cid=_other_cid(), version=1, index=1, threshold=2, n=2,
                        share=split_key(ai_key, 2, 2)[0].value, key_check=key_check(ai_key), owner="publisher")
    vault = SecretsService(ids[3], g, vault_store, NoAudit())
    return {"genesis": g, "releaser": releaser, "vault": vault, "request": request, "answer": answer,
            "hpke": hpke, "entry": entry, "deposit": deposit, "requester": ids[2].peer_id}


def _other_cid() -> str:
    from enclave.cid import RAW, Cid

    return Cid.for_block(RAW, b"another AI").encode()


def _json_seeds(*keys: str) -> Callable[[], list[bytes]]:
    return lambda: [json.dumps(_secrets()[k], separators=(",", ":")).encode() for k in keys]


@harness("secrets_request", "node.secrets.release.Releaser.decide (share requests)", "a refusal (never 'internal')",
         _json_seeds("request"))
def secrets_request(data: bytes) -> bool:
    from node.dos import wire

    try:
        d = wire.decode_body(data)
    except wire.WireError:
        return False
    sec = _secrets()
    ans = sec["releaser"].decide(sec["requester"], d)
    check(ans.get("ok") is True or (ans.get("code") not in (None, "internal") and isinstance(ans.get("error"), str)),
          f"share request answered with {ans}")
    return ans["ok"]


@harness("secrets_deposit", "node.secrets.service.SecretsService.deposit_decision (deposits, revocations)",
         "a refusal (never 'internal')", lambda: [json.dumps(_secrets()["deposit"]).encode(),
                                                  b'{"op":"revoke","ai_cid":"%s"}' % _other_cid().encode()])
def secrets_deposit(data: bytes) -> bool:
    from node.dos import wire

    try:
        d = wire.decode_body(data)
    except wire.WireError:
        return False
    sec = _secrets()
    ans = sec["vault"].deposit_decision("publisher", d)
    check(ans.get("ok") is True or (ans.get("code") not in (None, "internal") and isinstance(ans.get("error"), str)),
          f"deposit answered with {ans}")
    return ans["ok"]


@harness("share_answer", "enclave.secret_client.open_share (a secrets peer's answer, in the enclave)", "ShareError",
         _json_seeds("answer"))
def share_answer(data: bytes) -> bool:
    from enclave import secret_client
    from node.dos import wire

    try:
        d = wire.decode_body(data)
    except wire.WireError:
        return False
    sec = _secrets()
    try:
        secret_client.open_share(d, sec["hpke"], sec["entry"], trusted_peers=sec["genesis"].secrets_peers)
    except secret_client.ShareError:
        return False
    return True


# ---------------------------------------------------------------------------
# the enclave channel (enclave/runtime/channel.py)

def _channel_seeds() -> list[bytes]:
    from enclave.runtime import channel as ch

    return [ch.encode_ctrl({"op": "hello", "v": 1}) + ch.encode(7, ch.OPEN) + ch.encode_data(7, b"abc")
            + ch.encode(7, ch.CLOSE), ch.encode_ctrl({"op": "stop"})]


@harness("channel", "enclave.runtime.channel.FrameParser (host <-> enclave frames)", "ChannelError", _channel_seeds)
def channel(data: bytes) -> bool:
    from enclave.runtime import channel as ch

    whole: list[Any] = []
    try:
        whole = ch.FrameParser().feed(data)
    except ch.ChannelError:
        whole = None  # type: ignore[assignment]
    p, pieces = ch.FrameParser(), []
    try:
        for i in range(0, len(data), 5):
            pieces += p.feed(data[i:i + 5])
    except ch.ChannelError:
        pieces = None  # type: ignore[assignment]
    if whole is not None and pieces is not None:
        check(pieces == whole, "frames depend on how the bytes arrive")
    if whole:
        check(b"".join(ch.encode(f.stream, f.kind, f.payload) for f in whole) == data[:sum(9 + len(f.payload)
                                                                                           for f in whole)],
              "frames do not round-trip")
    try:  # and the input as one control message's payload
        ctrl = data[:ch.MAX_PAYLOAD]
        ch.FrameParser().feed(ch.HEADER.pack(0, ch.CTRL, len(ctrl)) + ctrl)
    except ch.ChannelError:
        pass
    return bool(whole)


def _job_seeds() -> list[bytes]:
    from enclave.cid import RAW, Cid

    return [json.dumps({"op": "job", "request_id": "r1", "nonce": NONCE.hex(), "ai_cid": Cid.for_block(RAW, b"ai").encode(),
                        "manifest": m.decode(), "max_requests": 2, "key_source": "secret-store",
                        "secrets_peers": [i.peer_id for i in _ids()[:2]], "timeout": 30}).encode()
            for m in _manifest_seeds()]


@harness("enclave_job", "enclave.runtime.main.Runtime.read_job (the host's job message, in the enclave)",
         "Failure / ManifestError", _job_seeds)
def enclave_job(data: bytes) -> bool:
    from enclave.ai_manifest import ManifestError
    from enclave.runtime import channel as ch
    from enclave.runtime import main

    try:
        msg = ch.decode_ctrl(data)
    except ch.ChannelError:
        return False

    class Chan:
        def next_event(self, timeout: float) -> tuple[str, dict]:
            return "ctrl", msg

    rt = main.Runtime(Chan(), _scratch(), "sim-host", "/nonexistent")  # type: ignore[arg-type]
    try:
        rt.read_job()
    except (main.Failure, ManifestError):
        return False
    check(len(rt.nonce) == 32 and 1 <= rt.max_requests <= 1_000_000 and rt.deadline < float("inf"),
          "job limits not applied")
    return True


# ---------------------------------------------------------------------------
# genesis and config TOML (operator files)

def _genesis_seeds() -> list[bytes]:
    out = []
    for p in [REPO / "config" / "genesis.template.toml", *REPO.glob("tests/**/genesis*.toml")]:
        if p.is_file():
            out.append(p.read_bytes())
    return out


def _load_from(data: bytes, load: Callable[[Path], Any], name: str) -> Any:
    path = _scratch() / name
    path.write_bytes(data)
    return load(path)


@harness("genesis", "node.genesis.load_genesis (genesis TOML)", "GenesisError", _genesis_seeds)
def genesis(data: bytes) -> bool:
    from node.genesis import GenesisError, load_genesis

    try:
        _load_from(data, load_genesis, "genesis.toml")
    except GenesisError:
        return False
    return True


@harness("config", "node.config.load_config (config.toml)", "ConfigError",
         lambda: [(REPO / "config" / "default.toml").read_bytes(), b'[gossip]\ndegree = 8\n'])
def config(data: bytes) -> bool:
    from node.config import ConfigError, load_config

    try:
        _load_from(data, lambda p: load_config(_scratch(), path=p), "config.toml")
    except ConfigError:
        return False
    return True


# ---------------------------------------------------------------------------
# a harness with a planted bug, to check that the runner catches and saves crashes

if os.environ.get("OFNODE_FUZZ_SELFTEST"):
    @harness("selftest", "a planted bug: any input containing b'BUG'", "nothing", lambda: [b"no bug", b"a BUG"])
    def selftest(data: bytes) -> bool:
        if b"BUG" in data:
            raise KeyError("planted bug")
        return True


def names() -> list[str]:
    return list(REGISTRY)


def get(name: str) -> Harness:
    return REGISTRY[name]
