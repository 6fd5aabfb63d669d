"""DCAP collateral for the DOS verifier: an on-disk cache, refreshed ahead of
``nextUpdate`` in the background, or imported from a file on offline networks.

Collateral (TCB info, QE identity, CRLs and their issuer chains) depends on
the platform's FMSPC and on the PCK CA that issued its certificate
(``processor`` or ``platform``). The cache holds one file per (CA, FMSPC):

    <dir>/<ca>-<FMSPC>.json     e.g. processor-00A067110000.json

in exactly the JSON shape ``dcap_qvl.QuoteCollateralV3.from_json`` reads (and
``to_json`` writes), the same shape as ``shared/data/dcap/sgx_quote_collateral.json``,
so files can be moved between nodes, inspected and imported as they are.
Every write is atomic (temp file, fsync, rename, fsync dir).

Verification never waits on the network: :meth:`CollateralCache.for_quote`
answers from memory. A quote whose collateral is missing fails at once (and
the key is queued for a background fetch when a PCCS URL is configured).
:meth:`CollateralCache.run` refreshes each entry ``refresh_margin`` seconds
before its earliest ``nextUpdate`` (TCB info, QE identity, both CRLs),
retrying with backoff; a failed refresh leaves the cached copy in place.

Fetching speaks the PCCS/PCS v4 REST API (``/sgx/certification/v4/pckcrl``,
``tcb``, ``qe/identity``, ``rootcacrl``) with urllib in a worker thread. The
signed JSON bodies (``tcbInfo``, ``enclaveIdentity``) are cut out of the
response byte for byte: the signature covers those exact bytes, so they are
never re-serialised.
"""
from __future__ import annotations

import datetime as dt
import json
import logging
import math
import os
import random
import re
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import dcap_qvl
import trio
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave.quotes import layout

from ..fsutil import atomic_write

log = logging.getLogger("ofnode.dos.collateral")

__all__ = [
    "CollateralError", "CachedCollateral", "CollateralCache", "parse_collateral", "fetch_collateral",
    "quote_fmspc_ca", "INTEL_PCS_URL", "COLLATERAL_FIELDS",
]

INTEL_PCS_URL = "https://api.trustedservices.intel.com"
COLLATERAL_FIELDS = (
    "pck_crl_issuer_chain", "root_ca_crl", "pck_crl", "tcb_info_issuer_chain", "tcb_info",
    "tcb_info_signature", "qe_identity_issuer_chain", "qe_identity", "qe_identity_signature",
)
_HEX_FIELDS = {"root_ca_crl", "pck_crl", "tcb_info_signature", "qe_identity_signature"}
_FMSPC = re.compile(r"[0-9A-F]{12}")
CAS = ("processor", "platform")
MAX_COLLATERAL_BYTES = 1 << 20
_MAX_HTTP_BYTES = 1 << 20


class CollateralError(ValueError):
    """Collateral is unusable or could not be fetched; the text says why."""


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(value: Any, what: str) -> float:
    if not isinstance(value, str):
        raise CollateralError(f"{what}: not a timestamp string")
    try:
        return dt.datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise CollateralError(f"{what}: {value!r} is not an ISO 8601 time") from None


def _certs(pem: str, what: str) -> list[x509.Certificate]:
    try:
        certs = x509.load_pem_x509_certificates(pem.encode())
    except (ValueError, x509.InvalidVersion):
        raise CollateralError(f"{what}: not a PEM certificate chain") from None
    if not certs:
        raise CollateralError(f"{what}: empty certificate chain")
    return certs


def _crl_next_update(der: bytes, what: str) -> float:
    try:
        nu = x509.load_der_x509_crl(der).next_update_utc
    except (ValueError, x509.InvalidVersion):
        raise CollateralError(f"{what}: not a DER CRL") from None
    if nu is None:
        raise CollateralError(f"{what}: CRL without nextUpdate")
    return nu.timestamp()


