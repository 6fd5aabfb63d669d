"""The verifier and `ofnode attest verify` on Intel's real SGX quote (shared/data/dcap)."""
from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import dcap_qvl
import pytest

from node.cli import attest as attest_cli
from node.dos.collateral import parse_collateral
from node.dos.verifier import verify_evidence
from node.genesis import Policy

from tests.parts import REPO, SHARED, require_part

DATA = SHARED / "data" / "dcap"
QUOTE = DATA / "sgx_quote.bin"
COLLATERAL = DATA / "sgx_quote_collateral.json"
IN_WINDOW = int(dt.datetime(2025, 6, 20, tzinfo=dt.timezone.utc).timestamp())
TODAY = int(dt.datetime(2026, 11, 27, tzinfo=dt.timezone.utc).timestamp())
ADVISORIES = ("INTEL-SA-00289", "INTEL-SA-00615")
STATUS = "ConfigurationAndSWHardeningNeeded"
REPORT_DATA_OFFSET = 48 + 320  # header + report body up to report_data


@pytest.fixture(autouse=True)
def _sample_present() -> None:
    require_part("the real DCAP sample", QUOTE.exists() and COLLATERAL.exists(), f"looked in {DATA}")


@pytest.fixture(scope="module")
def quote() -> bytes:
    return QUOTE.read_bytes()


@pytest.fixture(scope="module")
def collateral():
    return parse_collateral(COLLATERAL.read_bytes())


def names(v) -> list[str]:
    return [c.name for c in v.checks]


def test_inside_the_window_status_and_advisories(quote, collateral):
    v = verify_evidence(quote, collateral=collateral, now=IN_WINDOW)
    assert v.ok and v.verified
    assert v.status == STATUS
    assert v.advisories == ADVISORIES
    assert names(v) == ["parse", "signature", "tcb_status", "advisories", "debug", "mrenclave", "mrsigner",
                        "isv_svn", "sim_root_allowed", "report_data"]
    assert v.check("sim_root_allowed").detail == "Intel SGX root CA"


def test_same_result_as_bare_dcap_qvl(quote, collateral):
    r = dcap_qvl.verify(quote, collateral.obj, IN_WINDOW)
    v = verify_evidence(quote, collateral=collateral.obj, now=IN_WINDOW)  # the raw QuoteCollateralV3 works too
    assert (v.status, list(v.advisories)) == (r.status, list(r.advisory_ids))


def test_today_the_crl_has_expired(quote, collateral):
    v = verify_evidence(quote, collateral=collateral, now=TODAY)
    assert not v.ok and not v.verified and v.status is None
    sig = v.check("signature")
    assert not sig.ok and "CRL expired" in sig.detail and "2026-04-03" in sig.detail
    assert v.summary().startswith("signature: CRL expired")


def test_flipped_report_data_byte_is_rejected(quote, collateral):
    bad = bytearray(quote)
    bad[REPORT_DATA_OFFSET + 5] ^= 0x01
    v = verify_evidence(bytes(bad), collateral=collateral, now=IN_WINDOW)
    assert v.check("parse").ok
    assert not v.ok and not v.check("signature").ok


def test_trailing_bytes_fail_parse_before_anything_else(quote, collateral):
    # dcap-qvl alone accepts this; the verifier must not.
    dcap_qvl.verify(quote + b"junk", collateral.obj, IN_WINDOW)
    v = verify_evidence(quote + b"junk", collateral=collateral, now=IN_WINDOW)
    assert not v.ok and names(v) == ["parse"]


def test_policy_on_the_real_quote(quote, collateral):
    mr = verify_evidence(quote, collateral=collateral, now=IN_WINDOW).mrenclave
    strict = Policy(mrenclave=(mr,))  # only UpToDate
    v = verify_evidence(quote, collateral=collateral, now=IN_WINDOW, policy=strict)
    assert not v.ok and [c.name for c in v.failed] == ["tcb_status", "advisories"]
    partial = Policy(mrenclave=(mr,), tcb_statuses_with_advisories=(STATUS,), advisories_allowed=(ADVISORIES[0],))
    v = verify_evidence(quote, collateral=collateral, now=IN_WINDOW, policy=partial)
    assert [c.name for c in v.failed] == ["advisories"] and ADVISORIES[1] in v.check("advisories").detail
    full = Policy(mrenclave=(mr,), tcb_statuses_with_advisories=(STATUS,), advisories_allowed=ADVISORIES)
    assert verify_evidence(quote, collateral=collateral, now=IN_WINDOW, policy=full).ok
    as_is = Policy(mrenclave=(mr,), tcb_statuses=("UpToDate", STATUS))
    assert verify_evidence(quote, collateral=collateral, now=IN_WINDOW, policy=as_is).ok
    other = Policy(mrenclave=("00" * 32,), tcb_statuses=(STATUS,))
    assert [c.name for c in verify_evidence(quote, collateral=collateral, now=IN_WINDOW, policy=other).failed] == ["mrenclave"]


# -- the CLI ----------------------------------------------------------------------------
def run_cli(capsys, *argv: str) -> tuple[int, str]:
    code = attest_cli.main(["attest", *argv])
    return code, capsys.readouterr().out


