"""Write a small Python AI (one module, bytes in and out) with its ai.toml, for multi-node tests."""
from __future__ import annotations

from pathlib import Path

from enclave.ai_manifest import format_files_table, hash_tree


def make_python_ai(root: Path, name: str, module: str, code: str) -> Path:
    """``root/<module>.py`` holding ``code`` (which defines ``run(data: bytes) -> bytes``), and its manifest."""
    root.mkdir()
    (root / f"{module}.py").write_text(code)
    head = (f'name = "{name}"\nversion = "1.0.0"\nruntime = "python"\nentry = "{module}:run"\n\n'
            '[resources]\ncpu = 1\nmemory = "256MiB"\nenclave_size = "512MiB"\nthreads = 1\n\n'
            '[io]\ninput = "bytes"\noutput = "bytes"\n\n')
    (root / "ai.toml").write_text(head + format_files_table(hash_tree(root)))
    return root
