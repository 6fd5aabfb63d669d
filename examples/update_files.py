"""Rewrite the ``[files]`` table of an AI's ``ai.toml`` from the files on disk.

    .venv/bin/python examples/update_files.py examples/wordcount-python

Hashes every file of the AI directory (everything but ``ai.toml`` itself),
replaces the ``[files]`` table - which must be the last table of ``ai.toml`` -
and re-validates the result.  A tool for AI authors, not part of the trusted
base.
"""

from __future__ import annotations

import sys
from pathlib import Path

from enclave.ai_manifest import MANIFEST_NAME, check_files, format_files_table, hash_tree, load_manifest


def update_files(ai_dir: str | Path) -> None:
    """Replace the trailing ``[files]`` table of ``ai_dir/ai.toml`` with fresh hashes."""
    ai_dir = Path(ai_dir)
    path = ai_dir / MANIFEST_NAME
    text = path.read_text(encoding="utf-8")
    head, sep, _old = text.partition("\n[files]\n")
    if not sep:
        head = text.rstrip("\n")
    path.write_text(head.rstrip("\n") + "\n\n" + format_files_table(hash_tree(ai_dir)), encoding="utf-8")
    check_files(ai_dir, load_manifest(ai_dir))


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit("usage: update_files.py AI_DIR...")
    for d in sys.argv[1:]:
        update_files(d)
        print(f"updated {Path(d) / MANIFEST_NAME}")
