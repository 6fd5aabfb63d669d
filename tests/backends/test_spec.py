"""EnclaveSpec validation and runtime_code_dirs (no sandbox needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from enclave.backends import EnclaveSpec, runtime_code_dirs


def make(**kw: object) -> EnclaveSpec:
    base: dict[str, object] = {"argv": ("python",), "code_dirs": (), "socket_dir": "/s", "scratch_dir": "/x"}
    base.update(kw)
    return EnclaveSpec(**base)  # type: ignore[arg-type]


def test_normalises_types() -> None:
    spec = make(argv=["a", 1], code_dirs=["/opt/x"], env={"A": 1})
    assert spec.argv == ("a", "1") and spec.code_dirs == (Path("/opt/x"),)
    assert dict(spec.env) == {"A": "1"}
    with pytest.raises(TypeError):
        spec.env["B"] = "2"  # type: ignore[index]
    hash(spec)  # usable as a key despite the env mapping


@pytest.mark.parametrize("kw, msg", [
    ({"argv": ()}, "argv"),
    ({"memory_bytes": 0}, "memory_bytes"),
    ({"max_pids": -1}, "max_pids"),
    ({"threads": 1.5}, "threads"),
    ({"cpu_seconds": float("inf")}, "cpu_seconds"),
    ({"scratch_dir": "rel"}, "absolute"),
    ({"code_dirs": ["/"]}, "shadow"),
    ({"code_dirs": ["/tmp"]}, "shadow"),
    ({"code_dirs": ["/run/code"]}, "shadow"),
    ({"code_dirs": ["/proc"]}, "shadow"),
    ({"env": {"A=B": "x"}}, "environment"),
])
def test_rejects(kw: dict, msg: str) -> None:
    with pytest.raises(ValueError, match=msg):
        make(**kw)


def test_runtime_code_dirs() -> None:
    dirs = runtime_code_dirs()
    import enclave

    pkg = Path(enclave.__file__).resolve().parent
    assert any(pkg == d or d in pkg.parents for d in dirs)  # the package, not necessarily the repo
    assert not any((d / "node").is_dir() and (d / "enclave").is_dir() for d in dirs)  # never the repo root
    exe = Path(sys.executable).resolve()
    assert any(d in exe.parents for d in dirs) or Path("/usr") in exe.parents
    for a in dirs:  # no entry nested in another
        assert not any(b in a.parents for b in dirs)
