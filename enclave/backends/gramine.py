"""The ``gramine-direct`` and ``gramine-sgx`` backends: the runtime inside Gramine.

``start(spec)`` builds the enclave in a work directory (the spec's scratch
dir, which the enclave itself never sees: its /tmp is an in-enclave tmpfs)
and launches the loader there::

    ofenclave.manifest.in    <- our stage-1 rendering (enclave.gramine_manifest)
    gramine-manifest ofenclave.manifest.in ofenclave.manifest
    gramine-sgx-gen-private-key KEY          (sgx, only when KEY does not exist)
    gramine-sgx-sign --manifest ofenclave.manifest --output ofenclave.manifest.sgx --key KEY
    gramine-sgx ofenclave  |  gramine-direct ofenclave

:func:`build_commands` gives these exact command lines. The manifest fixes
the runtime's argv; the spec's argv only says which socket the host listens
on. Gramine allows no Unix socket to the host, so the backend relays: it
listens on 127.0.0.1 (an ephemeral port), hands the address to the enclave
through ``OFNODE_CHANNEL`` (the one passthrough variable), and splices the
connection to the spec's socket (:mod:`enclave.backends.relay`).

Quote source: ``gramine-sgx`` runs the runtime with ``--quote-source
dev-attestation`` (DCAP quotes from ``/dev/attestation``); ``gramine-direct``
has no SGX, so its runtime asks the host (``sim-host``, the simulated QE):
it is a development backend, like ``sim`` without bubblewrap's isolation.
"""

from __future__ import annotations

import functools
import glob
import logging
import math
import os
import re
import shlex
import shutil
import signal
from dataclasses import dataclass
from pathlib import Path

import trio

from enclave import gramine_manifest as gm
from enclave.ai_manifest import AiManifest
from enclave.backends.base import (
    SOCKET_DIR,
    Availability,
    Backend,
    BackendError,
    BackendUnavailable,
    EnclaveProcess,
    EnclaveSpec,
    ExitInfo,
)
from enclave.backends.process import LocalEnclaveProcess, RawExit, spawn
from enclave.backends.relay import ChannelRelay

__all__ = ["APP", "Commands", "GramineBackend", "GramineDirectBackend", "GramineSgxBackend", "build_commands"]

_log = logging.getLogger(__name__)

APP = "ofenclave"  # the loaders find ofenclave.manifest(.sgx) and ofenclave.sig by this stem
_SH = "/bin/sh"
_OOM = re.compile(r"MemoryError|std::bad_alloc|Cannot allocate memory|[Oo]ut of memory|-ENOMEM")
#: What gramine-sgx needs besides Gramine (module constants so tests can point them elsewhere).
SGX_DEVICES = ("/dev/sgx_enclave", "/dev/sgx_provision")
AESM_SOCKET = "/var/run/aesmd/aesm.socket"
QUOTE_PROVIDER = ("/usr/lib/x86_64-linux-gnu/libdcap_quoteprov.so*", "/usr/lib64/libdcap_quoteprov.so*",
                   "/usr/lib/libdcap_quoteprov.so*")
_INSTALL_GRAMINE = ("install Gramine 1.x (Debian/Ubuntu package 'gramine' from "
                    "https://packages.gramineproject.io, see https://gramine.readthedocs.io/en/stable/installation.html)")


@dataclass(frozen=True)
class Commands:
    """The command lines of one build and launch, all run in the work directory."""

    manifest: list[str]
    keygen: list[str] | None  # None: the signing key exists, or no SGX
    sign: list[str] | None
    run: list[str]


def build_commands(mode: str, key: Path | None = None, *, key_exists: bool = True) -> Commands:
    """The exact command lines for ``mode`` ``"direct"`` or ``"sgx"`` (``key``: the signing key)."""
    manifest = ["gramine-manifest", gm.MANIFEST_IN, gm.MANIFEST]
    if mode == "direct":
        return Commands(manifest, None, None, ["gramine-direct", APP])
    if mode != "sgx" or key is None:
        raise ValueError("mode must be 'direct', or 'sgx' with a signing key")
    keygen = None if key_exists else ["gramine-sgx-gen-private-key", str(key)]
    sign = ["gramine-sgx-sign", "--manifest", gm.MANIFEST, "--output", f"{gm.MANIFEST}.sgx", "--key", str(key)]
    return Commands(manifest, keygen, sign, ["gramine-sgx", APP])