@dataclass(frozen=True)
class CachedCollateral:
    """One validated collateral set, ready for ``dcap_qvl``."""

    fmspc: str  # 12 upper-case hex digits
    ca: str  # "processor" or "platform"
    doc: dict[str, str] = field(repr=False)  # the from_json/to_json shape
    obj: Any = field(repr=False)  # dcap_qvl.QuoteCollateralV3
    issue_date: float = 0.0  # TCB info issueDate
    next_update: float = 0.0  # earliest nextUpdate of TCB info, QE identity and both CRLs
    root_der: bytes = field(default=b"", repr=False)  # root certificate the issuer chains end in

    @property
    def key(self) -> tuple[str, str]:
        return (self.ca, self.fmspc)

    @property
    def filename(self) -> str:
        return f"{self.ca}-{self.fmspc}.json"

    def to_json(self) -> str:
        return json.dumps(self.doc, indent=2) + "\n"

    def describe(self) -> dict[str, Any]:
        return {"fmspc": self.fmspc, "ca": self.ca, "issue_date": _iso(self.issue_date),
                "next_update": _iso(self.next_update)}


def parse_collateral(doc: Any) -> CachedCollateral:
    """Validate a collateral document (dict in ``from_json`` shape, or its JSON text)."""
    if isinstance(doc, (bytes, bytearray)):
        if len(doc) > MAX_COLLATERAL_BYTES:
            raise CollateralError(f"collateral of {len(doc)} bytes exceeds {MAX_COLLATERAL_BYTES}")
        try:
            doc = doc.decode("utf-8")
        except UnicodeDecodeError:
            raise CollateralError("collateral is not UTF-8 JSON") from None
    if isinstance(doc, str):
        try:
            doc = json.loads(doc)
        except (ValueError, RecursionError):
            raise CollateralError("collateral is not JSON") from None
    if not isinstance(doc, dict):
        raise CollateralError("collateral is not a JSON object")
    missing = [k for k in COLLATERAL_FIELDS if k not in doc]
    if missing:
        raise CollateralError(f"collateral lacks {', '.join(missing)}")
    extra = [str(k) for k in doc if k not in COLLATERAL_FIELDS]
    if extra:
        raise CollateralError(f"collateral has unknown field(s) {', '.join(sorted(extra)[:5])}")
    for k in COLLATERAL_FIELDS:
        if not isinstance(doc[k], str):
            raise CollateralError(f"collateral.{k}: not a string")
    raw: dict[str, bytes] = {}
    for k in _HEX_FIELDS:
        try:
            raw[k] = bytes.fromhex(doc[k])
        except ValueError:
            raise CollateralError(f"collateral.{k}: not hex") from None
    try:
        tcb = json.loads(doc["tcb_info"])
        qe = json.loads(doc["qe_identity"])
    except (ValueError, RecursionError):
        raise CollateralError("collateral.tcb_info / qe_identity: not JSON") from None
    if not isinstance(tcb, dict) or not isinstance(qe, dict):
        raise CollateralError("collateral.tcb_info / qe_identity: not JSON objects")
    fmspc = tcb.get("fmspc")
    if not isinstance(fmspc, str) or not _FMSPC.fullmatch(fmspc.upper()):
        raise CollateralError("collateral.tcb_info: no 6-byte fmspc")
    fmspc = fmspc.upper()
    issue = _parse_time(tcb.get("issueDate"), "tcb_info.issueDate")
    next_updates = [
        _parse_time(tcb.get("nextUpdate"), "tcb_info.nextUpdate"),
        _parse_time(qe.get("nextUpdate"), "qe_identity.nextUpdate"),
        _crl_next_update(raw["root_ca_crl"], "collateral.root_ca_crl"),
        _crl_next_update(raw["pck_crl"], "collateral.pck_crl"),
    ]
    pck_issuer = _certs(doc["pck_crl_issuer_chain"], "collateral.pck_crl_issuer_chain")[0]
    try:  # the subject is parsed lazily: a malformed one raises only here
        cn = " ".join(str(a.value) for a in pck_issuer.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME))
    except ValueError as e:
        raise CollateralError(f"collateral.pck_crl_issuer_chain: bad issuer subject ({e})") from None
    if "Processor" in cn:
        ca = "processor"
    elif "Platform" in cn:
        ca = "platform"
    else:
        raise CollateralError(f"collateral.pck_crl_issuer_chain: issuer {cn!r} is neither a Processor nor a Platform CA")
    chain = _certs(doc["tcb_info_issuer_chain"], "collateral.tcb_info_issuer_chain")
    _certs(doc["qe_identity_issuer_chain"], "collateral.qe_identity_issuer_chain")
    root_der = chain[-1].public_bytes(Encoding.DER)
    try:
        obj = dcap_qvl.QuoteCollateralV3.from_json(json.dumps(doc))
    except Exception as e:
        raise CollateralError(f"dcap-qvl does not accept the collateral: {e}") from None
    return CachedCollateral(fmspc=fmspc, ca=ca, doc={k: doc[k] for k in COLLATERAL_FIELDS}, obj=obj,
                            issue_date=issue, next_update=min(next_updates), root_der=root_der)


