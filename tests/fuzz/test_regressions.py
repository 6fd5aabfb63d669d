"""One test per bug the fuzzers found (docs/fuzzing.md lists them). Each fed the
input that used to escape its decoder as a foreign exception, or, for the API
server, used to take the server down."""
from __future__ import annotations

import base64
import json
import logging
import tomllib
from pathlib import Path

import pytest
import trio

from bench.fuzz import harnesses as H

CRASHES = Path(__file__).with_name("crashes")


# -- JSON-RPC: a lone surrogate echoed back killed the API server --------------------
async def test_lone_surrogate_in_a_request_does_not_kill_the_api_server(tmp_path, caplog) -> None:
    from node.api.server import ApiServer
    from node.metrics import node_metrics

    sock = tmp_path / "s.sock"
    server = ApiServer(sock, node_metrics())

    async def echo(text: str = "") -> dict:
        return {"text": text}

    server.method("echo", echo)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        bad = await trio.open_unix_socket(str(sock))
        await bad.send_all(b'{"jsonrpc":"2.0","id":"\\ud800","method":"nope"}\n'
                           b'{"jsonrpc":"2.0","id":2,"method":"echo","params":{"\\udfff":1}}\n'
                           b'{"jsonrpc":"2.0","id":3,"method":"echo","params":{"text":"\\ud800"}}\n')
        replies: list[dict] = []
        buf = b""
        with trio.fail_after(5):
            while len(replies) < 3:
                buf += await bad.receive_some(4096)
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    replies.append(json.loads(line.decode("utf-8")))
        by_id = {r["id"]: r for r in replies}
        assert by_id["\ud800"]["error"]["code"] == -32601
        assert by_id[2]["error"]["code"] == -32602 and "\udfff" in by_id[2]["error"]["message"]
        assert by_id[3]["result"] == {"text": "\ud800"}
        good = await trio.open_unix_socket(str(sock))  # the server is still there
        await good.send_all(b'{"jsonrpc":"2.0","id":1,"method":"echo","params":{"text":"ok"}}\n')
        with trio.fail_after(5):
            assert json.loads(await good.receive_some(4096))["result"] == {"text": "ok"}
        nursery.cancel_scope.cancel()


def test_jsonrpc_lines_are_utf8_even_with_lone_surrogates() -> None:
    from node.api import jsonrpc

    line = jsonrpc.response("\ud800", {"ok": "é"})
    assert line.endswith(b"\n") and json.loads(line.decode("utf-8"))["id"] == "\ud800"
    assert jsonrpc.response(1, {"ok": "é"}) == '{"jsonrpc":"2.0","id":1,"result":{"ok":"é"}}\n'.encode()


# -- TOML readers: RecursionError, ValueError, UnicodeDecodeError leaked -------------
MANIFEST = (H.EXAMPLES / "digits" / "ai.toml").read_bytes() if (H.EXAMPLES / "digits" / "ai.toml").exists() \
    else H._manifest_seeds()[0]
BAD_TOML = {
    "nested arrays": b"x = " + b"[" * 5000 + b"]" * 5000,
    "nested inline tables": b"x = " + b"{a=" * 3000 + b"1" + b"}" * 3000,
    "deep dotted key": b"[gramine]\n" + b".".join([b"a"] * 3000) + b" = 1",
    "5000-digit integer": b"x = " + b"9" * 5000,
}


@pytest.mark.parametrize("case", sorted(BAD_TOML))
def test_manifest_refuses_pathological_toml(case: str) -> None:
    from enclave.ai_manifest import ManifestError, parse_manifest

    with pytest.raises(ManifestError, match="invalid TOML"):
        parse_manifest(BAD_TOML[case] + b"\n" if case != "deep dotted key" else MANIFEST + b"\n" + BAD_TOML[case])


def test_toml_depth_limit_is_not_in_the_way() -> None:
    from enclave.ai_manifest import MAX_TOML_DEPTH, loads_toml

    ok = "x = " + "[" * (MAX_TOML_DEPTH - 1) + "]" * (MAX_TOML_DEPTH - 1)
    assert loads_toml(ok)["x"] is not None
    with pytest.raises(tomllib.TOMLDecodeError):
        loads_toml("x = " + "[" * (MAX_TOML_DEPTH + 1) + "]" * (MAX_TOML_DEPTH + 1))