def default_signing_key() -> Path:
    """Gramine's own default (``gramine-sgx-gen-private-key`` without an argument)."""
    base = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return base / "gramine" / "enclave-key.pem"


class GramineBackend(Backend):
    """Shared by both modes; use :class:`GramineDirectBackend` or :class:`GramineSgxBackend`."""

    mode = ""
    quote_source = ""
    tools: tuple[str, ...] = ()

    def __init__(self, *, signing_key: Path | None = None, layout: gm.RuntimeLayout | None = None) -> None:
        self.signing_key = signing_key
        self._layout = layout
        self._availability: Availability | None = None

    # -- availability --------------------------------------------------------

    def available(self) -> Availability:
        if self._availability is None:
            self._availability = self._check()
        return self._availability

    def _check(self) -> Availability:
        missing = [t for t in self.tools if shutil.which(t) is None]
        if missing:
            return Availability(False, f"Gramine is not installed (no {', '.join(missing)} on PATH); {_INSTALL_GRAMINE}")
        return Availability(True, f"{shutil.which(self.tools[-1])}; runtime quotes: {self.quote_source}")

    # -- start ---------------------------------------------------------------

    def limits(self, spec: EnclaveSpec, ai: AiManifest | None) -> gm.Limits:
        """The AI's limits when given, else the spec's: memory rounded up to a power of two."""
        if ai is not None:
            return gm.Limits.for_ai(ai.resources)
        size = 1 << max(spec.memory_bytes - 1, 1).bit_length()
        return gm.Limits(enclave_size=size, max_threads=spec.threads + gm.RUNTIME_THREADS,
                         memory=spec.memory_bytes, ai_threads=spec.threads)

    def commands(self) -> Commands:
        return build_commands(self.mode)

    async def start(self, spec: EnclaveSpec, *, ai: AiManifest | None = None) -> EnclaveProcess:
        """Build the manifest in ``spec.scratch_dir``, then run the loader there.

        ``spec.argv`` must be ``python -m enclave.runtime --socket /run/ofnode/NAME ...``:
        only NAME is used (the host's listener in ``spec.socket_dir``); the
        manifest fixes the rest, and its file set replaces ``spec.code_dirs``
        (``gramine_manifest.RuntimeLayout``). ``ai`` gives the limits (else the spec's).
        """
        avail = self.available()
        if not avail.ok:
            raise BackendUnavailable(avail.reason)
        sock = _socket_of(spec)
        workdir = spec.scratch_dir
        if not workdir.is_dir():
            raise BackendError(f"scratch_dir {workdir} is not a directory")
        limits = self.limits(spec, ai)
        layout = self._layout or gm.RuntimeLayout.current()
        try:
            text = await trio.to_thread.run_sync(functools.partial(
                gm.render, limits, layout, quote_source=self.quote_source, env=dict(spec.env)))
        except gm.GramineManifestError as exc:
            raise BackendError(f"cannot render the Gramine manifest: {exc}") from None
        problems = gm.check_manifest(text, limits=limits, argv=gm.enclave_argv(layout, self.quote_source), rehash=False)
        if problems:  # the template or a spec weakened something: never launch that
            raise BackendError(f"the rendered Gramine manifest is wrong: {'; '.join(problems)}")
        (workdir / gm.MANIFEST_IN).write_text(text)
        cmds = self.commands()
        for argv in (cmds.manifest, cmds.keygen, cmds.sign):
            if argv is not None:
                await _run_tool(argv, workdir)

        relay = ChannelRelay(sock)
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), gm.CHANNEL_ENV: relay.address}
        cpu = math.ceil(spec.cpu_seconds)
        # ulimit as in sim: no core files (enclave memory), CPU time soft then hard.
        script = f'ulimit -c 0 && ulimit -S -t {cpu} && ulimit -H -t {cpu + 1} && cd "$1" && shift && exec "$@"'
        try:
            popen, stderr_fd = spawn([_SH, "-c", script, "sh", str(workdir), *cmds.run], env=env)
        except BaseException:
            relay.close()
            raise
        relay.start()
        return LocalEnclaveProcess(popen, stderr_fd, classify=functools.partial(_classify, spec=spec),
                                   on_exit=relay.close)


