"""The example AIs: manifests valid, files hashed, and they actually work.

This is a test, not the trusted base, so it may use numpy and onnxruntime.
It runs the ONNX example the way ``docs/ai-manifest.md`` says an ``onnx``
runtime must: request JSON -> ``[io.onnx]`` tensor -> response JSON.
"""

from __future__ import annotations

import importlib.util
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from enclave.ai_manifest import AiManifest, check_files, hash_tree, load_manifest
from enclave.manifest_rules import Limits, check_manifest
from enclave.package import new_key, open_package, pack_sha256, seal_dir

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
DIGITS = EXAMPLES / "digits"
WORDCOUNT = EXAMPLES / "wordcount-python"
PROVIDER = Limits(cpu=4, memory=4 << 30, enclave_size=8 << 30, threads=64)
SAMPLES = sorted((DIGITS / "samples").glob("*.json"))


def run_onnx(m: AiManifest, root: Path, request: bytes) -> bytes:
    """Reference implementation of the onnx runtime's request/response mapping."""
    spec = m.io.onnx
    assert spec is not None
    body = json.loads(request)
    values = np.asarray(body[spec.input_key], dtype=spec.input_dtype).reshape(-1)
    assert values.size == spec.input_size
    x = values.reshape((1, *spec.input_shape))
    sess = ort.InferenceSession(str(root / m.entry), providers=["CPUExecutionProvider"])
    names = list(spec.outputs.values())
    results = sess.run(names, {spec.input_name: x})
    return json.dumps({k: r[0].tolist() for k, r in zip(spec.outputs, results)}).encode()


def load_entry(m: AiManifest, root: Path):
    """Import a python AI's entry function from ``root`` without writing bytecode."""
    path = root / m.entry_file
    spec = importlib.util.spec_from_file_location(f"_ai_{m.name}", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    dont_write = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return getattr(module, m.entry_function)


@pytest.mark.parametrize("ai", [DIGITS, WORDCOUNT], ids=lambda p: p.name)
def test_example_manifest_and_files(ai: Path) -> None:
    m = load_manifest(ai)
    check_files(ai, m)
    assert check_manifest(m, PROVIDER, tree=hash_tree(ai)) == []


def test_digits_model_matches_manifest() -> None:
    m = load_manifest(DIGITS)
    assert m.runtime == "onnx" and m.io.onnx is not None
    sess = ort.InferenceSession(str(DIGITS / m.entry), providers=["CPUExecutionProvider"])
    (inp,) = sess.get_inputs()
    assert inp.name == m.io.onnx.input_name
    assert inp.type == "tensor(float)" and m.io.onnx.input_dtype == "float32"
    assert inp.shape[1:] == list(m.io.onnx.input_shape)
    assert set(m.io.onnx.outputs.values()) <= {o.name for o in sess.get_outputs()}
    assert (DIGITS / m.entry).stat().st_size < 64 << 10  # keep the committed model small


def test_digits_has_one_sample_per_digit() -> None:
    assert sorted(int(p.name.split("-")[0]) for p in SAMPLES) == list(range(10))


@pytest.mark.parametrize("sample", SAMPLES, ids=lambda p: p.stem)
def test_digits_labels_samples(sample: Path) -> None:
    m = load_manifest(DIGITS)
    response = json.loads(run_onnx(m, DIGITS, sample.read_bytes()))
    assert response["label"] == int(sample.name.split("-")[0])
    probs = response["probabilities"]
    assert len(probs) == 10
    assert abs(sum(probs) - 1) < 1e-4
    assert max(range(10), key=probs.__getitem__) == response["label"]


def test_digits_through_encrypted_package(tmp_path: Path) -> None:
    key = new_key()
    blob = io.BytesIO()
    info = seal_dir(DIGITS, blob, key)
    assert info.plaintext_sha256 == pack_sha256(DIGITS)
    out = tmp_path / "digits"
    tree = open_package(blob.getvalue(), key, out, expected_sha256=info.plaintext_sha256)
    m = load_manifest(out)
    check_files(out, m)
    assert tree == dict(m.files)
    sample = SAMPLES[3]
    assert json.loads(run_onnx(m, out, sample.read_bytes()))["label"] == 3


def test_wordcount_runs(tmp_path: Path) -> None:
    # Run from an unpacked package, as a node would (and so no __pycache__
    # appears in examples/, which check_files would rightly reject).
    key = new_key()
    blob = io.BytesIO()
    seal_dir(WORDCOUNT, blob, key)
    out = tmp_path / "wc"
    open_package(blob.getvalue(), key, out)
    m = load_manifest(out)
    check_files(out, m)
    assert (m.runtime, m.entry_file, m.entry_function) == ("python", "wordcount.py", "run")
    run = load_entry(m, out)
    result = run("The cat and the hat.\nThe end, the END!\n".encode())
    assert isinstance(result, bytes)
    assert json.loads(result) == {
        "lines": 2, "words": 9, "chars": 39,
        "top": [["the", 4], ["end", 2], ["and", 1], ["cat", 1], ["hat", 1]],
    }
    assert json.loads(run(b"")) == {"lines": 0, "words": 0, "chars": 0, "top": []}
    assert json.loads(run("café, CAFÉ".encode()))["top"] == [["café", 2]]
    check_files(out, m)  # loading wrote no bytecode next to the AI


def test_digits_training_is_reproducible(tmp_path: Path) -> None:
    import importlib.util

    from tests.parts import require_part

    for mod in ("sklearn", "skl2onnx"):
        require_part(mod, importlib.util.find_spec(mod) is not None, "pip install -e '.[train]'")
    work = tmp_path / "examples"
    shutil.copytree(DIGITS, work / "digits")
    shutil.copy(EXAMPLES / "update_files.py", work / "update_files.py")
    proc = subprocess.run([sys.executable, str(work / "digits" / "train.py")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    accuracy = float(proc.stdout.split("ONNX Runtime held-out accuracy:")[1].split()[0])
    assert accuracy >= 0.95
    m = load_manifest(work / "digits")
    check_files(work / "digits", m)
    # Same held-out samples, and the retrained model labels them the same way.
    assert sorted(p.name for p in (work / "digits" / "samples").iterdir()) == [p.name for p in SAMPLES]
    for sample in SAMPLES:
        assert (work / "digits" / "samples" / sample.name).read_bytes() == sample.read_bytes()
        assert json.loads(run_onnx(m, work / "digits", sample.read_bytes()))["label"] == int(sample.name[0])
