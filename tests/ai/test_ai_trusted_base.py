"""The AI-format modules stay inside the trusted base: stdlib + cryptography only."""

from __future__ import annotations

import subprocess
import sys

MODULES = ("enclave.ai_manifest", "enclave.manifest_rules", "enclave.package")
FORBIDDEN = ("numpy", "onnxruntime", "onnx", "sklearn", "trio", "libp2p", "docker", "node")


def test_importing_ai_format_pulls_in_no_heavy_or_untrusted_modules() -> None:
    code = (
        "import sys\n"
        f"for m in {MODULES!r}: __import__(m)\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {name.split(".")[0] for name in out.split()}
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)
