"""The ``ai.toml`` manifest: what an AI is, what it needs, and what it consists of.

This module is part of the trusted base that runs inside the enclave, so it
uses only the standard library.  The enclave parses the manifest that travels
inside the (authenticated) AI package, checks every file of the unpacked AI
against the ``[files]`` hashes, and only then loads the entry point.  Because
of that the parser is strict: unknown keys are errors (a typo such as
``[resources] memroy = ...`` must not silently fall back to a default), every
value is type-checked, and every error names the key and the reason, e.g.
``resources.memory: "12XB" is not a size``.

The schema is documented in ``docs/ai-manifest.md``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import stat
import tomllib
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Any, Mapping

__all__ = [
    "MANIFEST_NAME",
    "RUNTIMES",
    "IO_FORMATS",
    "ONNX_DTYPES",
    "ManifestError",
    "Resources",
    "OnnxIo",
    "Io",
    "AiManifest",
    "parse_manifest",
    "load_manifest",
    "parse_size",
    "toml_string",
    "relpath_problem",
    "python_entry_candidates",
    "hash_file",
    "hash_tree",
    "check_files",
    "format_files_table",
    "loads_toml",
]

#: File name of the manifest at the root of an AI directory.  It is the one
#: file that is not listed in ``[files]`` (it cannot contain its own hash).
MANIFEST_NAME = "ai.toml"
#: Supported runtimes.
RUNTIMES = ("onnx", "python")
#: How the request/response bytes are interpreted.
IO_FORMATS = ("bytes", "json", "text")
#: Element types an ``onnx`` AI may declare for its input tensor.
ONNX_DTYPES = ("float32", "float64", "int32", "int64")

_MAX_MANIFEST_BYTES = 1 << 20
_MAX_PATH_BYTES = 4096
_MAX_COMPONENT_BYTES = 255
_HASH_BUF = 1 << 20
_MiB = 1 << 20

_NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$")
# MAJOR.MINOR.PATCH with optional -prerelease and +build (semver 2.0 shape).
_VERSION_RE = re.compile(
    r"^(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)\.(0|[1-9][0-9]*)"
    r"(?:-[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_SIZE_RE = re.compile(r"^([0-9]+)\s*([A-Za-z]*)$")
# Binary units only.  "M" follows Gramine's convention (= MiB); decimal "MB"
# is refused because it is routinely meant as MiB and the difference matters
# when comparing against provider limits and power-of-two enclave sizes.
_SIZE_UNITS = {
    "": 1, "B": 1,
    "K": 1 << 10, "KiB": 1 << 10,
    "M": 1 << 20, "MiB": 1 << 20,
    "G": 1 << 30, "GiB": 1 << 30,
    "T": 1 << 40, "TiB": 1 << 40,
}


class ManifestError(ValueError):
    """An ``ai.toml`` (or the files it describes) is not acceptable.

    ``key`` is the dotted manifest key the problem is about (``""`` for the
    document as a whole), ``reason`` says what is wrong.  ``str(err)`` is
    ``"<key>: <reason>"`` so it can be shown to the AI author as is.
    """

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


@dataclass(frozen=True)
class Resources:
    """What the AI asks the provider for (``[resources]``)."""

    cpu: int = 1
    memory: int = 256 * _MiB
    enclave_size: int = 256 * _MiB
    threads: int = 4
    network: bool = False


@dataclass(frozen=True)
class OnnxIo:
    """How request JSON maps to the ONNX input tensor and back (``[io.onnx]``).

    The request is a JSON object; ``request[input_key]`` is a (nested) list of
    numbers whose flattened length equals ``prod(input_shape)``.  It is fed as
    ``input_name`` with shape ``[1, *input_shape]`` and type ``input_dtype``.
    The response is a JSON object with one key per entry of ``outputs``
    (response key -> ONNX output name) holding row 0 of that output.
    """

    input_name: str
    input_key: str
    input_shape: tuple[int, ...]
    input_dtype: str
    outputs: Mapping[str, str]

    @property
    def input_size(self) -> int:
        """Number of scalars in one input sample."""
        return math.prod(self.input_shape)


@dataclass(frozen=True)
class Io:
    """Request/response formats (``[io]``)."""

    input: str = "bytes"
    output: str = "bytes"
    onnx: OnnxIo | None = None


@dataclass(frozen=True)
class AiManifest:
    """A validated ``ai.toml``.  Build it with :func:`parse_manifest`."""

    name: str
    version: str
    runtime: str
    entry: str
    description: str = ""
    resources: Resources = field(default_factory=Resources)
    io: Io = field(default_factory=Io)
    #: relative POSIX path -> ``"sha256:<64 hex>"``, for every file but ai.toml.
    files: Mapping[str, str] = field(default_factory=lambda: types.MappingProxyType({}))
    #: Extra Gramine manifest options the AI asks for, flattened to dotted keys
    #: (``{"sgx.debug": True}``).  Judged by :mod:`enclave.manifest_rules`.
    gramine: Mapping[str, Any] = field(default_factory=lambda: types.MappingProxyType({}))

    @property
    def entry_file(self) -> str:
        """The file the entry point lives in (for ``python``: the resolved module file)."""
        if self.runtime != "python":
            return self.entry
        candidates = python_entry_candidates(self.entry)
        for c in candidates:
            if c in self.files:
                return c
        return candidates[0]

    @property
    def entry_function(self) -> str | None:
        """Name of the callable for ``python`` AIs, ``None`` otherwise."""
        if self.runtime != "python":
            return None
        return self.entry.rpartition(":")[2]


# --------------------------------------------------------------------------
# helpers shared with package.py and manifest_rules.py


def relpath_problem(path: str) -> str | None:
    """Why ``path`` is not a safe relative path inside an AI, or ``None`` if it is.

    Safe means: POSIX ``/`` separators, no leading ``/``, no empty, ``.`` or
    ``..`` components, no backslash, colon or control characters.  Such a path
    can be joined to a destination directory without ever leaving it, on any
    host, and it has exactly one spelling (which keeps hashes canonical).
    """
    if not isinstance(path, str) or not path:
        return "is empty"
    try:
        raw = path.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8"
    if len(raw) > _MAX_PATH_BYTES:
        return f"is longer than {_MAX_PATH_BYTES} bytes"
    if path.startswith("/"):
        return "is an absolute path"
    if any(ord(ch) < 0x20 or ord(ch) == 0x7F for ch in path):
        return "contains a control character"
    if "\\" in path:
        return "contains a backslash"
    if ":" in path:
        return "contains a colon"
    for part in path.split("/"):
        if part == "":
            return "has an empty path component"
        if part in (".", ".."):
            return f"has a {part!r} path component"
        if len(part.encode("utf-8")) > _MAX_COMPONENT_BYTES:
            return f"has a component longer than {_MAX_COMPONENT_BYTES} bytes"
    return None


def parse_size(value: Any) -> int:
    """Parse a byte size: a positive int, or a string like ``"512MiB"``/``"512M"``.

    Raises :class:`ValueError` with the reason if ``value`` is not a size.
    """
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int):
        if value < 1:
            raise ValueError(f"{value} is not a positive size")
        return value
    if not isinstance(value, str):
        raise ValueError(f"{value!r} is not a size")
    m = _SIZE_RE.match(value.strip())
    if not m or m.group(2) not in _SIZE_UNITS:
        raise ValueError(f'"{value}" is not a size (use e.g. 512MiB, 2GiB, 512M)')
    n = int(m.group(1)) * _SIZE_UNITS[m.group(2)]
    if n < 1:
        raise ValueError(f'"{value}" is not a positive size')
    return n


def python_entry_candidates(entry: str) -> tuple[str, ...]:
    """Files that may hold a ``python`` entry point, in lookup order.

    ``"file.py:run"`` / ``"dir/file.py:run"`` name the file directly;
    ``"pkg.mod:run"`` is ``pkg/mod.py`` or ``pkg/mod/__init__.py``.
    """
    target = entry.rpartition(":")[0]
    if target.endswith(".py"):
        return (target,)
    base = target.replace(".", "/")
    return (base + ".py", base + "/__init__.py")


def hash_file(path: str | os.PathLike[str]) -> str:
    """``"sha256:<hex>"`` of a file's contents, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(_HASH_BUF):
            h.update(block)
    return "sha256:" + h.hexdigest()


