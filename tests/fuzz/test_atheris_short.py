"""The short coverage-guided fuzz run of CI: every atheris harness (one process,
the first input byte picks the harness) for FUZZ_SECONDS, from the seed corpus
of real inputs. Any crash fails the test and names the saved reproducer. The
long run is `python bench/fuzz/run.py --seconds 60` (docs/fuzzing.md)."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

from tests.parts import REPO, require_part

RUN = REPO / "bench" / "fuzz" / "run.py"
FUZZ_SECONDS = int(os.environ.get("OFNODE_FUZZ_SECONDS", "15"))


def _need_atheris() -> None:
    require_part("atheris", importlib.util.find_spec("atheris") is not None,
                 "pip install atheris; it is in the test extra of pyproject.toml")


def _run(tmp_path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, list[dict]]:
    out = tmp_path / "results.json"
    p = subprocess.run([sys.executable, str(RUN), "--workdir", str(tmp_path / "work"), "--json", str(out), *args],
                       cwd=REPO, capture_output=True, text=True, env={**os.environ, **(env or {})},
                       timeout=2 * FUZZ_SECONDS + 700)  # a loaded machine takes minutes to start a short run
    return p, json.loads(out.read_text()) if out.exists() else []


def test_every_harness_fuzzes_briefly_without_a_crash(tmp_path) -> None:
    _need_atheris()
    p, results = _run(tmp_path, "--multiplex", "--seconds", str(FUZZ_SECONDS))
    assert p.returncode == 0 and results and results[0]["crashes"] == [], p.stdout + p.stderr[-3000:]
    r = results[0]
    assert r["execs"] > 1000 and r["cov"] > 500 and r["corpus"] > 50, r  # it really fuzzed, across the decoders


def test_a_planted_bug_is_caught_and_its_input_saved(tmp_path) -> None:
    _need_atheris()
    p, results = _run(tmp_path, "--only", "selftest", "--seconds", "10", env={"OFNODE_FUZZ_SELFTEST": "1"})
    assert p.returncode == 1, p.stdout + p.stderr[-2000:]
    crashes = results[0]["crashes"]
    assert len(crashes) == 1 and b"BUG" in open(crashes[0], "rb").read()
    assert f"--reproduce selftest {crashes[0]}" in p.stdout
    replay = subprocess.run([sys.executable, str(RUN), "--reproduce", "selftest", crashes[0]], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "OFNODE_FUZZ_SELFTEST": "1"})
    assert replay.returncode != 0 and "planted bug" in replay.stderr
