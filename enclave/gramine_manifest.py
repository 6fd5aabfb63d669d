"""The Gramine manifest of the enclave runtime: render it, and check a rendered one (host side).

``enclave/templates/ofenclave.manifest.template`` is rendered in two stages
(``docs/backends.md``, "Gramine"):

1. :func:`render_template` (ours, jinja2 with the settings ``gramine-manifest``
   uses): the runtime's command line, environment, mounts, the AI's limits,
   and every trusted file with its SHA-256, computed here. Gramine's own
   globals are kept for stage 2 (``{% raw %}``).
2. ``gramine-manifest ofenclave.manifest.in ofenclave.manifest`` (the real
   tool, when Gramine is installed): evaluates ``gramine.runtimedir()``,
   checks the schema, adds ``loader.entrypoint`` (libsysdb.so) and hashes the
   Gramine runtime directory. :func:`finish` reproduces this stage for tests
   and inspection, given where Gramine lives (:class:`GramineInstall`).

Why not hand everything to ``gramine-manifest -D``: ``-D`` values are plain
strings, one argument each (Linux caps one argument at 128 KiB), and the
trusted list is ~2,400 files; and Gramine's own way (trust whole directories)
would pull in all of ``site-packages`` and the base install's packages.

What is trusted (:func:`runtime_files`): the interpreter and every shared
library it and the trusted extension modules load (from ``ldd``; glibc itself
comes from Gramine's runtime directory), the standard library without
``site-packages``, tests, GUI and ``__pycache__``, the venv's ``pyvenv.cfg``,
the files of the distributions the runtime imports (:data:`RUNTIME_DISTRIBUTIONS`
and what they require), and the ``enclave/`` files of
:data:`enclave.measure.RUNTIME_FILES`. Bytecode caches are left out on purpose:
they are rewritten at will and would make the measurement unstable.

:func:`check_manifest` parses a rendered manifest and returns every problem:
a trusted file whose hash differs from the file on disk, a required file that
is not trusted, limits that differ from the AI's, or a weakened setting.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from enclave import measure
from enclave.ai_manifest import Resources, toml_string

__all__ = [
    "CHANNEL_ENV",
    "DEBIAN_PKGLIBDIR",
    "MANIFEST",
    "MANIFEST_IN",
    "RUNTIME_DISTRIBUTIONS",
    "RUNTIME_THREADS",
    "TEMPLATE",
    "GramineInstall",
    "GramineManifestError",
    "Limits",
    "RuntimeLayout",
    "TrustedFile",
    "check_manifest",
    "enclave_argv",
    "finish",
    "format_size",
    "render",
    "render_template",
    "runtime_files",
    "trusted_files",
    "validate",
    "variables",
]

TEMPLATE = Path(__file__).resolve().parent / "templates" / "ofenclave.manifest.template"
#: File names in the backend's work directory (``gramine-sgx ofenclave`` finds them by the stem).
MANIFEST_IN, MANIFEST = "ofenclave.manifest.in", "ofenclave.manifest"
#: The one host variable Gramine passes in: where the runtime's channel is (``tcp:127.0.0.1:PORT``).
CHANNEL_ENV = "OFNODE_CHANNEL"
#: Where Debian's gramine package keeps libsysdb.so and runtime/glibc.
DEBIAN_PKGLIBDIR = Path("/usr/lib/x86_64-linux-gnu/gramine")
#: What ``python -m enclave.runtime`` imports beyond the standard library (plus their requirements).
RUNTIME_DISTRIBUTIONS = ("cryptography", "onnxruntime", "numpy")
#: Threads the runtime and Gramine need beside the AI's own: main, channel reader,
#: AI thread, one per TLS stream (``runtime.main.MAX_STREAMS`` = 32), and Gramine's
#: IPC, async and TLS-handshake helpers.
RUNTIME_THREADS = 40

# Left out of the standard library: never imported by the runtime, or rewritten at will.
_STDLIB_SKIP = frozenset({"__pycache__", "site-packages", "test", "idlelib", "tkinter", "turtledemo",
                          "ensurepip", "lib2to3"})
# Provided by Gramine's patched glibc in gramine.runtimedir(), mounted at /lib.
_GLIBC = re.compile(r"^(ld-linux.*|lib(c|m|mvec|dl|pthread|rt|util|resolv|anl|nsl|nss_\w+)\.so(\.\d+)*)$")
_SAFE_PATH = re.compile(r'^/[^"\\\x00-\x1f\x7f]*$')
_SIZE_UNITS = (("G", 1 << 30), ("M", 1 << 20), ("K", 1 << 10))


class GramineManifestError(ValueError):
    """A manifest cannot be rendered, or a rendered one is wrong; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(self.problems))