def hash_tree(root: str | os.PathLike[str]) -> dict[str, str]:
    """Hash every regular file under ``root`` except the top-level ``ai.toml``.

    Returns ``{relative POSIX path: "sha256:<hex>"}`` sorted by path, i.e.
    exactly what belongs in ``[files]``.  Symlinks and special files raise
    :class:`ManifestError`: an AI consists of regular files only, and a link
    could point outside the AI once it is unpacked somewhere else.
    """
    root = Path(root)
    if not root.is_dir():
        raise ManifestError("files", f'"{root}" is not a directory')
    out: dict[str, str] = {}
    for rel, full in _walk(root):
        if rel == MANIFEST_NAME:
            continue
        out[rel] = hash_file(full)
    return dict(sorted(out.items()))


def _walk(root: Path) -> list[tuple[str, Path]]:
    """All regular files under ``root`` as (relative POSIX path, full path)."""
    found: list[tuple[str, Path]] = []
    stack = [(root, "")]
    while stack:
        directory, prefix = stack.pop()
        with os.scandir(directory) as it:
            entries = sorted(it, key=lambda e: e.name)
        for e in entries:
            rel = prefix + e.name
            st = os.lstat(e.path)
            if stat.S_ISDIR(st.st_mode):
                stack.append((Path(e.path), rel + "/"))
            elif stat.S_ISREG(st.st_mode):
                problem = relpath_problem(rel)
                if problem:
                    raise ManifestError("files", f'"{rel}" {problem}')
                found.append((rel, Path(e.path)))
            elif stat.S_ISLNK(st.st_mode):
                raise ManifestError("files", f'"{rel}" is a symlink (only regular files are allowed)')
            else:
                raise ManifestError("files", f'"{rel}" is not a regular file')
    return found