class GramineDirectBackend(GramineBackend):
    """Gramine without SGX: the manifest and the LibOS, but no enclave and no quotes (development)."""

    name = "gramine-direct"
    mode = "direct"
    quote_source = "sim-host"
    tools = ("gramine-manifest", "gramine-direct")


class GramineSgxBackend(GramineBackend):
    """Gramine in an SGX enclave; the runtime's quotes come from /dev/attestation (DCAP)."""

    name = "gramine-sgx"
    mode = "sgx"
    quote_source = "dev-attestation"
    tools = ("gramine-manifest", "gramine-sgx-gen-private-key", "gramine-sgx-sign", "gramine-sgx")

    def _check(self) -> Availability:
        base = super()._check()
        problems = [] if base.ok else [base.reason]
        if not os.path.exists(SGX_DEVICES[0]):
            problems.append(f"no {SGX_DEVICES[0]} (needs an SGX CPU with flexible launch control, SGX enabled "
                            "in the BIOS, and Linux >= 5.11's in-kernel driver)")
        if not os.path.exists(SGX_DEVICES[1]):
            problems.append(f"no {SGX_DEVICES[1]} (the in-kernel driver's provisioning device, needed for DCAP "
                            "quotes; the node's user must be in its group, usually 'sgx_prv')")
        if not os.path.exists(AESM_SOCKET):
            problems.append(f"no AESM service ({AESM_SOCKET}); install Intel's 'sgx-aesm-service' with "
                            "'libsgx-aesm-ecdsa-plugin' and 'libsgx-aesm-quote-ex-plugin'")
        if not any(glob.glob(p) for p in QUOTE_PROVIDER):
            problems.append("no DCAP quote provider library (libdcap_quoteprov.so); install Intel's "
                            "'libsgx-dcap-default-qpl' and point /etc/sgx_default_qcnl.conf at a PCCS")
        if problems:
            return Availability(False, "; ".join(problems))
        return Availability(True, f"{base.reason}; SGX devices, AESM and the DCAP quote provider present")

    def commands(self) -> Commands:
        key = self.signing_key or default_signing_key()
        return build_commands(self.mode, key, key_exists=key.exists())


def _socket_of(spec: EnclaveSpec) -> Path:
    """The host path of the listener the runtime must reach (from ``--socket /run/ofnode/NAME``)."""
    argv = list(spec.argv)
    if argv[1:3] != ["-m", "enclave.runtime"] or "--socket" not in argv:
        raise BackendError(f"the Gramine backends run only 'python -m enclave.runtime --socket ...'; got {shlex.join(argv)}")
    inside = argv[argv.index("--socket") + 1] if argv.index("--socket") + 1 < len(argv) else ""
    name = inside.removeprefix(SOCKET_DIR + "/")
    if name == inside or not name or "/" in name:
        raise BackendError(f"--socket must name a socket in {SOCKET_DIR}; got {inside!r}")
    return spec.socket_dir / name


async def _run_tool(argv: list[str], cwd: Path) -> None:
    try:
        done = await trio.run_process(argv, cwd=str(cwd), capture_stdout=True, capture_stderr=True, check=False)
    except OSError as exc:
        raise BackendError(f"cannot run {argv[0]}: {exc}") from None
    if done.returncode != 0:
        out = (done.stderr or done.stdout).decode("utf-8", "replace").strip()[-2000:]
        raise BackendError(f"{shlex.join(argv)} failed (exit {done.returncode}): {out}")


def _classify(raw: RawExit, *, spec: EnclaveSpec) -> ExitInfo:
    if os.WIFSIGNALED(raw.status):
        code, sig = None, os.WTERMSIG(raw.status)
    else:
        code, sig = os.WEXITSTATUS(raw.status), None
    if raw.killed_by_us:
        reason = "killed"
    elif code == 0:
        reason = "ok"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and raw.cpu_seconds >= math.ceil(spec.cpu_seconds) - 0.05):
        reason = "cpu_time"
    elif _OOM.search(raw.stderr_tail):
        reason = "oom"
    elif sig == signal.SIGKILL:
        reason = "killed"
    else:
        reason = "error"
    return ExitInfo(code=code, signal=sig, reason=reason, stderr_tail=raw.stderr_tail)