def test_cli_in_window(capsys):
    code, out = run_cli(capsys, "verify", str(QUOTE), "--collateral", str(COLLATERAL), "--now", str(IN_WINDOW))
    assert code == 0
    assert STATUS in out and all(a in out for a in ADVISORIES) and "VERIFIED" in out


def test_cli_json(capsys):
    code, out = run_cli(capsys, "verify", str(QUOTE), "--collateral", str(COLLATERAL), "--now", str(IN_WINDOW), "--json")
    doc = json.loads(out)
    assert code == 0 and doc["exit_code"] == 0 and doc["ok"] is True
    assert doc["status"] == STATUS and doc["advisories"] == list(ADVISORIES)
    assert [c["name"] for c in doc["checks"]][:2] == ["parse", "signature"]


def test_cli_today_crl_expired(capsys):
    code, out = run_cli(capsys, "verify", str(QUOTE), "--collateral", str(COLLATERAL), "--now", str(TODAY))
    assert code == 1
    assert "CRL expired" in out


def test_cli_flipped_report_data(capsys, tmp_path):
    bad = bytearray(QUOTE.read_bytes())
    bad[REPORT_DATA_OFFSET] ^= 0x80
    p = tmp_path / "bad.bin"
    p.write_bytes(bytes(bad))
    code, out = run_cli(capsys, "verify", str(p), "--collateral", str(COLLATERAL), "--now", str(IN_WINDOW), "--json")
    assert code == 1 and json.loads(out)["verified"] is False


def test_cli_unusable_input(capsys, tmp_path):
    args = ["--collateral", str(COLLATERAL), "--now", str(IN_WINDOW)]
    assert run_cli(capsys, "verify", str(tmp_path / "missing.bin"), *args)[0] == 2
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\x03\x00" + b"x" * 100)
    assert run_cli(capsys, "verify", str(junk), *args)[0] == 2
    assert run_cli(capsys, "verify", str(COLLATERAL), *args)[0] == 2  # JSON is not a quote
    bad_json = tmp_path / "c.json"
    bad_json.write_text("{not json")
    assert run_cli(capsys, "verify", str(QUOTE), "--collateral", str(bad_json))[0] == 2
    bad_json.write_text(json.dumps({"tcb_info": "{}"}))
    assert run_cli(capsys, "verify", str(QUOTE), "--collateral", str(bad_json))[0] == 2
    assert run_cli(capsys, "verify", str(QUOTE), "--collateral", str(tmp_path / "none.json"))[0] == 2
    assert run_cli(capsys, "verify", str(QUOTE), *args, "--root-ca", str(junk))[0] == 2
    assert run_cli(capsys, "verify", str(QUOTE), *args, "--policy", str(junk))[0] == 2
    assert run_cli(capsys, "verify", str(QUOTE), *args, "--json", "--root-ca", str(tmp_path / "nope"))[0] == 2


def test_cli_with_policy_genesis(capsys, tmp_path):
    from node.genesis import Genesis

    mr = verify_evidence(QUOTE.read_bytes(), collateral=parse_collateral(COLLATERAL.read_bytes()), now=IN_WINDOW).mrenclave
    args = ["verify", str(QUOTE), "--collateral", str(COLLATERAL), "--now", str(IN_WINDOW)]
    g = tmp_path / "genesis.toml"
    Genesis(network_id="n", created="x", dos_peers=(), dos_quorum=1, secrets_peers=(), secrets_threshold=1,
            policy=Policy(mrenclave=(mr,))).save(g)
    code, out = run_cli(capsys, *args, "--policy", str(g))
    assert code == 1 and "REFUSED BY POLICY" in out and "tcb_status" in out
    Genesis(network_id="n", created="x", dos_peers=(), dos_quorum=1, secrets_peers=(), secrets_threshold=1,
            policy=Policy(mrenclave=(mr,), tcb_statuses_with_advisories=(STATUS,), advisories_allowed=ADVISORIES)).save(g)
    assert run_cli(capsys, *args, "--policy", str(g))[0] == 0


def test_cli_as_a_module():
    r = subprocess.run([sys.executable, "-m", "node.cli.attest", "verify", str(QUOTE), "--collateral", str(COLLATERAL),
                        "--now", str(IN_WINDOW), "--json"], cwd=REPO, capture_output=True, timeout=60)
    assert r.returncode == 0, r.stderr.decode()
    assert json.loads(r.stdout)["status"] == STATUS


def test_cli_hooks_into_an_argparse_tree():
    import argparse

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS)
    p = argparse.ArgumentParser(parents=[common])
    attest_cli.add_attest_parser(p.add_subparsers(dest="command", required=True), common)
    args = p.parse_args(["attest", "verify", "q.bin", "--collateral", "c.json", "--json"])
    assert args.fn is attest_cli.cmd_attest_verify and args.json is True


def test_cli_import_collateral(capsys, tmp_path):
    code = attest_cli.main(["attest", "import-collateral", str(COLLATERAL), "--data-dir", str(tmp_path), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert code == 0 and info["fmspc"] == "00A067110000" and info["ca"] == "processor"
    stored = Path(info["path"])
    assert stored.parent == tmp_path / "collateral"
    assert parse_collateral(stored.read_bytes()).doc == parse_collateral(COLLATERAL.read_bytes()).doc
    assert attest_cli.main(["attest", "import-collateral", str(tmp_path / "nope"), "--data-dir", str(tmp_path)]) == 2
