"""How much slower is computing a file's CID than hashing it with sha256sum?

A CID needs one sha256 per 256 KiB chunk plus a few small nodes, so it should
cost about as much as ``sha256sum`` on the same file; the target is a ratio of
at most 1.3. Both tools get a warm page cache (the file is read once before
each is timed) and the best of ``--repeat`` runs is kept, so the numbers
compare hashing, not the disk. A plain ``hashlib`` sha256 of the whole file is
timed too: sha256sum may lack the CPU's SHA instructions that OpenSSL (and so
the importer) uses, and the hashlib line shows our own overhead.

Usage: python bench/cid_vs_sha256.py [PATH] [--size MiB] [--repeat N] [--check]

Without PATH a random file is made in a temporary directory and removed
afterwards; with PATH an existing file is used as is (or created at that
path when it does not exist). ``--check`` exits 1 when the ratio is over
the target. Output is plain ``name value`` lines.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.results import figure  # noqa: E402
from node.store.unixfs import cid_of_file  # noqa: E402

TARGET_RATIO = 1.3
_PIECE = 8 << 20


def make_file(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(_PIECE, left)
            f.write(os.urandom(n))
            left -= n


def warm(path: Path) -> None:
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(_PIECE)
        while f.readinto(buf):
            pass


def best_time(fn, path: Path, repeat: int) -> tuple[float, str]:
    best, result = float("inf"), ""
    for _ in range(repeat):
        warm(path)
        start = time.perf_counter()
        result = fn(path)
        best = min(best, time.perf_counter() - start)
    return best, result


def run_sha256sum(path: Path) -> str:
    out = subprocess.run(["sha256sum", str(path)], check=True, capture_output=True, text=True)
    return out.stdout.split()[0]


def run_hashlib(path: Path) -> str:
    """Plain sha256 of the whole file with the same OpenSSL the importer uses."""
    with open(path, "rb", buffering=0) as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("path", nargs="?", type=Path)
    parser.add_argument("--size", type=int, default=512, help="MiB for a new file (512)")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--check", action="store_true", help=f"exit 1 if ratio > {TARGET_RATIO}")
    args = parser.parse_args()
    if shutil.which("sha256sum") is None:
        print("sha256sum not found", file=sys.stderr)
        return 2

    tmpdir = None
    path = args.path
    if path is None:
        tmpdir = tempfile.TemporaryDirectory(prefix="ofnode-bench-")
        path = Path(tmpdir.name) / "data.bin"
    try:
        if not path.exists():
            make_file(path, args.size << 20)
        sha_s, digest = best_time(run_sha256sum, path, args.repeat)
        lib_s, _ = best_time(run_hashlib, path, args.repeat)
        cid_s, cid = best_time(cid_of_file, path, args.repeat)
        ratio = cid_s / sha_s
        size = path.stat().st_size
        print(f"file_bytes {size}")
        print(f"sha256sum_seconds {sha_s:.3f}")
        print(f"hashlib_sha256_seconds {lib_s:.3f}")
        print(f"cid_of_file_seconds {cid_s:.3f}")
        print(f"sha256sum_MiB_per_s {size / sha_s / 2**20:.0f}")
        print(f"cid_of_file_MiB_per_s {size / cid_s / 2**20:.0f}")
        print(f"ratio {ratio:.3f}")
        print(f"ratio_vs_hashlib {cid_s / lib_s:.3f}")
        print(f"target {TARGET_RATIO}")
        print(f"sha256 {digest}")
        print(f"cid {cid}")
        figure("cid_seconds", cid_s, "s", label=f"`ofnode cid` of a {size >> 20} MiB file",
               reference=sha_s, reference_label="sha256sum")
        figure("cid_ratio", ratio, "", label="time ratio cid / sha256sum", target=TARGET_RATIO)
    finally:
        if tmpdir is not None:
            tmpdir.cleanup()
    return 1 if args.check and ratio > TARGET_RATIO else 0


if __name__ == "__main__":
    sys.exit(main())
