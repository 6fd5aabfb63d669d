"""DCAP quote verification plus the network policy: one :class:`Verdict`.

:func:`verify_evidence` runs, in this order, and records every step as a
:class:`~node.dos.policy.Check`:

``parse``      ``enclave.quotes.layout.parse``: strict DCAP v3 SGX layout, no
               trailing bytes (dcap-qvl alone would accept appended junk).
               Nothing else runs on bytes that fail here.
``signature``  ``dcap_qvl.verify_with_root_ca`` (``dcap_qvl.verify`` for
               Intel's root): quote and QE signatures, PCK chain, CRLs, TCB
               info and QE identity signatures and validity, at ``now``.
               dcap-qvl 0.7 refuses DEBUG enclaves as its very last step,
               after every signature check; such a refusal counts as
               verified signatures, without a TCB status, and the ``debug``
               check reports the DEBUG attribute read from the parsed report.
then the policy checks of :mod:`node.dos.policy` (``tcb_status``,
``advisories``, ``debug``, ``mrenclave``, ``mrsigner``, ``isv_svn``,
``sim_root_allowed``, ``report_data``).

``Verdict.ok`` is true only when every check passed; ``Verdict.verified``
says whether the quote's signatures and collateral verified (the CLI's exit
status without a policy).

:class:`Verifier` is the DOS peer's front end: it finds the quote's
collateral in the :class:`~node.dos.collateral.CollateralCache` (memory only,
never the network), picks the trust anchor the collateral roots in, and
verifies against the genesis policy.
"""
from __future__ import annotations

import datetime as dt
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import dcap_qvl

from enclave.quotes import layout

from ..genesis import Policy
from .collateral import CachedCollateral, CollateralCache, CollateralError
from .policy import Check, choose_root, evaluate_policy

__all__ = ["Check", "Verdict", "verify_evidence", "Verifier", "explain_dcap_error"]

_DEBUG_REFUSAL = "Debug mode is enabled"
# Which failure explains a refusal best (a missing TCB status is a consequence, not a cause).
_HEADLINE_ORDER = ("parse", "signature", "sim_root_allowed", "debug", "report_data", "mrenclave", "mrsigner",
                   "isv_svn", "tcb_status", "advisories")


@dataclass(frozen=True)
class Verdict:
    ok: bool
    verified: bool  # signatures and collateral verified (parse + signature checks)
    status: str | None  # TCB status, when dcap-qvl gave one
    advisories: tuple[str, ...]
    checks: tuple[Check, ...]
    mrenclave: str | None = None
    mrsigner: str | None = None
    isv_prod_id: int | None = None
    isv_svn: int | None = None
    debug: bool | None = None
    report_data: bytes | None = field(default=None, repr=False)

    def check(self, name: str) -> Check | None:
        return next((c for c in self.checks if c.name == name), None)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def summary(self) -> str:
        """One line: why the quote was refused (the most telling failed check), or that it passed."""
        failed = {c.name: c for c in self.failed}
        if not failed:
            return f"accepted (TCB status {self.status})" if self.status else "accepted"
        for name in _HEADLINE_ORDER:
            if name in failed:
                return f"{name}: {failed[name].detail}"
        c = self.failed[0]
        return f"{c.name}: {c.detail}"

    def reasons(self) -> list[str]:
        return [f"{c.name}: {c.detail}" for c in self.failed]

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok, "verified": self.verified, "status": self.status, "advisories": list(self.advisories),
            "mrenclave": self.mrenclave, "mrsigner": self.mrsigner, "isv_prod_id": self.isv_prod_id,
            "isv_svn": self.isv_svn, "debug": self.debug,
            "checks": [c.to_dict() for c in self.checks],
        }


def _iso(ts: int) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def explain_dcap_error(message: str) -> str:
    """dcap-qvl's error text, with the common collateral problems said plainly."""
    text = message.removeprefix("Verification failed: ").strip()
    m = re.search(r"CrlExpired \{ time: UnixTime\((\d+)\), next_update: UnixTime\((\d+)\) \}", text)
    if m:
        return (f"CRL expired: a CRL in the collateral was valid until {_iso(int(m.group(2)))}, "
                f"verification time is {_iso(int(m.group(1)))}; refresh or import newer collateral")
    if "TCBInfo expired" in text:
        return "TCB info expired (past its nextUpdate); refresh or import newer collateral"
    if "issue date is in the future" in text:
        return f"collateral not yet valid at the verification time ({text})"
    if "InvalidCrlSignatureForPublicKey" in text:
        return ("the collateral's CRLs are not signed by the trust anchor "
                "(wrong root CA, or collateral of another network)")
    return " ".join(line.strip() for line in text.splitlines() if line.strip())