def check_files(root: str | os.PathLike[str], manifest: AiManifest) -> None:
    """Verify that ``root`` holds exactly the files of ``manifest`` with the listed hashes.

    Every listed file must be present with the right SHA-256, and no file may
    be present that is not listed (``ai.toml`` itself excepted).  Raises one
    :class:`ManifestError` (key ``files``) listing every problem found, so an
    author fixes them in one go.
    """
    actual = hash_tree(root)
    problems: list[str] = []
    for path, digest in manifest.files.items():
        got = actual.get(path)
        if got is None:
            problems.append(f'"{path}" is missing')
        elif got != digest:
            problems.append(f'"{path}" has {got}, manifest says {digest}')
    for path in actual:
        if path not in manifest.files:
            problems.append(f'"{path}" is not listed')
    if problems:
        raise ManifestError("files", "; ".join(problems))


def format_files_table(hashes: Mapping[str, str]) -> str:
    """Render a ``[files]`` TOML table (for tools that write ``ai.toml``)."""
    lines = ["[files]"]
    for path in sorted(hashes):
        lines.append(f"{toml_string(path)} = {toml_string(hashes[path])}")
    return "\n".join(lines) + "\n"


def toml_string(s: str) -> str:
    """A TOML basic string literal for ``s``."""
    out = ['"']
    for ch in s:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


# --------------------------------------------------------------------------
# parsing


def load_manifest(path: str | os.PathLike[str]) -> AiManifest:
    """Read and validate ``ai.toml``; ``path`` is the file or the AI directory."""
    p = Path(path)
    if p.is_dir():
        p = p / MANIFEST_NAME
    try:
        with open(p, "rb") as f:
            data = f.read(_MAX_MANIFEST_BYTES + 1)
    except OSError as e:
        raise ManifestError("", f"cannot read {p}: {e.strerror or e}") from e
    return parse_manifest(data)


#: How deep arrays and tables may nest in a TOML file we read (ai.toml, genesis, config).
MAX_TOML_DEPTH = 32


