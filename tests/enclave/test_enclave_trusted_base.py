"""The in-enclave code stays small and stands alone; the sim measurement covers all of it."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from enclave import measure

from .conftest import REPO

ENCLAVE = REPO / "enclave"
TRUSTED = sorted([*(ENCLAVE / "runtime").glob("*.py"), ENCLAVE / "ratls.py", ENCLAVE / "measure.py"])
FORBIDDEN = ("node", "libp2p", "trio", "docker", "dcap_qvl", "OpenSSL", "numpy", "onnxruntime")
ALLOWED_TOP = {"enclave", "cryptography", "numpy", "onnxruntime", *sys.stdlib_module_names}


def test_importing_the_runtime_loads_no_forbidden_module() -> None:
    code = (
        "import sys\n"
        "import enclave.runtime.main, enclave.runtime.channel, enclave.runtime.tls, enclave.runtime.keys\n"
        "import enclave.runtime.runners, enclave.ratls, enclave.measure\n"
        "print('\\n'.join(sorted(sys.modules)))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO).stdout
    loaded = {name.split(".")[0] for name in out.split()}
    assert not loaded & set(FORBIDDEN), loaded & set(FORBIDDEN)  # numpy/onnxruntime only once an onnx AI runs


def test_trusted_files_import_only_stdlib_cryptography_and_enclave() -> None:
    for path in TRUSTED:
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else [])
            for name in names:
                assert name.split(".")[0] in ALLOWED_TOP, f"{path.name} imports {name}"
                if name.startswith("enclave."):
                    assert not name.startswith(("enclave.host", "enclave.ratls_verify", "enclave.backends",
                                                "enclave.quotes.sim_")), f"{path.name} imports {name}"


def _code_lines(path: Path) -> int:
    """Lines that are neither blank, comments nor docstrings."""
    src = path.read_text()
    docs: set[int] = set()
    for node in ast.walk(ast.parse(src)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) \
                and ast.get_docstring(node) is not None:
            docs.update(range(node.body[0].lineno, node.body[0].end_lineno + 1))
    return sum(1 for i, line in enumerate(src.splitlines(), 1)
               if line.strip() and not line.strip().startswith("#") and i not in docs)


def test_trusted_base_is_small() -> None:
    code = sum(_code_lines(p) for p in TRUSTED)
    total = sum(len(p.read_text().splitlines()) for p in TRUSTED)
    assert code < 800 and total < 1100, (
        f"runtime + ratls + measure: {code} code lines, {total} in all; keep it readable in one sitting")


def test_measurement_lists_every_runtime_file() -> None:
    listed = set(measure.RUNTIME_FILES)
    for path in (ENCLAVE / "runtime").glob("*.py"):
        assert path.relative_to(ENCLAVE).as_posix() in listed, path
    for rel in listed:
        assert (ENCLAVE / rel).is_file(), rel


def test_measurement_is_deterministic_and_binds_code_and_manifest(tmp_path: Path) -> None:
    m = b'name = "x"\n'
    assert measure.mrenclave(m) == measure.mrenclave(m)
    assert measure.mrenclave(m) != measure.mrenclave(m + b" ")
    assert len(measure.mrenclave(m)) == 32
    # a copy of the code measures the same; one changed byte anywhere in it does not
    for rel in measure.RUNTIME_FILES:
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes((ENCLAVE / rel).read_bytes())
    assert measure.mrenclave(m, tmp_path) == measure.mrenclave(m)
    target = tmp_path / "runtime" / "runners.py"
    target.write_bytes(target.read_bytes() + b"\n")
    assert measure.mrenclave(m, tmp_path) != measure.mrenclave(m)
