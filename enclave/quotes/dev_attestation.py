"""Gramine's ``/dev/attestation`` pseudo-files as a QuoteSource.

Inside a Gramine SGX enclave the LibOS exposes attestation as files:

* ``attestation_type`` - read: ``"dcap"`` when DCAP quotes can be made,
  ``"none"`` when the manifest did not enable remote attestation (or the
  enclave runs under ``gramine-direct``), ``"epid"`` for the retired EPID.
* ``user_report_data`` - write exactly 64 bytes: the REPORTDATA to bind.
* ``quote`` - read: a quote over the last REPORTDATA written, made by the
  platform's quoting enclave.

The write-then-read pair is not atomic, so one source serialises its own
callers with a lock, and the quote read back is parsed and checked to carry
the requested REPORTDATA (catching another writer racing us, or a stale
quote). The directory is a constructor argument so tests can point it at a
stand-in directory.

Standard library only: this runs inside the enclave.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from enclave.quotes import layout
from enclave.quotes.source import (
    AttestationUnavailableError,
    QuoteSource,
    QuoteSourceError,
    check_report_data,
)

__all__ = ["DevAttestationQuoteSource", "DEFAULT_DIR"]

DEFAULT_DIR = "/dev/attestation"


class DevAttestationQuoteSource(QuoteSource):
    """Get DCAP quotes through Gramine's ``/dev/attestation`` files."""

    def __init__(self, directory: str | os.PathLike[str] = DEFAULT_DIR) -> None:
        self._dir = Path(directory)
        self._lock = threading.Lock()

    @property
    def directory(self) -> Path:
        return self._dir

    def attestation_type(self) -> str:
        """Return the attestation type Gramine reports (e.g. ``"dcap"``, ``"none"``).

        Raises AttestationUnavailableError when the file cannot be read, which
        means we are not inside Gramine (or it is too old to have the file).
        """
        path = self._dir / "attestation_type"
        try:
            raw = path.read_bytes()
        except OSError as exc:
            raise AttestationUnavailableError(
                f"cannot read {path}: {exc.strerror or exc}; not running inside Gramine with attestation?"
            ) from exc
        return raw.decode("ascii", "replace").strip(" \t\r\n\0")

    def get_quote(self, report_data: bytes) -> bytes:
        """Write ``report_data`` to ``user_report_data``, read back ``quote``, check it.

        Raises ValueError for report data that is not 64 bytes,
        AttestationUnavailableError when the attestation type is not "dcap",
        and QuoteSourceError when the files fail or the quote is malformed or
        carries different report data.
        """
        report_data = check_report_data(report_data)
        kind = self.attestation_type()
        if kind == "none":
            raise AttestationUnavailableError(
                f"{self._dir}/attestation_type is 'none': remote attestation is disabled "
                "(set sgx.remote_attestation = \"dcap\" in the Gramine manifest and run under gramine-sgx)"
            )
        if kind != "dcap":
            raise AttestationUnavailableError(f"{self._dir}/attestation_type is {kind!r}; only 'dcap' is supported")
        with self._lock:
            try:
                with open(self._dir / "user_report_data", "wb", buffering=0) as fh:
                    written = fh.write(report_data)
                if written != len(report_data):
                    raise QuoteSourceError(f"short write to user_report_data: {written} of {len(report_data)} bytes")
                with open(self._dir / "quote", "rb") as fh:
                    quote = fh.read()
            except OSError as exc:
                raise QuoteSourceError(f"/dev/attestation I/O failed: {exc}") from exc
        try:
            parsed = layout.parse(quote)
        except layout.QuoteFormatError as exc:
            raise QuoteSourceError(f"{self._dir}/quote returned a malformed quote: {exc}") from exc
        if parsed.report_data != report_data:
            raise QuoteSourceError("quote carries different report data than was written (concurrent writer?)")
        return quote