@pytest.mark.parametrize("case", [*sorted(BAD_TOML), "not utf-8"])
def test_genesis_and_config_refuse_pathological_toml(tmp_path, case: str) -> None:
    from node.config import ConfigError, load_config
    from node.genesis import GenesisError, load_genesis

    data = BAD_TOML.get(case, b"[network]\nid = \"\xff\"\n")
    (tmp_path / "g.toml").write_bytes(data)
    with pytest.raises(GenesisError, match="g.toml: not"):
        load_genesis(tmp_path / "g.toml")
    (tmp_path / "c.toml").write_bytes(data)
    with pytest.raises(ConfigError, match="c.toml: not"):
        load_config(tmp_path, path=tmp_path / "c.toml")


# -- certificates: cryptography's other exception types leaked ------------------------
def test_ratls_cert_with_unknown_key_algorithm_is_a_certificate_failure() -> None:
    from enclave import ratls_verify as rv

    r = H._ratls()
    ec_public_key = bytes.fromhex("06072a8648ce3d0201")  # OID 1.2.840.10045.2.1
    assert ec_public_key in r["cert"]
    for bad in (r["cert"].replace(ec_public_key, bytes.fromhex("06072a8648ce3d0211"), 1),  # ...2.17: UnsupportedAlgorithm
                r["cert"].replace(bytes.fromhex("a003020102"), bytes.fromhex("a003020112"), 1)):  # X.509 v19
        assert bad != r["cert"]
        with pytest.raises(rv.RaTlsError) as err:
            rv.verify_ratls_cert(bad, expected_mrenclave=H.MRENCLAVE, nonce=H.NONCE, root_ca_der=r["root"],
                                 collateral=r["collateral"], now=H.NOW_S)
        assert err.value.check == "certificate"


def test_evidence_key_on_an_unknown_curve_is_a_wire_error() -> None:
    from node.dos import wire
    from node.dos.service import load_p256_spki, parse_evidence

    spki = H._ratls()["spki"]
    p256 = bytes.fromhex("06082a8648ce3d030107")  # OID 1.2.840.10045.3.1.7
    bad = spki.replace(p256, bytes.fromhex("06082a8648ce3d030109"), 1)
    assert bad != spki
    with pytest.raises(wire.WireError, match="enclave_key_spki"):
        load_p256_spki(bad)
    evidence = json.loads(H._dos_seeds()[0])
    evidence["enclave_key_spki"] = base64.b64encode(bad).decode()
    with pytest.raises(wire.WireError, match="enclave_key_spki"):
        parse_evidence(evidence)


@pytest.mark.parametrize("name", sorted(p.name for p in CRASHES.glob("collateral-*")))
def test_collateral_crash_inputs_are_collateral_errors(name: str) -> None:
    from node.dos.collateral import CollateralError, parse_collateral

    expected = {"collateral-bad-issuer-subject": "pck_crl_issuer_chain: bad issuer subject",
                "collateral-invalid-x509-version": "pck_crl_issuer_chain: not a PEM certificate chain",
                "collateral-invalid-crl-version": "root_ca_crl: not a DER CRL"}[name]
    with pytest.raises(CollateralError, match=expected):
        parse_collateral((CRASHES / name).read_bytes())


def test_pccs_responses_nested_too_deeply_or_with_a_bad_crl_are_collateral_errors() -> None:
    from node.dos import collateral as c

    for text in ('{"tcbInfo":' + "[" * 100_000, '{' + '"a":' * 50_000, '{"tcbInfo":{},"signature":' + "[" * 100_000):
        with pytest.raises(c.CollateralError, match="not valid JSON"):
            c._signed_body(text, "tcbInfo", "tcb")
    crl_v9 = (CRASHES / "collateral-invalid-crl-version").read_bytes()
    der = bytes.fromhex(json.loads(crl_v9)["root_ca_crl"])
    pem = b"-----BEGIN X509 CRL-----\n" + base64.encodebytes(der) + b"-----END X509 CRL-----\n"
    with pytest.raises(c.CollateralError, match="not a PEM CRL"):
        c._crl_der(pem, "rootcacrl")