@dataclass(frozen=True)
class TrustedFile:
    path: str  # absolute, as seen inside the enclave (= on the host: mounts keep paths)
    sha256: str  # 64 hex digits


@dataclass(frozen=True)
class Limits:
    """What the manifest fixes: ``enclave_size`` (a power of two, bytes) and ``max_threads``.

    ``memory`` (the AI's resident memory) has no Gramine key: it must fit in
    the enclave, which SGX enforces. ``ai_threads`` caps the AI's thread pools.
    """

    enclave_size: int
    max_threads: int
    memory: int
    ai_threads: int

    @classmethod
    def for_ai(cls, res: Resources) -> Limits:
        return cls(enclave_size=res.enclave_size, max_threads=res.threads + RUNTIME_THREADS,
                   memory=res.memory, ai_threads=res.threads)

    def problems(self) -> list[str]:
        out = []
        if self.enclave_size & (self.enclave_size - 1) or self.enclave_size <= 0:
            out.append(f"enclave size {self.enclave_size} is not a power of two (SGX needs one)")
        if self.memory > self.enclave_size:
            out.append(f"memory {format_size(self.memory)} does not fit in the enclave ({format_size(self.enclave_size)})")
        if self.max_threads < self.ai_threads + RUNTIME_THREADS:
            out.append(f"max_threads {self.max_threads} leaves no room for the runtime's {RUNTIME_THREADS}")
        return out


@dataclass(frozen=True)
class RuntimeLayout:
    """Where the runtime's pieces are on this host (and, same paths, inside the enclave)."""

    python_argv0: str  # the venv's python: argv[0], so Python finds pyvenv.cfg
    python_bin: Path  # the real interpreter binary: libos.entrypoint
    venv: Path
    python_home: Path  # the base installation the venv points to
    enclave_dir: Path  # the ``enclave`` package
    arch_libdir: str = "/lib/x86_64-linux-gnu"

    @classmethod
    def current(cls) -> RuntimeLayout:
        import enclave

        return cls(python_argv0=sys.executable, python_bin=Path(sys.executable).resolve(),
                   venv=Path(sys.prefix).resolve(), python_home=Path(sys.base_prefix).resolve(),
                   enclave_dir=Path(enclave.__file__).resolve().parent)

    @property
    def stdlib(self) -> Path:
        return self.python_home / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

    @property
    def site_packages(self) -> Path:
        return self.venv / "lib" / f"python{sys.version_info[0]}.{sys.version_info[1]}" / "site-packages"

    def code_dirs(self) -> list[str]:
        """The mounts: python install, venv, enclave package (nested ones merged, /usr left to the libdir mounts)."""
        dirs: list[Path] = []
        for d in sorted({self.python_home, self.venv, self.enclave_dir}, key=lambda p: len(p.parts)):
            if not any(d == o or o in d.parents for o in dirs):
                dirs.append(d)
        return [str(d) for d in dirs]


