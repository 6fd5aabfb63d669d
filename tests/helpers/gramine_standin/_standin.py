"""STAND-IN for Gramine's command-line tools (Gramine cannot be installed here).

Each executable in this directory is named like the Gramine tool it stands in
for and runs ``main(tool, argv)``. Every call is recorded, one JSON line
``{"tool", "argv", "cwd"}``, in ``gramine-standin.log`` of the working
directory (the backend runs all tools in its work directory), so tests can
check the exact command lines and their order.

* ``gramine-manifest IN OUT``: stage 2 as the real tool does it, by
  ``enclave.gramine_manifest.finish`` with a fake Gramine install in
  ``pkglib/`` (a dummy libsysdb.so and runtime/glibc).
* ``gramine-sgx-gen-private-key KEY``: writes a placeholder key (not RSA).
* ``gramine-sgx-sign --manifest M --output O --key K``: copies M to O and
  writes a placeholder ``.sig`` (no SIGSTRUCT).
* ``gramine-direct APP`` / ``gramine-sgx APP``: what the LibOS would start,
  WITHOUT any isolation: checks every trusted file's SHA-256 (as SGX does
  on open), builds the environment from ``loader.env`` (passthrough from
  ours), emulates the tmpfs ``/tmp`` with a fresh directory (TMPDIR, start
  dir), then execs ``libos.entrypoint`` with ``loader.argv``. For
  ``gramine-sgx``, when the work dir holds ``gramine-standin-attestation``
  (a directory path), that directory is bound at ``/dev/attestation`` with
  bubblewrap, so a test can play Gramine's quote files.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import tempfile
import tomllib
from pathlib import Path

HERE = Path(__file__).resolve().parent
#: In the work dir, names a directory that plays /dev/attestation for ``gramine-sgx``.
ATTESTATION_FILE = "gramine-standin-attestation"
REPO = HERE.parents[2]


def _record(tool: str, argv: list[str]) -> None:
    with open("gramine-standin.log", "a") as log:
        log.write(json.dumps({"tool": tool, "argv": [tool, *argv], "cwd": os.getcwd()}) + "\n")


def _fail(tool: str, msg: str) -> None:
    print(f"{tool} (stand-in): {msg}", file=sys.stderr)
    sys.exit(1)


def _opt(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def main(tool: str, argv: list[str]) -> None:
    _record(tool, argv)
    if tool == "gramine-manifest":
        sys.path.insert(0, str(REPO))
        from enclave.gramine_manifest import GramineInstall, finish

        src, dst = [a for a in argv if not a.startswith("-")]
        Path(dst).write_text(finish(Path(src).read_text(), GramineInstall(HERE / "pkglib")))
    elif tool == "gramine-sgx-gen-private-key":
        Path(argv[-1]).parent.mkdir(parents=True, exist_ok=True)
        Path(argv[-1]).write_text("STAND-IN KEY: not an RSA key\n")
    elif tool == "gramine-sgx-sign":
        if not Path(_opt(argv, "--key")).is_file():
            _fail(tool, f"no key {_opt(argv, '--key')}")
        manifest = _opt(argv, "--manifest")
        shutil.copyfile(manifest, _opt(argv, "--output"))
        Path(manifest.removesuffix(".manifest") + ".sig").write_bytes(b"STAND-IN SIGSTRUCT")
    elif tool in ("gramine-direct", "gramine-sgx"):
        _launch(tool, argv[0], sgx=tool == "gramine-sgx")
    else:
        _fail(tool, "unknown tool")


def _launch(tool: str, app: str, *, sgx: bool) -> None:
    path = Path(app + (".manifest.sgx" if sgx else ".manifest"))
    if not path.is_file():
        _fail(tool, f"{path} does not exist")
    if sgx and not Path(app + ".sig").is_file():
        _fail(tool, f"{app}.sig does not exist")
    doc = tomllib.loads(path.read_text())
    for tf in doc["sgx"]["trusted_files"]:
        file = tf["uri"].removeprefix("file:")
        if hashlib.sha256(Path(file).read_bytes()).hexdigest() != tf["sha256"]:
            _fail(tool, f"trusted file {file} does not match its sha256 in the manifest")
    env = {}
    for name, value in doc["loader"].get("env", {}).items():
        if isinstance(value, dict) and value.get("passthrough"):
            if name in os.environ:
                env[name] = os.environ[name]
        else:
            env[name] = value["value"] if isinstance(value, dict) else value
    att = Path(ATTESTATION_FILE).resolve()
    tmp = tempfile.mkdtemp(prefix="standin-tmpfs-", dir=os.getcwd())  # the manifest's tmpfs /tmp
    env["TMPDIR"] = tmp
    os.chdir(tmp)
    entry, argv = doc["libos"]["entrypoint"], doc["loader"]["argv"]
    if sgx and att.is_file():
        # Gramine's /dev/attestation, played by a test-owned directory bound there with
        # bubblewrap (a fresh /dev; the host's / otherwise). bwrap execs argv[0] itself,
        # so it must be the entrypoint or a symlink to it.
        if os.path.realpath(argv[0]) != os.path.realpath(entry):
            _fail(tool, f"argv[0] {argv[0]} is not the entrypoint {entry}")
        bwrap = shutil.which("bwrap") or _fail(tool, "bubblewrap is needed to stand in for /dev/attestation")
        argv = [bwrap, "--bind", "/", "/", "--dev", "/dev", "--bind", att.read_text().strip(), "/dev/attestation",
                "--chdir", tmp, "--", *argv]
        entry = bwrap
    os.execve(entry, argv, env)