# -- gossip payloads parsed ad hoc ------------------------------------------------------
def test_deep_announcement_is_an_announce_error() -> None:
    from node.daemon import AnnounceError, parse_announcement

    for payload in (b"[" * 10_000, b'{"name":' + b"[" * 10_000, b'{"name":"n","roles":"dos","addrs":[]}',
                    b'{"name":{"a":1},"roles":[],"addrs":[]}'):
        with pytest.raises(AnnounceError):
            parse_announcement(payload)
    info = parse_announcement(json.dumps({"name": "n" * 100, "roles": ["dos", "king"], "addrs": ["/a", 7],
                                          "inventory": {"cpu": 2**80, "memory": True}}).encode())
    assert info == {"name": "n" * 64, "roles": ["dos"], "addrs": ["/a"], "version": ""}


def test_decline_and_attested_payloads_are_checked_field_by_field() -> None:
    from node.market import messages as m

    rid = "ab" * 16
    with pytest.raises(m.MessageError, match="attempt"):  # int(Infinity) raised OverflowError in the consumer
        m.Decline.parse(m.decode(b'{"request_id":"%s","attempt":Infinity,"reason":""}' % rid.encode()))
    att = json.loads(m.encode(next(o for o in H._market_objects() if isinstance(o, m.Attested))))
    assert m.Attested.parse(att).cert_sha256 == "cd" * 32
    for field, bad in (("cert_sha256", "not hex"), ("attempt", 1.5), ("provider", "me"), ("entry", []),
                       ("signatures", [1]), ("request_id", None)):
        with pytest.raises(m.MessageError, match=field):
            m.Attested.parse({**att, field: bad})


# -- the enclave's response header ----------------------------------------------------------
@pytest.mark.parametrize("raw", [b"[]", b'{"status":"ok","output_len":Infinity}', b'{"status":"ok","output_len":"5"}',
                                 b'{"status":"ok","output_len":-1}', b'{"status":1}', b"\xff", b"[" * 10_000])
def test_enclave_response_header_is_checked(raw: bytes) -> None:
    from enclave import ratls_verify as rv

    with pytest.raises(rv.RaTlsError) as err:
        rv.parse_response_header(raw, max_output=100)
    assert err.value.check == "response"
    assert rv.parse_response_header(b'{"status":"ok","output_len":3,"x":1}')["output_len"] == 3


def test_harness_replays_every_saved_crash_input() -> None:
    logging.disable(logging.CRITICAL)
    try:
        for path in CRASHES.iterdir():
            H.get(path.name.split("-")[0]).target(path.read_bytes())
    finally:
        logging.disable(logging.NOTSET)


# -- the onnx runner's input: deep JSON was "AI failed: RecursionError", not a bad request --
def test_deeply_nested_onnx_input_is_a_bad_request() -> None:
    from enclave.runtime.runners import BadRequest

    run = H._digits()
    for raw in (b"[" * 100_000, b'{"pixels":' + b"[" * 100_000):
        with pytest.raises(BadRequest, match="not JSON"):
            run(raw)
    sample = next((H.EXAMPLES / "digits" / "samples").glob("*.json")).read_bytes()
    assert "label" in json.loads(run(sample)[0])


# -- the host's job message, in the enclave: max_requests Infinity leaked OverflowError; a NaN timeout passed --
@pytest.mark.parametrize("field, bad", [("max_requests", float("inf")), ("timeout", float("nan")),
                                        ("timeout", float("inf")), ("timeout", -1), ("max_requests", 0)])
def test_enclave_job_with_non_finite_numbers_is_malformed(field: str, bad: float) -> None:
    from enclave.runtime import main

    job = {**json.loads(H._job_seeds()[0]), field: bad}

    class Chan:
        def next_event(self, timeout: float) -> tuple[str, dict]:
            return "ctrl", job

    with pytest.raises(main.Failure, match="malformed job"):
        main.Runtime(Chan(), H._scratch(), "sim-host", "/nonexistent").read_job()  # type: ignore[arg-type]


# -- the enclave channel: a deeply nested CTRL payload leaked RecursionError from the frame parser --
def test_deep_control_message_is_a_channel_error() -> None:
    from enclave.runtime import channel as ch

    deep = b"[" * 50_000
    frame = ch.HEADER.pack(0, ch.CTRL, len(deep)) + deep
    with pytest.raises(ch.ChannelError, match="not UTF-8 JSON"):
        ch.FrameParser().feed(frame)
    with pytest.raises(ch.ChannelError, match="not UTF-8 JSON"):
        ch.decode_ctrl(b'{"op":' + deep)
