"""The ``QuoteSource`` interface: where an enclave gets DCAP quotes from.

An enclave proves what it is by handing out a quote whose report_data binds
something it controls (for example a hash of its session public key). The
runtime code only needs "give me a quote over these 64 bytes"; whether the
bytes come from Gramine's ``/dev/attestation`` on real SGX or from the
simulated quoting enclave is a deployment choice, so it hides behind this
small interface.

Standard library only: this file is imported inside the enclave.
"""

from __future__ import annotations

import abc

__all__ = ["QuoteSource", "QuoteSourceError", "AttestationUnavailableError", "REPORT_DATA_LEN", "check_report_data"]

#: SGX REPORTDATA is exactly 64 bytes.
REPORT_DATA_LEN = 64


class QuoteSourceError(RuntimeError):
    """A quote could not be obtained (I/O failure, bad reply, wrong report data)."""


class AttestationUnavailableError(QuoteSourceError):
    """This environment cannot produce DCAP quotes at all (e.g. attestation type "none")."""


def check_report_data(report_data: bytes) -> bytes:
    """Return ``report_data`` as bytes, or raise ValueError if it is not exactly 64 bytes.

    Refusing anything else (instead of padding) keeps callers honest about
    what they bind into the quote: a silent pad or cut would let two
    different inputs produce the same quote.
    """
    if not isinstance(report_data, (bytes, bytearray, memoryview)):
        raise TypeError(f"report_data must be bytes, got {type(report_data).__name__}")
    report_data = bytes(report_data)
    if len(report_data) != REPORT_DATA_LEN:
        raise ValueError(f"report_data must be {REPORT_DATA_LEN} bytes, got {len(report_data)}")
    return report_data


class QuoteSource(abc.ABC):
    """Something that turns 64 bytes of report data into a signed DCAP quote."""

    @abc.abstractmethod
    def get_quote(self, report_data: bytes) -> bytes:
        """Return a DCAP v3 quote whose ISV report_data equals ``report_data``.

        ``report_data`` must be exactly 64 bytes (ValueError otherwise). The
        result is the raw quote, ready for ``layout.parse`` and for a DCAP
        verifier. Raises QuoteSourceError when no quote can be produced;
        AttestationUnavailableError when this environment never can.
        """
