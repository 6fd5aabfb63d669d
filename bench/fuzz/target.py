"""One atheris (libFuzzer) process: ``python bench/fuzz/target.py NAME [libFuzzer args]``.

``NAME`` is a harness of :mod:`bench.fuzz.harnesses`, or ``all``: then the
first byte of each input picks the harness (one process fuzzes every decoder,
which is what the short CI run uses). ``--reproduce FILE`` runs one input
without atheris and shows the traceback. ``bench/fuzz/run.py`` drives this.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
logging.disable(logging.CRITICAL)  # handlers log rejected input; a fuzzer makes millions

from bench.fuzz import harnesses as H  # noqa: E402  (not instrumented: it is the harness, not the target)


def pick(name: str):
    if name != "all":
        return H.get(name).target
    targets = [H.get(n).target for n in H.names()]

    def multiplexed(data: bytes) -> None:
        if data:
            targets[data[0] % len(targets)](data[1:])

    return multiplexed


def main() -> None:
    name, args = sys.argv[1], sys.argv[2:]
    if args[:1] == ["--reproduce"]:
        pick(name)(Path(args[1]).read_bytes())
        print("no crash")
        return
    import atheris

    chosen = H.names() if name == "all" else [name]
    # Import (and so instrument) the decoders under test: running each seed once
    # inside the block imports exactly the modules each harness reaches.
    with atheris.instrument_imports(include=["node", "enclave"]):
        for n in chosen:
            for seed in H.get(n).seeds():
                try:
                    H.get(n).target(seed)
                except Exception:  # noqa: BLE001 - the fuzzer finds it again, and saves the input
                    pass
    target = pick(name)
    atheris.Setup([sys.argv[0], *args], target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
