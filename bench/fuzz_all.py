"""Fuzz every decoder of outside bytes with atheris, one harness after another
(part of `make bench`). OFNODE_FUZZ_SECONDS per harness (default 20); the corpus
grows in OFNODE_FUZZ_DIR (default /tmp/ofnode-fuzz) from run to run. A crash
fails the run and prints the command that replays it. Same as
`python bench/fuzz/run.py --seconds N` (docs/fuzzing.md)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.fuzz.run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["--seconds", os.environ.get("OFNODE_FUZZ_SECONDS", "20"),
                   "--workdir", os.environ.get("OFNODE_FUZZ_DIR", "/tmp/ofnode-fuzz"), *sys.argv[1:]]))