# -- which collateral a quote needs -----------------------------------------
_fmspc_cache: OrderedDict[bytes, tuple[str, str]] = OrderedDict()
_FMSPC_CACHE_SIZE = 1024


def quote_fmspc_ca(quote: bytes, parsed: layout.Quote | None = None) -> tuple[str, str]:
    """(FMSPC upper-hex, CA) from the quote's PCK certificate; CollateralError if absent.

    Quotes from one platform share their certification data, so the answer is
    memoised by those bytes (parsing the PCK certificate costs ~0.1 ms).
    """
    try:
        q = parsed or layout.parse(quote)
    except layout.QuoteFormatError as e:
        raise CollateralError(f"not a quote: {e}") from None
    key = q.signature.cert_data
    hit = _fmspc_cache.get(key)
    if hit is not None:
        _fmspc_cache.move_to_end(key)
        return hit
    try:
        p = dcap_qvl.parse_quote(bytes(quote))
        fmspc, ca = p.fmspc().upper(), p.ca()
    except Exception as e:
        raise CollateralError(f"cannot read FMSPC/CA from the quote's PCK certificate: {e}") from None
    if not _FMSPC.fullmatch(fmspc) or ca not in CAS:
        raise CollateralError(f"unexpected FMSPC {fmspc!r} / CA {ca!r} in the quote")
    _fmspc_cache[key] = (fmspc, ca)
    if len(_fmspc_cache) > _FMSPC_CACHE_SIZE:
        _fmspc_cache.popitem(last=False)
    return fmspc, ca


# -- fetching from a PCCS / Intel PCS ----------------------------------------
def _raw_members(text: str) -> dict[str, str]:
    """Top-level members of a JSON object, values as their exact source text."""
    dec = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")
    i = ws.match(text, 0).end()  # type: ignore[union-attr]
    if text[i : i + 1] != "{":
        raise CollateralError("response is not a JSON object")
    i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
    out: dict[str, str] = {}
    if text[i : i + 1] == "}":
        return out
    while True:
        try:
            key, i = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            raise CollateralError("response is not valid JSON") from None
        if not isinstance(key, str):
            raise CollateralError("response is not valid JSON")
        i = ws.match(text, i).end()  # type: ignore[union-attr]
        if text[i : i + 1] != ":":
            raise CollateralError("response is not valid JSON")
        i = ws.match(text, i + 1).end()  # type: ignore[union-attr]
        try:
            _, j = dec.raw_decode(text, i)
        except (ValueError, RecursionError):
            raise CollateralError("response is not valid JSON") from None
        out[key] = text[i:j]
        i = ws.match(text, j).end()  # type: ignore[union-attr]
        c = text[i : i + 1]
        i += 1
        if c == "}":
            return out
        if c != ",":
            raise CollateralError("response is not valid JSON")
        i = ws.match(text, i).end()  # type: ignore[union-attr]


def _signed_body(text: str, member: str, what: str) -> tuple[str, str]:
    parts = _raw_members(text)
    if member not in parts or "signature" not in parts:
        raise CollateralError(f"{what}: response lacks {member!r} or 'signature'")
    sig = json.loads(parts["signature"])
    if not isinstance(sig, str):
        raise CollateralError(f"{what}: signature is not a string")
    try:
        bytes.fromhex(sig)
    except ValueError:
        raise CollateralError(f"{what}: signature is not hex") from None
    return parts[member], sig.lower()