@dataclass(frozen=True)
class GramineInstall:
    """Where Gramine's own files are: what stage 2 fills in (``gramine.libos``, ``gramine.runtimedir()``)."""

    pkglibdir: Path = DEBIAN_PKGLIBDIR

    @property
    def libos(self) -> Path:
        return self.pkglibdir / "libsysdb.so"

    def runtimedir(self, libc: str = "glibc") -> Path:
        return self.pkglibdir / "runtime" / libc


# -- the file set --------------------------------------------------------------


def _walk(root: Path, skip: frozenset[str] = frozenset()) -> Iterable[Path]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("config-"))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if p.is_file() and not name.endswith((".pyc", ".pyo")) and not name.startswith("_tkinter"):
                yield p


def _distribution_files(site: Path, names: Sequence[str]) -> list[Path]:
    """Every installed file of ``names`` and their (non-extra) requirements, from their RECORDs."""
    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in found:
            continue
        dists = list(importlib.metadata.distributions(name=name, path=[str(site)]))
        if not dists:
            if name in names:
                raise GramineManifestError([f"{name} is not installed in {site} (the runtime imports it)"])
            continue  # an optional requirement this platform does not install
        found[key] = dists[0]
        for req in dists[0].requires or []:
            if "extra ==" not in req:
                todo.append(re.match(r"[A-Za-z0-9_.-]+", req).group(0))  # type: ignore[union-attr]
    files: set[Path] = set()
    for dist in found.values():
        for rel in dist.files or []:
            p = Path(dist.locate_file(rel)).resolve()
            if "__pycache__" not in p.parts and p.suffix not in (".pyc", ".pyo") and p.is_file():
                files.add(p)
    return sorted(files)