def loads_toml(text: str) -> dict[str, Any]:
    """``tomllib.loads`` that fails only with ``tomllib.TOMLDecodeError``.

    ``tomllib`` itself lets ``RecursionError`` (deeply nested arrays) and
    ``ValueError`` (an integer with more digits than Python converts) escape,
    and accepts dotted keys nested deeper than any code walking the document
    can recurse; all of these are TOML this project refuses.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        raise
    except RecursionError:
        raise tomllib.TOMLDecodeError(f"arrays or tables nested deeper than {MAX_TOML_DEPTH}") from None
    except ValueError as e:  # e.g. "Exceeds the limit (4300 digits) for integer string conversion"
        raise tomllib.TOMLDecodeError(str(e)) from None
    stack: list[tuple[Any, int]] = [(doc, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_TOML_DEPTH:
            raise tomllib.TOMLDecodeError(f"arrays or tables nested deeper than {MAX_TOML_DEPTH}")
        if isinstance(value, dict):
            stack.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            stack.extend((v, depth + 1) for v in value)
    return doc


def parse_manifest(data: bytes | str) -> AiManifest:
    """Parse and validate the text of an ``ai.toml``.

    Raises :class:`ManifestError` naming the first offending key.
    """
    if isinstance(data, bytes):
        if len(data) > _MAX_MANIFEST_BYTES:
            raise ManifestError("", f"manifest is larger than {_MAX_MANIFEST_BYTES} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ManifestError("", f"manifest is not UTF-8: {e}") from e
    else:
        text = data
    try:
        doc = loads_toml(text)
    except tomllib.TOMLDecodeError as e:
        raise ManifestError("", f"invalid TOML: {e}") from e

    _only_keys(doc, "", required={"name", "version", "runtime", "entry"},
               optional={"description", "resources", "io", "files", "gramine"})

    name = _string(doc, "name")
    if not _NAME_RE.match(name):
        raise ManifestError("name", f'"{name}" is not a lowercase slug (a-z, 0-9, "-", at most 64)')
    version = _string(doc, "version")
    if not _VERSION_RE.match(version):
        raise ManifestError("version", f'"{version}" is not a version like 1.2.3')
    runtime = _string(doc, "runtime")
    if runtime not in RUNTIMES:
        raise ManifestError("runtime", f'"{runtime}" is not one of {", ".join(RUNTIMES)}')
    entry = _string(doc, "entry")
    _check_entry(runtime, entry)
    description = _string(doc, "description") if "description" in doc else ""

    resources = _parse_resources(_table(doc, "resources"))
    io = _parse_io(_table(doc, "io"), runtime)
    files = _parse_files(_table(doc, "files"))
    gramine = _flatten(_table(doc, "gramine"), "")

    return AiManifest(
        name=name,
        version=version,
        runtime=runtime,
        entry=entry,
        description=description,
        resources=resources,
        io=io,
        files=types.MappingProxyType(files),
        gramine=types.MappingProxyType(gramine),
    )


def _check_entry(runtime: str, entry: str) -> None:
    """Validate the shape of ``entry`` for ``runtime`` (existence is checked in [files])."""
    if runtime == "onnx":
        problem = relpath_problem(entry)
        if problem:
            raise ManifestError("entry", f'"{entry}" {problem}')
        if not entry.endswith(".onnx"):
            raise ManifestError("entry", f'"{entry}" is not an .onnx file')
        return
    target, sep, func = entry.rpartition(":")
    if not sep or not target or not _IDENT_RE.match(func):
        raise ManifestError("entry", f'"{entry}" is not "module:function" or "file.py:function"')
    if target.endswith(".py"):
        problem = relpath_problem(target)
        if problem:
            raise ManifestError("entry", f'"{target}" {problem}')
    elif not all(_IDENT_RE.match(part) for part in target.split(".")):
        raise ManifestError("entry", f'"{target}" is not a dotted module name')


def _parse_resources(t: dict[str, Any]) -> Resources:
    _only_keys(t, "resources", optional={"cpu", "memory", "enclave_size", "threads", "network"})
    d = Resources()
    cpu = _positive_int(t, "resources", "cpu", d.cpu)
    threads = _positive_int(t, "resources", "threads", d.threads)
    memory = _size(t, "resources", "memory", d.memory)
    if "enclave_size" in t:
        enclave_size = _size(t, "resources", "enclave_size", d.enclave_size)
        if enclave_size & (enclave_size - 1):
            raise ManifestError("resources.enclave_size", f"{enclave_size} is not a power of two")
        if enclave_size < memory:
            raise ManifestError("resources.enclave_size",
                                f"{enclave_size} is smaller than resources.memory ({memory})")
    else:
        # Gramine needs a power of two; the smallest one that fits memory.
        enclave_size = 1 << (memory - 1).bit_length()
    network = t.get("network", d.network)
    if not isinstance(network, bool):
        raise ManifestError("resources.network", f"{network!r} is not true or false")
    return Resources(cpu=cpu, memory=memory, enclave_size=enclave_size,
                     threads=threads, network=network)


def _parse_io(t: dict[str, Any], runtime: str) -> Io:
    _only_keys(t, "io", optional={"input", "output", "onnx"})
    default = "json" if runtime == "onnx" else "bytes"
    fmts = {}
    for k in ("input", "output"):
        v = _string(t, k, "io") if k in t else default
        if v not in IO_FORMATS:
            raise ManifestError(f"io.{k}", f'"{v}" is not one of {", ".join(IO_FORMATS)}')
        fmts[k] = v
    if runtime == "python":
        if "onnx" in t:
            raise ManifestError("io.onnx", 'only allowed with runtime = "onnx"')
        return Io(input=fmts["input"], output=fmts["output"])
    for k in ("input", "output"):
        if fmts[k] != "json":
            raise ManifestError(f"io.{k}", 'must be "json" for runtime = "onnx"')
    if "onnx" not in t:
        raise ManifestError("io.onnx", 'is required for runtime = "onnx"')
    return Io(input="json", output="json", onnx=_parse_onnx_io(_table(t, "onnx", "io")))


def _parse_onnx_io(t: dict[str, Any]) -> OnnxIo:
    p = "io.onnx"
    _only_keys(t, p, required={"input_name", "input_key", "input_shape", "outputs"},
               optional={"input_dtype"})
    input_name = _string(t, "input_name", p)
    input_key = _string(t, "input_key", p)
    if not input_name:
        raise ManifestError(f"{p}.input_name", "is empty")
    if not input_key:
        raise ManifestError(f"{p}.input_key", "is empty")
    shape = t["input_shape"]
    if (not isinstance(shape, list) or not shape
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in shape)):
        raise ManifestError(f"{p}.input_shape", f"{shape!r} is not a list of positive integers")
    if math.prod(shape) > 1 << 24:
        raise ManifestError(f"{p}.input_shape", f"{shape!r} has more than {1 << 24} elements")
    dtype = _string(t, "input_dtype", p) if "input_dtype" in t else "float32"
    if dtype not in ONNX_DTYPES:
        raise ManifestError(f"{p}.input_dtype", f'"{dtype}" is not one of {", ".join(ONNX_DTYPES)}')
    outputs_t = _table(t, "outputs", p)
    if not outputs_t:
        raise ManifestError(f"{p}.outputs", "maps no output")
    outputs: dict[str, str] = {}
    for k, v in outputs_t.items():
        if not isinstance(v, str) or not v:
            raise ManifestError(f"{p}.outputs.{k}", f"{v!r} is not an ONNX output name")
        outputs[k] = v
    return OnnxIo(input_name=input_name, input_key=input_key, input_shape=tuple(shape),
                  input_dtype=dtype, outputs=types.MappingProxyType(outputs))


def _parse_files(t: dict[str, Any]) -> dict[str, str]:
    files: dict[str, str] = {}
    for path, digest in t.items():
        key = f"files.{toml_string(path)}"
        problem = relpath_problem(path)
        if problem:
            raise ManifestError(key, f"path {problem}")
        if path == MANIFEST_NAME:
            raise ManifestError(key, "the manifest cannot list itself")
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            raise ManifestError(key, f'{digest!r} is not "sha256:" followed by 64 lowercase hex digits')
        files[path] = digest
    return dict(sorted(files.items()))


def _flatten(t: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``{"sgx": {"debug": True}}`` -> ``{"sgx.debug": True}``; values deep-frozen."""
    out: dict[str, Any] = {}
    for k, v in t.items():
        key = prefix + k
        if isinstance(v, dict):
            out.update(_flatten(v, key + "."))  # an empty table asks for nothing
        else:
            out[key] = _freeze(v)
    return out