def _crl_der(body: bytes, what: str) -> bytes:
    # Only the text forms are stripped: raw DER may well end in a byte that looks like white space.
    text = body.strip()
    if text.startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_crl(text).public_bytes(Encoding.DER)
        except (ValueError, x509.InvalidVersion):
            raise CollateralError(f"{what}: not a PEM CRL") from None
    if re.fullmatch(rb"[0-9a-fA-F]+", text) and len(text) % 2 == 0:
        return bytes.fromhex(text.decode())
    return body


def _base_url(url: str) -> str:
    base = url.strip().rstrip("/")
    for suffix in ("/sgx/certification/v4", "/tdx/certification/v4"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
    return base


def fetch_collateral(pccs_url: str, fmspc: str, ca: str, *, timeout: float = 30.0,
                     verify_tls: bool = True) -> CachedCollateral:
    """Fetch and validate the collateral for (fmspc, ca) from a PCCS or Intel's PCS (blocking).

    ``verify_tls=False`` accepts a local PCCS's self-signed certificate; the
    collateral itself is signed, and dcap-qvl checks those signatures.
    """
    if ca not in CAS or not _FMSPC.fullmatch(fmspc.upper()):
        raise CollateralError(f"bad collateral key {ca}/{fmspc}")
    base = _base_url(pccs_url)
    if not base.startswith(("http://", "https://")):
        raise CollateralError(f"PCCS URL {pccs_url!r} is not http(s)")
    ctx = ssl.create_default_context()
    if not verify_tls:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

    def get(path: str, absolute: bool = False) -> tuple[bytes, Any]:
        url = path if absolute else f"{base}/sgx/certification/v4/{path}"
        req = urllib.request.Request(url, headers={"User-Agent": "ofnode", "Accept": "*/*"})
        try:
            with urllib.request.urlopen(req, timeout=timeout, context=ctx if url.startswith("https") else None) as r:
                body = r.read(_MAX_HTTP_BYTES + 1)
                if len(body) > _MAX_HTTP_BYTES:
                    raise CollateralError(f"{url}: response larger than {_MAX_HTTP_BYTES} bytes")
                return body, r.headers
        except urllib.error.HTTPError as e:
            raise CollateralError(f"{url}: HTTP {e.code} {e.reason}") from None
        except (urllib.error.URLError, OSError, ValueError) as e:
            raise CollateralError(f"{url}: {getattr(e, 'reason', e)}") from None

    def header(headers: Any, *names: str) -> str:
        for n in names:
            v = headers.get(n)
            if v:
                return urllib.parse.unquote(v)
        raise CollateralError(f"response lacks the {names[0]} header")

    fmspc = fmspc.upper()
    body, h = get(f"pckcrl?ca={ca}&encoding=der")
    pck_crl = _crl_der(body, "pckcrl")
    pck_chain = header(h, "SGX-PCK-CRL-Issuer-Chain")
    body, h = get(f"tcb?fmspc={fmspc}")
    tcb_chain = header(h, "SGX-TCB-Info-Issuer-Chain", "TCB-Info-Issuer-Chain")
    tcb_info, tcb_sig = _signed_body(body.decode("utf-8", "replace"), "tcbInfo", "tcb")
    body, h = get("qe/identity?update=standard")
    qe_chain = header(h, "SGX-Enclave-Identity-Issuer-Chain")
    qe_identity, qe_sig = _signed_body(body.decode("utf-8", "replace"), "enclaveIdentity", "qe/identity")
    root_crl: bytes | None = None
    if not base.startswith(INTEL_PCS_URL):
        try:
            root_crl = _crl_der(get("rootcacrl")[0], "rootcacrl")
        except CollateralError as e:
            log.debug("PCCS has no rootcacrl; using the root's CRL distribution point", extra={"error": str(e)})
    if root_crl is None:
        root = _certs(qe_chain, "qe identity issuer chain")[-1]
        try:
            dps = root.extensions.get_extension_for_class(x509.CRLDistributionPoints).value
            url = next(n.value for dp in dps for n in (dp.full_name or []) if isinstance(n, x509.UniformResourceIdentifier))
        except (x509.ExtensionNotFound, StopIteration):
            raise CollateralError("no root CA CRL: the PCCS has none and the root has no CRL distribution point") from None
        root_crl = _crl_der(get(url, absolute=True)[0], "root CA CRL")
    return parse_collateral({
        "pck_crl_issuer_chain": pck_chain, "root_ca_crl": root_crl.hex(), "pck_crl": pck_crl.hex(),
        "tcb_info_issuer_chain": tcb_chain, "tcb_info": tcb_info, "tcb_info_signature": tcb_sig,
        "qe_identity_issuer_chain": qe_chain, "qe_identity": qe_identity, "qe_identity_signature": qe_sig,
    })


# -- the cache ---------------------------------------------------------------
@dataclass
class _Retry:
    failures: int = 0
    next_try: float = 0.0
    last_error: str = ""


class CollateralCache:
    """Collateral by (CA, FMSPC), in memory and on disk under ``directory``.

    ``pccs_url`` (Intel PCS, a local PCCS, or None for offline networks)
    enables background refresh; ``refresh_margin`` is how long before the
    earliest ``nextUpdate`` a refresh is due; ``clock`` returns Unix seconds.
    """

    def __init__(self, directory: str | os.PathLike[str], *, pccs_url: str | None = None,
                 refresh_margin: float = 2 * 86400, retry_min: float = 60.0, retry_max: float = 3600.0,
                 fetch_timeout: float = 30.0, verify_tls: bool = True, clock: Callable[[], float] = time.time,
                 fetch: Callable[..., CachedCollateral] = fetch_collateral) -> None:
        self.directory = Path(directory)
        self.pccs_url = pccs_url
        self.refresh_margin = refresh_margin
        self.retry_min, self.retry_max = retry_min, retry_max
        self.fetch_timeout, self.verify_tls = fetch_timeout, verify_tls
        self.clock = clock
        self._fetch = fetch
        self._entries: dict[tuple[str, str], CachedCollateral] = {}
        self._retry: dict[tuple[str, str], _Retry] = {}
        self._wanted: set[tuple[str, str]] = set()
        self._wake = trio.Event()
        self._token: trio.lowlevel.TrioToken | None = None
        self.refreshed = 0  # successful background fetches (for tests and metrics)
        self.directory.mkdir(parents=True, exist_ok=True)
        self._load()

    # -- disk ----------------------------------------------------------------
    def _load(self) -> None:
        for path in sorted(self.directory.glob("*.json")):
            try:
                c = parse_collateral(path.read_bytes())
            except (CollateralError, OSError) as e:
                log.warning("ignoring unusable collateral file", extra={"path": str(path), "error": str(e)})
                continue
            if path.name != c.filename:
                log.warning("collateral file is misnamed; ignored", extra={"path": str(path), "expected": c.filename})
                continue
            self._entries[c.key] = c

    def put(self, c: CachedCollateral, *, force: bool = False) -> bool:
        """Store ``c`` (atomically); unless ``force``, only if not older than what is cached."""
        old = self._entries.get(c.key)
        if old is not None and not force and c.issue_date < old.issue_date:
            return False
        atomic_write(self.directory / c.filename, c.to_json().encode(), mode=0o644)
        self._entries[c.key] = c
        self._wanted.discard(c.key)
        self._retry.pop(c.key, None)
        return True

    def import_collateral(self, path: str | os.PathLike[str]) -> CachedCollateral:
        """Import a collateral JSON file (``from_json`` shape) for offline networks; replaces what is cached."""
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise CollateralError(f"{path}: {e.strerror or e}") from None
        c = parse_collateral(data)
        self.put(c, force=True)
        return c

    def export(self, ca: str, fmspc: str, path: str | os.PathLike[str]) -> None:
        c = self._entries.get((ca, fmspc.upper()))
        if c is None:
            raise CollateralError(f"no collateral cached for {ca}/{fmspc}")
        atomic_write(path, c.to_json().encode(), mode=0o644)

    # -- lookups (never touch the network) ------------------------------------
    def get(self, ca: str, fmspc: str) -> CachedCollateral | None:
        return self._entries.get((ca, fmspc.upper()))

    def entries(self) -> list[CachedCollateral]:
        return sorted(self._entries.values(), key=lambda c: c.key)

    def for_quote(self, quote: bytes, parsed: layout.Quote | None = None) -> CachedCollateral:
        """The cached collateral for ``quote``; CollateralError (at once) when there is none."""
        fmspc, ca = quote_fmspc_ca(quote, parsed)
        c = self._entries.get((ca, fmspc))
        if c is None:
            hint = "a background fetch is queued" if self.pccs_url else "import it with CollateralCache.import_collateral"
            self.want(ca, fmspc)
            raise CollateralError(f"no collateral cached for FMSPC {fmspc} ({ca} CA); {hint}")
        return c

    def want(self, ca: str, fmspc: str) -> None:
        """Ask the background task to fetch collateral for a key not cached yet."""
        if self.pccs_url and (ca, fmspc) not in self._entries:
            self._wanted.add((ca, fmspc))
            token = self._token
            if token is not None:  # thread-safe wake-up: verification may run in a worker thread
                try:
                    token.run_sync_soon(self._wake_up)
                except trio.RunFinishedError:
                    pass

    def _wake_up(self) -> None:
        self._wake.set()

    # -- refresh ---------------------------------------------------------------
    def due(self, now: float | None = None) -> list[tuple[str, str]]:
        now = self.clock() if now is None else now
        keys = set(self._wanted) | {k for k, c in self._entries.items() if c.next_update - self.refresh_margin <= now}
        return sorted(k for k in keys if self._retry.get(k, _Retry()).next_try <= now)

    def _next_wake(self, now: float) -> float:
        times = [c.next_update - self.refresh_margin for c in self._entries.values()]
        times += [r.next_try for r in self._retry.values()]
        future = [t for t in times if t > now]
        return min(future) - now if future else 3600.0

    async def refresh(self, ca: str, fmspc: str) -> CachedCollateral:
        """Fetch (in a worker thread) and store collateral for one key; raises CollateralError."""
        if not self.pccs_url:
            raise CollateralError("no PCCS URL configured (offline network: import collateral instead)")
        key = (ca, fmspc.upper())
        try:
            c = await trio.to_thread.run_sync(
                lambda: self._fetch(self.pccs_url, fmspc, ca, timeout=self.fetch_timeout, verify_tls=self.verify_tls),
                abandon_on_cancel=True)
            if c.key != key:
                raise CollateralError(f"PCCS answered for {c.ca}/{c.fmspc}, not {ca}/{fmspc}")
        except CollateralError as e:
            r = self._retry.setdefault(key, _Retry())
            r.failures += 1
            delay = min(self.retry_max, self.retry_min * math.pow(2, r.failures - 1)) * random.uniform(0.8, 1.2)
            r.next_try, r.last_error = self.clock() + delay, str(e)
            log.warning("collateral refresh failed", extra={"ca": ca, "fmspc": fmspc, "error": str(e),
                                                             "retry_in_s": round(delay)})
            raise
        stored = await trio.to_thread.run_sync(self.put, c)
        if not stored:
            # The PCCS served something older than what we have: try again later.
            self._retry[key] = _Retry(1, self.clock() + self.retry_min, "PCCS served older collateral")
        else:
            self.refreshed += 1
            log.info("collateral refreshed", extra={"ca": ca, "fmspc": fmspc, "next_update": _iso(c.next_update)})
        return c

    def last_error(self, ca: str, fmspc: str) -> str:
        r = self._retry.get((ca, fmspc.upper()))
        return r.last_error if r else ""

    async def run(self) -> None:
        """Refresh entries before they expire and fetch wanted ones; runs until cancelled."""
        if not self.pccs_url:
            await trio.sleep_forever()
        self._token = trio.lowlevel.current_trio_token()
        while True:
            self._wake = trio.Event()
            for ca, fmspc in self.due():
                try:
                    await self.refresh(ca, fmspc)
                except CollateralError:
                    pass
            with trio.move_on_after(max(0.05, min(self._next_wake(self.clock()), 3600.0))):
                await self._wake.wait()
