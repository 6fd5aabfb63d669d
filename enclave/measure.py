"""The sim backend's MRENCLAVE: a hash of the runtime's code and the AI manifest.

On SGX the CPU measures every page loaded into the enclave.  The sim backend
has no CPU measurement, so the host computes a stand-in from what it launches::

    MRENCLAVE = SHA-256( "ofnode-sim-mrenclave/v1\\0"
                         || for each path in RUNTIME_FILES, sorted by UTF-8 bytes:
                              u16 len(path) || path || u64 len(content) || content
                         || u64 len(manifest) || manifest )

Paths are relative to the ``enclave/`` package; integers are big-endian.  The
list is fixed (not a directory walk) so stray files cannot change the value;
a test checks that every ``.py`` under ``enclave/runtime/`` is listed.  The
AI manifest is the exact ``ai.toml`` bytes the job carries, which the runtime
later requires to equal the ``ai.toml`` inside the decrypted package.  Not
covered (unlike real SGX): the Python interpreter, the standard library and
``cryptography``/``onnxruntime`` themselves.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

ENCLAVE_DIR = Path(__file__).resolve().parent
DOMAIN = b"ofnode-sim-mrenclave/v1\0"
#: Every file the runtime can import from ``enclave/``.
RUNTIME_FILES = (
    "__init__.py", "ai_manifest.py", "ai_object.py", "package.py", "ratls.py", "measure.py",
    "quotes/__init__.py", "quotes/layout.py", "quotes/source.py", "quotes/dev_attestation.py",
    "runtime/__init__.py", "runtime/__main__.py", "runtime/channel.py", "runtime/main.py",
    "runtime/tls.py", "runtime/keys.py", "runtime/runners.py", "unixfs.py", "cid.py", "secret_client.py",
)


def code_listing(root: Path = ENCLAVE_DIR) -> bytes:
    """The canonical listing of the runtime's code (everything before the manifest)."""
    out = bytearray(DOMAIN)
    for rel in sorted(RUNTIME_FILES, key=lambda p: p.encode()):
        path = root / rel
        out += len(rel.encode()).to_bytes(2, "big") + rel.encode()
        data = path.read_bytes()
        out += len(data).to_bytes(8, "big") + data
    return bytes(out)


def mrenclave(manifest: bytes, root: Path = ENCLAVE_DIR) -> bytes:
    """The 32-byte sim MRENCLAVE of the runtime in ``root`` running the AI with ``manifest``."""
    h = hashlib.sha256(code_listing(root))
    h.update(len(manifest).to_bytes(8, "big"))
    h.update(manifest)
    return h.digest()