@functools.lru_cache(maxsize=8)
def _shared_libraries(objects: tuple[str, ...], arch_libdir: str) -> tuple[Path, ...]:
    """The libraries ``objects`` load (``ldd``), minus glibc, under every libdir the loader searches."""
    if not objects:
        return ()
    out = subprocess.run(["ldd", *objects], capture_output=True, text=True, check=False,
                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"})
    libs: set[Path] = set()
    for line in out.stdout.splitlines():
        m = re.match(r"\s*(\S+)\s+=>\s+(/\S+)", line)
        if not m or _GLIBC.match(m.group(1)):
            continue
        found = Path(m.group(2))
        libs.add(found)
        # Inside, the loader searches LD_LIBRARY_PATH, not ld.so.cache: trust a system
        # library's name in each libdir where it exists (merged /usr gives both).
        system = (arch_libdir, "/usr" + arch_libdir)
        if str(found.parent) in system:
            libs.update(Path(d) / m.group(1) for d in system if (Path(d) / m.group(1)).is_file())
    return tuple(sorted(libs))


def runtime_files(layout: RuntimeLayout) -> list[Path]:
    """Every file the enclave may read, as absolute paths (see the module docstring)."""
    files: set[Path] = {layout.python_bin, layout.venv / "pyvenv.cfg"}
    files.update(layout.enclave_dir / rel for rel in measure.RUNTIME_FILES)
    files.update(_walk(layout.stdlib, _STDLIB_SKIP))
    files.update(_distribution_files(layout.site_packages, RUNTIME_DISTRIBUTIONS))
    objects = tuple(sorted(str(p) for p in files if p == layout.python_bin or ".so" in p.suffixes))
    files.update(_shared_libraries(objects, layout.arch_libdir))
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        raise GramineManifestError([f"runtime file {p} is missing" for p in sorted(missing)])
    return sorted(files)


@functools.lru_cache(maxsize=100_000)
def _hash_cached(path: str, size: int, mtime_ns: int, ino: int) -> str:
    return sha256_of(path)


def sha256_of(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


def trusted_files(paths: Iterable[Path]) -> list[TrustedFile]:
    """Hash ``paths`` (cached per process by size, mtime and inode: a re-render costs only stats)."""
    out = []
    for p in paths:
        st = p.stat()
        out.append(TrustedFile(str(p), _hash_cached(str(p), st.st_size, st.st_mtime_ns, st.st_ino)))
    return out


# -- rendering -----------------------------------------------------------------


def format_size(n: int) -> str:
    """Gramine's size syntax: the largest unit that divides ``n`` exactly ("1G", "512M", "4096")."""
    for suffix, unit in _SIZE_UNITS:
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def parse_size(text: str | int) -> int:
    if isinstance(text, int):
        return text
    m = re.fullmatch(r"(\d+)([KMG]?)", text.strip())
    if not m:
        raise ValueError(f"{text!r} is not a Gramine size")
    return int(m.group(1)) * dict(_SIZE_UNITS).get(m.group(2), 1)


def enclave_argv(layout: RuntimeLayout, quote_source: str) -> list[str]:
    """``loader.argv``: fixed in the manifest (measured), the channel address comes from CHANNEL_ENV."""
    return [layout.python_argv0, "-m", "enclave.runtime", "--socket", f"env:{CHANNEL_ENV}",
            "--quote-source", quote_source]


def variables(limits: Limits, layout: RuntimeLayout, *, quote_source: str,
              env: Mapping[str, str] | None = None, files: Sequence[TrustedFile] | None = None) -> dict[str, Any]:
    """The stage-1 variables; ``files`` defaults to hashing :func:`runtime_files`."""
    problems = limits.problems()
    paths = [str(layout.python_bin), layout.python_argv0, *layout.code_dirs(), layout.arch_libdir]
    problems += [f"path {p!r} cannot go into the manifest (quote, backslash or control character)"
                 for p in paths if not _SAFE_PATH.match(p)]
    reserved = {"LD_LIBRARY_PATH", "PYTHONPATH", "PYTHONDONTWRITEBYTECODE", "OMP_NUM_THREADS", CHANNEL_ENV}
    env = dict(env or {})
    problems += [f"environment variable {k!r} is set by the manifest itself" for k in env if k in reserved]
    problems += [f"environment variable name {k!r} is not a bare TOML key" for k in env
                 if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", k)]
    if problems:
        raise GramineManifestError(problems)
    if files is None:
        files = trusted_files(runtime_files(layout))
    # Stage 2 renders the output again: a path must carry no template markup (nor a quote).
    bad = [f.path for f in files if not _SAFE_PATH.match(f.path) or re.search(r"\{[{%#]", f.path)]
    if bad:
        raise GramineManifestError([f"trusted file {p!r} cannot go into the manifest" for p in bad])
    return {
        "python_bin": str(layout.python_bin),
        "argv": enclave_argv(layout, quote_source),
        "arch_libdir": layout.arch_libdir,
        "python_path": str(layout.enclave_dir.parent),
        "python_libdir": str(layout.python_home / "lib"),
        "ai_threads": limits.ai_threads,
        "env": env,
        "code_dirs": layout.code_dirs(),
        "enclave_size": format_size(limits.enclave_size),
        "max_threads": limits.max_threads,
        "trusted_files": list(files),
    }


def _jinja_env(**globals_: Any):
    import jinja2  # host side only

    # The settings gramine-manifest uses (graminelibos.gen_jinja_env): TOML, not HTML.
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True, autoescape=False)
    env.filters["toml_string"] = toml_string
    env.filters["toml_array"] = lambda items: "[" + ", ".join(toml_string(str(i)) for i in items) + "]"
    env.globals.update(globals_)
    return env


def render_template(vars_: Mapping[str, Any], template: Path = TEMPLATE) -> str:
    """Stage 1: the template with our variables; Gramine's globals are left for stage 2."""
    return _jinja_env().from_string(template.read_text()).render(**vars_)


def finish(stage1: str, install: GramineInstall) -> str:
    """Stage 2 as ``gramine-manifest`` does it: Gramine's globals, directory entries expanded
    and hashed (sorted, regular readable files, no descent into symlinked directories),
    ``loader.entrypoint`` set to libsysdb.so with its hash. Returns the final TOML."""
    import tomli_w

    gramine = {"libos": install.libos, "pkglibdir": install.pkglibdir, "runtimedir": install.runtimedir}
    doc = tomllib.loads(_jinja_env(gramine=gramine).from_string(stage1).render())
    entries: dict[str, dict[str, str]] = {}
    for item in doc.get("sgx", {}).get("trusted_files", []):
        item = {"uri": item} if isinstance(item, str) else dict(item)
        for uri, sha in _expand(item["uri"], item.get("sha256")):
            entries.setdefault(uri, {"uri": uri, "sha256": sha or sha256_of(uri[5:])})
    doc.setdefault("sgx", {})["trusted_files"] = list(entries.values())
    loader = doc.setdefault("loader", {}).setdefault("entrypoint", {})
    loader.setdefault("uri", f"file:{install.libos}")
    loader.setdefault("sha256", sha256_of(loader["uri"][5:]))
    return tomli_w.dumps(doc)


def _expand(uri: str, sha: str | None) -> Iterable[tuple[str, str | None]]:
    path = Path(uri.removeprefix("file:"))
    if not uri.endswith("/"):
        yield uri, sha
        return
    for p in sorted(path.glob("*")):
        if not (p.is_file() or p.is_dir()) or not os.access(p, os.R_OK):
            continue
        if p.is_dir():
            if not p.is_symlink():
                yield from _expand(f"file:{p}/", None)
        else:
            yield f"file:{p}", None


def render(limits: Limits, layout: RuntimeLayout, *, quote_source: str, env: Mapping[str, str] | None = None,
           install: GramineInstall | None = None) -> str:
    """Stage 1, or both stages when ``install`` is given (what the real tool would output)."""
    stage1 = render_template(variables(limits, layout, quote_source=quote_source, env=env))
    return stage1 if install is None else finish(stage1, install)


# -- checking ------------------------------------------------------------------


_FIXED = {
    ("sgx", "debug"): False,
    ("sgx", "remote_attestation"): "dcap",
    ("sgx", "edmm_enable"): False,
    ("sys", "enable_extra_runtime_domain_names_conf"): False,
}


def check_manifest(text: str, *, limits: Limits | None = None, argv: Sequence[str] | None = None,
                   required: Iterable[Path] = (), rehash: bool = True) -> list[str]:
    """Every problem with a rendered manifest (stage 1 or final); empty when it is right.

    ``rehash``: hash every trusted file again from disk (no cache) and compare.
    ``required``: files that must be trusted. ``limits``/``argv``: what it must fix.
    """
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"not valid TOML: {exc}"]
    problems: list[str] = []

    def get(*keys: str) -> Any:
        node: Any = doc
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                return None
            node = node[k]
        return node

    for keys, want in _FIXED.items():
        if get(*keys) != want:
            problems.append(f"{'.'.join(keys)} is {get(*keys)!r}, must be {want!r}")
    if get("sgx", "file_check_policy") not in (None, "strict"):
        problems.append(f"sgx.file_check_policy is {get('sgx', 'file_check_policy')!r}, must be 'strict'")
    if get("sgx", "allowed_files"):
        problems.append("sgx.allowed_files is set: the host could change those files unnoticed")
    if get("loader", "log_level") not in (None, "none", "error"):
        problems.append(f"loader.log_level is {get('loader', 'log_level')!r}: only 'error' is safe in production")
    problems += [f"{k} is set: insecure" for k in _dotted(doc) if "insecure__" in k]
    for name, value in (get("loader", "env") or {}).items():
        if isinstance(value, dict) and value.get("passthrough") and name != CHANNEL_ENV:
            problems.append(f"loader.env.{name} passes a host value through; only {CHANNEL_ENV} may")
    if argv is not None and get("loader", "argv") != list(argv):
        problems.append(f"loader.argv is {get('loader', 'argv')!r}, expected {list(argv)!r}")

    if limits is not None:
        try:
            size = parse_size(get("sgx", "enclave_size") or "")
        except ValueError as exc:
            problems.append(f"sgx.enclave_size: {exc}")
        else:
            if size != limits.enclave_size:
                problems.append(f"sgx.enclave_size is {format_size(size)}, the AI asks for {format_size(limits.enclave_size)}")
            if size < limits.memory:
                problems.append(f"sgx.enclave_size {format_size(size)} is smaller than the AI's memory {format_size(limits.memory)}")
        if get("sgx", "max_threads") != limits.max_threads:
            problems.append(f"sgx.max_threads is {get('sgx', 'max_threads')!r}, expected {limits.max_threads} "
                            f"(the AI's {limits.ai_threads} + the runtime's {RUNTIME_THREADS})")
        if get("loader", "env", "OMP_NUM_THREADS") != str(limits.ai_threads):
            problems.append(f"loader.env.OMP_NUM_THREADS is {get('loader', 'env', 'OMP_NUM_THREADS')!r}, "
                            f"the AI asks for {limits.ai_threads} threads")

    trusted: dict[str, str | None] = {}
    for item in get("sgx", "trusted_files") or []:
        uri, sha = (item, None) if isinstance(item, str) else (item.get("uri"), item.get("sha256"))
        if not isinstance(uri, str) or not uri.startswith("file:"):
            problems.append(f"trusted file entry {item!r} has no file: URI")
            continue
        trusted[uri[5:]] = sha
        if uri.endswith("/"):
            continue  # a directory: stage 2 expands and hashes it
        if not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha):
            problems.append(f"{uri} has no SHA-256 ({sha!r})")
        elif rehash:
            try:
                actual = sha256_of(uri[5:])
            except OSError as exc:
                problems.append(f"{uri} cannot be read: {exc.strerror or exc}")
                continue
            if actual != sha:
                problems.append(f"{uri}: the manifest says sha256 {sha[:16]}…, the file has {actual[:16]}…")
    problems += [f"{p} is not a trusted file" for p in sorted(map(str, required)) if p not in trusted]
    return problems


