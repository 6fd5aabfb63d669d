"""Throughput of the AI package: pack, pack+encrypt, decrypt, decrypt+unpack.

    .venv/bin/python bench/ai_package.py [--size-mib 256] [--chunk-mib 1]

Builds a temporary AI directory of random files (a few large "weights" and
many small files), then times each stage over it and prints MB/s (1 MB = 10^6
bytes).  Files are freshly written, so reads come from the page cache; the
numbers are CPU cost, not disk speed.  The target for pack+encrypt is
>= 200 MB/s.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import sys

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from enclave.ai_manifest import hash_tree  # noqa: E402
from enclave.package import decrypt_stream, encrypt_stream, new_key, pack, seal_dir, unpack  # noqa: E402

from bench.results import figure  # noqa: E402

TARGET_MBS = 200.0


def make_ai(root: Path, size: int) -> int:
    """Fill ``root`` with ~``size`` bytes: 90 % in 8 large files, the rest in 4 KiB files."""
    big = size * 9 // 10 // 8
    for i in range(8):
        (root / "weights").mkdir(exist_ok=True)
        (root / "weights" / f"shard-{i:02d}.bin").write_bytes(os.urandom(big))
    small_total = size - 8 * big
    (root / "vocab").mkdir()
    for i in range(small_total // 4096):
        (root / "vocab" / f"{i:05d}.txt").write_bytes(os.urandom(4096))
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def timed(label: str, nbytes: int, fn: Callable[[], object]) -> float:
    """Run ``fn`` once, print and return its throughput in MB/s."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    mbs = nbytes / dt / 1e6
    print(f"{label:<28} {nbytes / 1e6:8.1f} MB in {dt:6.3f} s = {mbs:7.1f} MB/s")
    return mbs


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--chunk-mib", type=float, default=1.0)
    args = ap.parse_args()
    chunk = int(args.chunk_mib * (1 << 20))

    tmp = Path(tempfile.mkdtemp(prefix="ai-package-bench-"))
    try:
        src = tmp / "ai"
        src.mkdir()
        total = make_ai(src, args.size_mib << 20)
        nfiles = sum(1 for p in src.rglob("*") if p.is_file())
        print(f"AI directory: {nfiles} files, {total / 1e6:.1f} MB; chunk size {chunk} bytes; "
              f"{os.cpu_count()} CPUs")
        key = new_key()

        def drain(it) -> None:
            for _ in it:
                pass

        hash_mbs = timed("hash_tree (sha256/file)", total, lambda: hash_tree(src))
        timed("pack", total, lambda: drain(pack(src)))
        enc_mbs = timed("pack+encrypt", total, lambda: drain(encrypt_stream(pack(src), key, chunk_size=chunk)))

        pkg = tmp / "ai.pkg"

        def seal_to_file() -> None:
            nonlocal info
            with open(pkg, "wb") as f:
                info = seal_dir(src, f, key, chunk_size=chunk)

        info = None
        timed("pack+encrypt -> file", total, seal_to_file)
        os.sync()  # keep write-back of the package out of the read timings below
        blob = pkg.read_bytes()
        timed("decrypt (in memory)", total, lambda: drain(decrypt_stream(blob, key)))

        def decrypt_file() -> None:
            with open(pkg, "rb") as f:
                drain(decrypt_stream(f, key))

        def decrypt_unpack() -> None:
            with open(pkg, "rb") as f:
                unpack(decrypt_stream(f, key, expected_sha256=info.plaintext_sha256), tmp / "out")

        timed("decrypt (from file)", total, decrypt_file)
        dec_mbs = timed("decrypt+unpack -> dir", total, decrypt_unpack)
        figure("pack_encrypt_mbs", enc_mbs, "MB/s", label=f"pack + encrypt {nfiles} files in memory",
               reference=hash_mbs, reference_label="SHA-256 of every file", target=TARGET_MBS, better="higher")
        figure("decrypt_unpack_mbs", dec_mbs, "MB/s", label="decrypt + unpack to a directory",
               reference=hash_mbs, reference_label="SHA-256 of every file", better="higher")
        print(f"plaintext sha256 {info.plaintext_sha256}, package {info.ciphertext_size} bytes "
              f"(overhead {info.ciphertext_size - info.plaintext_size} bytes)")
        verdict = "ok" if enc_mbs >= TARGET_MBS else "BELOW TARGET"
        print(f"pack+encrypt {enc_mbs:.1f} MB/s vs target {TARGET_MBS:.0f} MB/s: {verdict}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
