"""`ofnode attest`: verify an SGX DCAP quote offline, and import collateral.

    ofnode attest verify QUOTE --collateral FILE [--now EPOCH] [--root-ca DER]
                         [--policy GENESIS] [--report-data HEX] [--json]
    ofnode attest import-collateral FILE [--data-dir DIR]

``verify`` prints the verdict and every check (node/dos/verifier.py). Exit
status: 0 when the quote's signatures and collateral verify (the TCB status is
printed, whatever it is; with ``--policy`` the genesis policy must accept the
quote too), 1 when they do not, 2 on unusable input (a missing or unreadable
file, bytes that are not a DCAP v3 quote, collateral that is not the
``QuoteCollateralV3`` JSON, a root CA that is not a certificate, a bad genesis).

``--root-ca`` (DER or PEM) replaces Intel's SGX root CA as the trust anchor
(sim networks: the genesis' sim root). With ``--policy`` and no ``--root-ca``
the anchor is the one the collateral roots in, and the policy decides whether
it is acceptable (``sim_root_allowed``), exactly as on a DOS peer.

``import-collateral`` validates a collateral file and stores it in the node's
collateral cache (``<data dir>/collateral/<ca>-<FMSPC>.json``), for
networks without access to a PCCS. A running DOS node reads the cache at start.

Hooked into the main CLI with ``add_attest_parser(subparsers, common)``; also
runnable alone: ``python -m node.cli.attest verify ...``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAIL, EXIT_USAGE = 0, 1, 2

__all__ = ["add_attest_parser", "cmd_attest_verify", "cmd_attest_import", "main"]


class _Unusable(Exception):
    pass


def _read(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _Unusable(f"{what} {path}: {e.strerror or e}") from None


def _root_der(raw: bytes, path: str) -> bytes:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding

    try:
        if raw.lstrip().startswith(b"-----BEGIN"):
            return x509.load_pem_x509_certificate(raw).public_bytes(Encoding.DER)
        return x509.load_der_x509_certificate(raw).public_bytes(Encoding.DER)
    except ValueError:
        raise _Unusable(f"root CA {path}: not an X.509 certificate (DER or PEM)") from None


def _err(msg: str) -> None:
    sys.stderr.write(f"ofnode: {msg}\n")


def cmd_attest_verify(args: argparse.Namespace) -> int:
    from enclave.quotes import layout

    from ..dos.collateral import CollateralError, parse_collateral
    from ..dos.policy import choose_root
    from ..dos.verifier import verify_evidence
    from ..genesis import GenesisError, load_genesis

    as_json = bool(getattr(args, "json", False))
    try:
        quote = _read(args.quote, "quote")
        try:
            parsed = layout.parse(quote)
        except layout.QuoteFormatError as e:
            raise _Unusable(f"{args.quote} is not a DCAP v3 SGX quote: {e}") from None
        try:
            collateral = parse_collateral(_read(args.collateral, "collateral"))
        except CollateralError as e:
            raise _Unusable(f"collateral {args.collateral}: {e}") from None
        policy = None
        if args.policy:
            try:
                policy = load_genesis(args.policy).policy
            except GenesisError as e:
                raise _Unusable(str(e)) from None
        if args.root_ca:
            root = _root_der(_read(args.root_ca, "root CA"), args.root_ca)
        elif policy is not None:
            root = choose_root(collateral.root_der, policy)
        else:
            root = None
        expected = None
        if args.report_data:
            try:
                expected = bytes.fromhex(args.report_data)
            except ValueError:
                raise _Unusable("--report-data: not hex") from None
            if len(expected) != 64:
                raise _Unusable("--report-data: must be 64 bytes")
    except _Unusable as e:
        if as_json:
            json.dump({"ok": False, "error": str(e), "exit_code": EXIT_USAGE}, sys.stdout, indent=2)
            sys.stdout.write("\n")
        _err(str(e))
        return EXIT_USAGE
    now = float(args.now) if args.now is not None else time.time()
    v = verify_evidence(quote, collateral=collateral, now=now, root_ca_der=root, policy=policy,
                        expected_report_data=expected, parsed=parsed)
    code = EXIT_OK if v.ok else EXIT_FAIL
    if as_json:
        out: dict[str, Any] = v.to_dict()
        out.update(summary=v.summary(), exit_code=code, now=int(now), policy=bool(policy),
                   collateral=collateral.describe())
        json.dump(out, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return code
    verdict = "VERIFIED" if v.ok else ("REFUSED BY POLICY" if v.verified else "NOT VERIFIED")
    w = sys.stdout.write
    w(f"quote:       {args.quote} ({len(quote)} bytes)\n")
    w(f"verdict:     {verdict}\n")
    if not v.ok:
        w(f"reason:      {v.summary()}\n")
    w(f"TCB status:  {v.status or '-'}\n")
    w(f"advisories:  {', '.join(v.advisories) or '-'}\n")
    w(f"MRENCLAVE:   {v.mrenclave}\nMRSIGNER:    {v.mrsigner}\n")
    w(f"ISV:         prod id {v.isv_prod_id}, svn {v.isv_svn}, debug {'yes' if v.debug else 'no'}\n")
    w(f"collateral:  {collateral.ca} FMSPC {collateral.fmspc}, valid until {collateral.describe()['next_update']}\n")
    w("checks:\n")
    for c in v.checks:
        w(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name:<17} {c.detail}\n")
    return code


def cmd_attest_import(args: argparse.Namespace) -> int:
    from ..config import default_data_dir
    from ..dos.collateral import CollateralCache, CollateralError

    data_dir = Path(args.data_dir) if getattr(args, "data_dir", None) else default_data_dir()
    cache_dir = data_dir / "collateral"  # where node/roles.py keeps the DOS cache
    try:
        c = CollateralCache(cache_dir).import_collateral(args.file)
    except CollateralError as e:
        _err(str(e))
        return EXIT_USAGE
    info = {**c.describe(), "path": str(cache_dir / c.filename)}
    if getattr(args, "json", False):
        json.dump(info, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(f"imported {c.ca} FMSPC {c.fmspc} (valid until {info['next_update']}) into {info['path']}\n")
    return EXIT_OK


def add_attest_parser(subparsers: Any, common: argparse.ArgumentParser) -> None:
    """Add ``attest verify`` and ``attest import-collateral`` to ``ofnode``'s subcommands."""
    a = subparsers.add_parser("attest", parents=[common], help="verify SGX DCAP quotes; import collateral").add_subparsers(
        dest="attest_cmd", metavar="COMMAND", required=True)
    s = a.add_parser("verify", parents=[common], help="verify a DCAP quote against collateral (offline)")
    s.add_argument("quote", metavar="QUOTE", help="raw DCAP quote file")
    s.add_argument("--collateral", required=True, metavar="FILE", help="collateral JSON (QuoteCollateralV3 shape)")
    s.add_argument("--now", type=float, metavar="EPOCH", help="verification time, Unix seconds (default: now)")
    s.add_argument("--root-ca", metavar="DER", help="trust anchor instead of Intel's SGX root CA (DER or PEM)")
    s.add_argument("--policy", metavar="GENESIS", help="also apply this genesis file's attestation policy")
    s.add_argument("--report-data", metavar="HEX", help="expected report data (64 bytes, hex)")
    s.set_defaults(fn=cmd_attest_verify)
    s = a.add_parser("import-collateral", parents=[common], help="store a collateral file in the node's cache")
    s.add_argument("file", metavar="FILE")
    s.set_defaults(fn=cmd_attest_import)


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS, help="node data directory")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")
    p = argparse.ArgumentParser(prog="ofnode", parents=[common])
    add_attest_parser(p.add_subparsers(dest="command", metavar="COMMAND", required=True), common)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for k, v in (("data_dir", None), ("json", False)):
        if not hasattr(args, k):
            setattr(args, k, v)
    try:
        return int(args.fn(args))
    except BrokenPipeError:
        return EXIT_FAIL


if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] != ["attest"]:
        argv = ["attest", *argv]
    sys.exit(main(argv))
