"""Run an unpacked, checked AI: ``onnx`` through ONNX Runtime, ``python`` by its entry function.

``load(manifest, root)`` returns a callable ``request bytes -> (response bytes,
seconds spent in the AI itself)``.  onnxruntime and numpy are imported only
here, and only for ``onnx`` AIs, so a start without an onnx AI stays fast.
Request -> tensor -> response follows ``docs/ai-manifest.md`` ([io.onnx]).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Callable

from enclave.ai_manifest import AiManifest

Runner = Callable[[bytes], "tuple[bytes, float]"]


class BadRequest(ValueError):
    """The consumer's input does not fit the AI's declared input format."""


def load(m: AiManifest, root: Path) -> Runner:
    if m.runtime == "onnx":
        return _onnx(m, root)
    if m.runtime == "python":
        return _python(m, root)
    raise ValueError(f"unknown runtime {m.runtime!r}")


def _onnx(m: AiManifest, root: Path) -> Runner:
    import numpy as np
    import onnxruntime as ort

    spec = m.io.onnx
    assert spec is not None  # the manifest parser requires [io.onnx] for onnx
    ort.disable_telemetry_events()  # nothing about the AI leaves the enclave, not even usage events
    ort.set_default_logger_severity(3)  # errors only
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = m.resources.cpu
    sess = ort.InferenceSession(str(root / m.entry), sess_options=opts, providers=["CPUExecutionProvider"])
    names = list(spec.outputs.values())
    sess.run(names, {spec.input_name: np.zeros((1, *spec.input_shape), spec.input_dtype)})  # warm up

    def run(request: bytes) -> tuple[bytes, float]:
        try:
            body = json.loads(request)
        except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
            raise BadRequest(f"input is not JSON: {exc}") from None
        if not isinstance(body, dict) or spec.input_key not in body:
            raise BadRequest(f"input must be a JSON object with key {spec.input_key!r}")
        try:
            raw = np.asarray(body[spec.input_key])
        except ValueError as exc:  # ragged nesting
            raise BadRequest(f"{spec.input_key}: {exc}") from None
        if raw.dtype.kind not in "iuf" or raw.size != spec.input_size:
            raise BadRequest(f"{spec.input_key} must hold exactly {spec.input_size} numbers")
        x = raw.astype(spec.input_dtype).reshape((1, *spec.input_shape))
        t = time.perf_counter()
        results = sess.run(names, {spec.input_name: x})
        spent = time.perf_counter() - t
        return json.dumps({k: r[0].tolist() for k, r in zip(spec.outputs, results)}).encode(), spent

    return run


def _python(m: AiManifest, root: Path) -> Runner:
    target = m.entry.rpartition(":")[0]
    sys.dont_write_bytecode = True  # never write __pycache__ next to the AI
    if target.endswith(".py"):
        spec = importlib.util.spec_from_file_location(f"_ofnode_ai_{m.name.replace('-', '_')}", root / target)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot load {target}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    else:
        sys.path.insert(0, str(root))  # the AI's own modules, and nothing from the host
        module = importlib.import_module(target)
    fn = getattr(module, m.entry_function or "", None)
    if not callable(fn):
        raise ImportError(f"entry {m.entry!r}: no callable {m.entry_function!r}")

    def run(request: bytes) -> tuple[bytes, float]:
        t = time.perf_counter()
        out = fn(request)
        spent = time.perf_counter() - t
        if not isinstance(out, (bytes, bytearray)):
            raise TypeError(f"entry {m.entry!r} returned {type(out).__name__}, not bytes")
        return bytes(out), spent

    return run
