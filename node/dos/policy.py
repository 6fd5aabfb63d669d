"""The network's attestation policy (genesis ``[policy]``) applied to a verified quote.

Each rule yields one :class:`Check` {name, ok, detail}; the verifier lists
them in a fixed order after ``parse`` and ``signature``:

``tcb_status``        the TCB status is in ``tcb_statuses`` (accepted as is) or
                      in ``tcb_statuses_with_advisories``
``advisories``        for a status of the second kind, every advisory id is in
                      ``advisories_allowed``
``debug``             the DEBUG attribute is clear, unless ``allow_debug``
``mrenclave``         MRENCLAVE is listed (an empty list allows any)
``mrsigner``          MRSIGNER is listed (an empty list allows any)
``isv_svn``           ISV SVN >= ``min_isv_svn``
``sim_root_allowed``  the trust anchor is Intel's SGX root CA, or the sim root
                      CA that the genesis names (``sim_root_ca``); a production
                      genesis names none, so sim quotes fail there
``report_data``       report_data == the expected value: SHA-256(enclave key
                      SPKI DER || this request's nonce) || 32 zero bytes

With ``policy=None`` (``ofnode attest verify`` without ``--policy``) the
policy checks report what the quote says and pass, except ``debug``: DCAP
verification itself refuses debug enclaves.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Sequence

from enclave.quotes import layout

from ..genesis import Policy

__all__ = ["Check", "INTEL_ROOT_CA_SHA256", "is_intel_root", "expected_report_data", "evaluate_policy", "choose_root"]

#: SHA-256 of the DER of Intel's "Intel SGX Root CA" certificate (the anchor dcap-qvl builds in).
INTEL_ROOT_CA_SHA256 = "44a0196b2b99f889b8e149e95b807a350e7424964399e885a7cbb8ccfab674d3"


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail}


def is_intel_root(der: bytes | None) -> bool:
    return der is None or hashlib.sha256(der).hexdigest() == INTEL_ROOT_CA_SHA256


def expected_report_data(enclave_key_spki: bytes, nonce: bytes) -> bytes:
    """The report data an enclave must put in its quote: SHA-256(SPKI DER || nonce) || 32 zero bytes."""
    return hashlib.sha256(bytes(enclave_key_spki) + bytes(nonce)).digest() + bytes(32)


def choose_root(collateral_root_der: bytes, policy: Policy | None) -> bytes | None:
    """The trust anchor to verify with: None (Intel's built-in root) for Intel collateral,
    else the collateral's own root, which ``sim_root_allowed`` then judges."""
    if is_intel_root(collateral_root_der):
        return None
    return collateral_root_der


def _listed(value: bytes, allowed: Sequence[str], what: str) -> Check:
    name = what.lower()
    if not allowed:
        return Check(name, True, f"{value.hex()} (policy lists no {what}: any accepted)")
    if value.hex() in allowed:
        return Check(name, True, f"{value.hex()} is allowed")
    return Check(name, False, f"{what} {value.hex()} is not in the policy's {len(allowed)} allowed value(s)")


def evaluate_policy(policy: Policy | None, *, report: layout.ReportBody, status: str | None,
                    advisories: Sequence[str], status_note: str, root_ca_der: bytes | None,
                    expected: bytes | None) -> list[Check]:
    """The policy checks, in order (see the module docstring)."""
    checks: list[Check] = []
    adv = ", ".join(advisories) or "none"
    # tcb_status and advisories
    if status is None:
        checks.append(Check("tcb_status", False, f"no TCB status: {status_note}"))
        checks.append(Check("advisories", False, "not evaluated: no TCB status"))
    elif policy is None:
        checks.append(Check("tcb_status", True, f"{status} (no policy: not judged)"))
        checks.append(Check("advisories", True, f"{adv} (no policy: not judged)"))
    elif status in policy.tcb_statuses:
        checks.append(Check("tcb_status", True, f"{status} is accepted"))
        checks.append(Check("advisories", True, f"{adv} (accepted with status {status})"))
    elif status in policy.tcb_statuses_with_advisories:
        checks.append(Check("tcb_status", True, f"{status} is accepted if every advisory is allowed"))
        bad = [a for a in advisories if a not in policy.advisories_allowed]
        if bad:
            checks.append(Check("advisories", False, f"advisory {', '.join(bad)} not in advisories_allowed"))
        else:
            checks.append(Check("advisories", True, f"{adv}: all allowed"))
    else:
        accepted = ", ".join(tuple(policy.tcb_statuses) + tuple(policy.tcb_statuses_with_advisories)) or "none"
        checks.append(Check("tcb_status", False, f"TCB status {status} is not accepted (accepted: {accepted})"))
        checks.append(Check("advisories", False, f"{adv} (not evaluated: status refused)"))
    # debug
    allow_debug = policy.allow_debug if policy is not None else False
    if not report.debug:
        checks.append(Check("debug", True, "production enclave (DEBUG attribute clear)"))
    elif allow_debug:
        checks.append(Check("debug", True, "DEBUG enclave, allowed by the policy (allow_debug)"))
    else:
        checks.append(Check("debug", False, "DEBUG enclave: the host can read its memory; the policy forbids it"))
    # measurement
    if policy is None:
        checks.append(Check("mrenclave", True, f"{report.mr_enclave.hex()} (no policy)"))
        checks.append(Check("mrsigner", True, f"{report.mr_signer.hex()} (no policy)"))
        checks.append(Check("isv_svn", True, f"{report.isv_svn} (no policy)"))
    else:
        checks.append(_listed(report.mr_enclave, policy.mrenclave, "MRENCLAVE"))
        checks.append(_listed(report.mr_signer, policy.mrsigner, "MRSIGNER"))
        if report.isv_svn >= policy.min_isv_svn:
            checks.append(Check("isv_svn", True, f"{report.isv_svn} >= {policy.min_isv_svn}"))
        else:
            checks.append(Check("isv_svn", False, f"ISV SVN {report.isv_svn} is below the policy minimum {policy.min_isv_svn}"))
    # trust anchor
    if is_intel_root(root_ca_der):
        checks.append(Check("sim_root_allowed", True, "Intel SGX root CA"))
    else:
        fp = hashlib.sha256(root_ca_der).hexdigest()[:16]  # type: ignore[arg-type]
        if policy is None:
            checks.append(Check("sim_root_allowed", True, f"root CA {fp}... given by the caller (no policy)"))
        elif policy.sim_root_ca and root_ca_der == policy.sim_root_ca:
            checks.append(Check("sim_root_allowed", True, f"sim root CA {fp}... named by the genesis (testnet: no security)"))
        elif policy.sim_root_ca:
            checks.append(Check("sim_root_allowed", False, f"root CA {fp}... is not the sim root the genesis names"))
        else:
            checks.append(Check("sim_root_allowed", False, f"root CA {fp}... is not Intel's and the genesis names no sim root"))
    # report data binding
    if expected is None:
        checks.append(Check("report_data", True, "skipped: no expected report data (no enclave key/nonce given)"))
    elif report.report_data == bytes(expected):
        checks.append(Check("report_data", True, "binds this enclave key and request nonce"))
    else:
        checks.append(Check("report_data", False, "report_data != SHA-256(enclave key || request nonce) || 0*32: "
                                                  "the quote is for another key or another request (replay?)"))
    return checks