def _collateral_obj(collateral: Any) -> Any:
    if isinstance(collateral, CachedCollateral):
        return collateral.obj
    return collateral


def verify_evidence(quote: bytes, *, collateral: Any, now: float, root_ca_der: bytes | None = None,
                    policy: Policy | None = None, expected_report_data: bytes | None = None,
                    parsed: layout.Quote | None = None, collateral_note: str | None = None) -> Verdict:
    """Verify ``quote`` (DCAP + policy); see the module docstring. Never raises for bad input.

    ``collateral``: a ``dcap_qvl.QuoteCollateralV3`` or a :class:`CachedCollateral`
    (None: the signature check fails, "no collateral"). ``root_ca_der``: None
    means Intel's SGX root CA. ``policy``: None checks signatures only.
    """
    checks: list[Check] = []
    try:
        q = parsed if parsed is not None else layout.parse(quote)
    except layout.QuoteFormatError as e:
        checks.append(Check("parse", False, f"not a DCAP v3 SGX quote: {e}"))
        return Verdict(ok=False, verified=False, status=None, advisories=(), checks=tuple(checks))
    checks.append(Check("parse", True, f"DCAP v3 ECDSA-P256 SGX quote, {len(quote)} bytes"))
    now_s = int(now)
    status: str | None = None
    advisories: tuple[str, ...] = ()
    status_note = ""
    obj = _collateral_obj(collateral)
    if obj is None:
        sig_ok, detail = False, collateral_note or "no collateral for this platform"
        status_note = "not verified"
    else:
        try:
            if root_ca_der is None:
                report = dcap_qvl.verify(bytes(quote), obj, now_s)
            else:
                report = dcap_qvl.verify_with_root_ca(bytes(quote), obj, bytes(root_ca_der), now_s)
            status, advisories = str(report.status), tuple(str(a) for a in report.advisory_ids)
            sig_ok, detail = True, "quote, QE report, PCK chain, CRLs, TCB info and QE identity verify"
        except Exception as e:  # dcap-qvl raises ValueError; be safe with anything else
            msg = str(e)
            if _DEBUG_REFUSAL in msg:
                sig_ok = True
                detail = ("quote, QE report, PCK chain, CRLs, TCB info and QE identity verify; "
                          "dcap-qvl 0.7 then refuses DEBUG enclaves, so it gives no TCB status")
                status_note = "dcap-qvl 0.7 gives none for DEBUG enclaves"
            else:
                sig_ok, detail = False, explain_dcap_error(msg)
                status_note = "verification failed"
    checks.append(Check("signature", sig_ok, detail))
    checks += evaluate_policy(policy, report=q.report_body, status=status, advisories=advisories,
                              status_note=status_note, root_ca_der=root_ca_der, expected=expected_report_data)
    body = q.report_body
    return Verdict(ok=all(c.ok for c in checks), verified=sig_ok, status=status, advisories=advisories,
                   checks=tuple(checks), mrenclave=body.mr_enclave.hex(), mrsigner=body.mr_signer.hex(),
                   isv_prod_id=body.isv_prod_id, isv_svn=body.isv_svn, debug=body.debug,
                   report_data=body.report_data)


class Verifier:
    """A DOS peer's verifier: genesis policy + cached collateral; thread-safe, never on the network."""

    def __init__(self, policy: Policy, cache: CollateralCache, *, clock: Callable[[], float] = time.time) -> None:
        self.policy, self.cache, self.clock = policy, cache, clock

    def verify(self, quote: bytes, expected_report_data: bytes | None, *, now: float | None = None) -> Verdict:
        now = self.clock() if now is None else now
        try:
            q = layout.parse(quote)
        except layout.QuoteFormatError:
            return verify_evidence(quote, collateral=None, now=now, policy=self.policy)
        try:
            c = self.cache.for_quote(quote, q)
        except CollateralError as e:
            return verify_evidence(quote, collateral=None, now=now, policy=self.policy,
                                   expected_report_data=expected_report_data, parsed=q, collateral_note=str(e))
        return verify_evidence(quote, collateral=c, now=now, root_ca_der=choose_root(c.root_der, self.policy),
                               policy=self.policy, expected_report_data=expected_report_data, parsed=q)