def validate(text: str, **kwargs: Any) -> None:
    """:func:`check_manifest`, raising :class:`GramineManifestError` with every problem."""
    problems = check_manifest(text, **kwargs)
    if problems:
        raise GramineManifestError(problems)


def _dotted(node: Any, prefix: str = "") -> Iterable[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield f"{prefix}{k}"
            yield from _dotted(v, f"{prefix}{k}.")


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m enclave.gramine_manifest render AI_DIR`` / ``check MANIFEST AI_DIR``: for operators."""
    import argparse

    from enclave.ai_manifest import ManifestError, load_manifest

    p = argparse.ArgumentParser(prog="python -m enclave.gramine_manifest",
                                description="Render or check the Gramine manifest of the enclave runtime for an AI.")
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("render", help="print the manifest (stage 1; both stages with --gramine)")
    r.add_argument("ai_dir")
    r.add_argument("--quote-source", default="dev-attestation", choices=("dev-attestation", "sim-host"))
    r.add_argument("--gramine", metavar="PKGLIBDIR", help=f"finish stage 2 with this Gramine (e.g. {DEBIAN_PKGLIBDIR})")
    c = sub.add_parser("check", help="list every problem of a rendered manifest (exit 1 if any)")
    c.add_argument("manifest")
    c.add_argument("ai_dir")
    args = p.parse_args(argv)
    try:
        limits = Limits.for_ai(load_manifest(args.ai_dir).resources)
        layout = RuntimeLayout.current()
        if args.cmd == "render":
            install = GramineInstall(Path(args.gramine)) if args.gramine else None
            sys.stdout.write(render(limits, layout, quote_source=args.quote_source, install=install))
            return 0
        problems = check_manifest(Path(args.manifest).read_text(), limits=limits, required=runtime_files(layout))
    except (ManifestError, GramineManifestError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for problem in problems:
        print(problem)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