def _freeze(v: Any) -> Any:
    if isinstance(v, dict):
        return types.MappingProxyType({k: _freeze(x) for k, x in v.items()})
    if isinstance(v, list):
        return tuple(_freeze(x) for x in v)
    return v


# --------------------------------------------------------------------------
# typed getters; each error names the full dotted key


def _only_keys(t: Mapping[str, Any], prefix: str, *, required: AbstractSet[str] = frozenset(),
               optional: AbstractSet[str] = frozenset()) -> None:
    dot = prefix + "." if prefix else ""
    for k in t:
        if k not in required and k not in optional:
            allowed = ", ".join(sorted(required | optional))
            raise ManifestError(dot + k, f"unknown key (allowed here: {allowed})")
    for k in sorted(required):
        if k not in t:
            raise ManifestError(dot + k, "is required")


def _table(t: Mapping[str, Any], k: str, prefix: str = "") -> dict[str, Any]:
    v = t.get(k, {})
    if not isinstance(v, dict):
        raise ManifestError(f"{prefix}.{k}" if prefix else k, "must be a table")
    return v


def _string(t: Mapping[str, Any], k: str, prefix: str = "") -> str:
    v = t[k]
    if not isinstance(v, str):
        raise ManifestError(f"{prefix}.{k}" if prefix else k, f"{v!r} is not a string")
    return v


def _positive_int(t: Mapping[str, Any], prefix: str, k: str, default: int) -> int:
    v = t.get(k, default)
    if isinstance(v, bool) or not isinstance(v, int) or v < 1:
        raise ManifestError(f"{prefix}.{k}", f"{v!r} is not an integer >= 1")
    return v


def _size(t: Mapping[str, Any], prefix: str, k: str, default: int) -> int:
    if k not in t:
        return default
    try:
        return parse_size(t[k])
    except ValueError as e:
        raise ManifestError(f"{prefix}.{k}", str(e)) from None
