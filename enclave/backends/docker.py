"""The ``docker`` backend: the enclave runtime in a hardened container.

The seed's "secure Docker container": on hosts without SGX the attestation is
simulated exactly as in ``sim``; what docker adds is an isolation boundary
operators already know how to run and monitor. ``docs/backends.md`` has the
full table; in short every container gets:

* no network (``network_mode=none``: only its own loopback); the runtime's
  one link out is the Unix socket in the bind-mounted socket dir;
* a read-only root made from a tiny image built here ``FROM scratch`` (no
  registry is ever contacted): empty mount points, nothing else. ``/usr``, the
  Python install, the venv and the enclave package are bind-mounted read-only
  at their host paths, as in ``sim``; the image is tagged with the hash of its
  contents, so a changed layout is a new image;
* ``/scratch``, ``/tmp`` and ``/dev/shm`` as tmpfs inside the memory limit: the
  decrypted AI and the TLS key never touch the host's disk;
* ``cap_drop=ALL``, ``no-new-privileges``, docker's default seccomp profile,
  a uid of its own (never root, owns nothing on the host), a private pid,
  ipc and uts namespace;
* limits: memory (= memory+swap: no swap), pids, CPU bandwidth (``threads``
  cores), RLIMIT_CPU, no core files; docker's ``--init`` is pid 1 so a child
  killed by RLIMIT_CPU is reaped and reported (``128 + signal``);
* labels naming the node process that owns it: containers left by a node
  that died are removed by ``sweep()`` when the next node starts.

On SGX hosts the devices ``/dev/sgx_enclave`` and ``/dev/sgx_provision`` are
passed through (``sgx_devices``) for a Gramine Shielded Container image; that
path cannot run on this project's machines and is documented, not tested.

The docker SDK is blocking (requests over the Unix socket): every call runs
in a worker thread. Killing is not an API call: the container's pid 1 is
signalled through a pidfd, which is instant, never blocks the event loop, and
takes the whole pid namespace down with it.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import logging
import math
import os
import signal
import socket
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from enclave.backends.base import (
    SCRATCH_DIR,
    SOCKET_DIR,
    Availability,
    Backend,
    BackendError,
    BackendUnavailable,
    EnclaveProcess,
    EnclaveSpec,
    ExitInfo,
)
from enclave.backends.process import TAIL_BYTES
from enclave.backends.sandbox_uid import UidPool, check_dirs, hand_over

__all__ = ["IMAGE_REPOSITORY", "LABEL", "DockerBackend", "DockerEnclaveProcess", "image_tarball"]

_log = logging.getLogger(__name__)

IMAGE_REPOSITORY = "ofnode-enclave"
#: Every enclave container carries this label (value: "1"); the owner labels say which node process made it.
LABEL = "ofnode.enclave"
_OWNER_PID, _OWNER_START = "ofnode.owner-pid", "ofnode.owner-start"
_TOP_LINKS = ("bin", "lib", "lib32", "lib64", "libx32")
_ETC_FILES = ("ld.so.cache", "localtime")
_SIGNAL_EXIT = range(129, 129 + 64)  # docker-init exits 128+N when its child died of signal N
_API_TIMEOUT = 30


def image_tarball() -> bytes:
    """The image's whole root filesystem: mount points and the host's merged-/usr links.

    Deterministic (fixed owners, modes and mtimes), so its hash names the image.
    ``/sbin`` is a real, empty directory: docker mounts its init there, and a
    link into the read-only ``/usr`` would leave it nowhere to go.
    """
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        def add(name: str, kind: bytes, mode: int, target: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, target
            tar.addfile(info)

        for d in ("dev", "etc", "proc", "run", "run/ofnode", "sbin", "scratch", "sys", "usr"):
            add(d, tarfile.DIRTYPE, 0o755)
        add("tmp", tarfile.DIRTYPE, 0o1777)
        for name in _TOP_LINKS:
            host = Path("/") / name
            if host.is_symlink():
                add(name, tarfile.SYMTYPE, 0o777, os.readlink(host))
            elif host.is_dir():
                add(name, tarfile.DIRTYPE, 0o755)
    return buf.getvalue()


def _daemon_version(url: str, timeout: float = 2.0) -> str:
    """dockerd's version from ``GET /version`` on its Unix socket (raises OSError/ValueError)."""
    if not url.startswith("unix://"):
        raise ValueError("only a unix:// docker socket is supported")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(url.removeprefix("unix://"))
        s.sendall(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
        reply = b""
        while len(reply) < 1 << 16 and (chunk := s.recv(8192)):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    if b" 200 " not in head.split(b"\r\n", 1)[0]:
        raise ValueError(f"unexpected reply {head[:40]!r}")
    return str(json.loads(body).get("Version", "?"))


def _start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (clock ticks since boot): with the pid, a unique process id."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rpartition(")")[2].split()[19]


@dataclass(frozen=True)
class _Owner:
    pid: str
    start: str

    @classmethod
    def me(cls) -> _Owner:
        return cls(str(os.getpid()), _start_time(os.getpid()) or "0")

    def alive(self) -> bool:
        return self.pid.isdigit() and _start_time(int(self.pid)) == self.start


class DockerBackend(Backend):
    """Run enclaves in hardened containers on a local dockerd.

    ``base_url``: the docker API (default: ``DOCKER_HOST`` or the standard
    socket). ``sgx_devices``: pass the SGX devices through (default: when
    the host has them).
    """

    name = "docker"

    def __init__(self, *, base_url: str | None = None, sgx_devices: bool | None = None) -> None:
        self._base_url = base_url
        self._client: Any = None
        self._availability: Availability | None = None
        self._image: str | None = None
        self._image_lock = threading.Lock()
        self._uids = UidPool()
        self._swept = False
        self._sgx_devices = sgx_devices

    # -- the docker API ------------------------------------------------------

    def client(self) -> Any:
        """The low-level docker API client (made on first use)."""
        if self._client is None:
            import docker

            self._client = docker.APIClient(base_url=self._url(), timeout=_API_TIMEOUT, version="auto")
        return self._client

    def available(self) -> Availability:
        # Only a yes is cached: a dockerd started after the node is picked up on the next look.
        if self._availability is None or not self._availability.ok:
            a = self._check()
            if a.ok:
                self._availability = a
            return a
        return self._availability

    def _url(self) -> str:
        return self._base_url or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"

    def _check(self) -> Availability:
        # Asked before every offer (inventory): no SDK import, one raw request on the socket.
        if importlib.util.find_spec("docker") is None:
            return Availability(False, "the Python package 'docker' is not installed (pip install docker)")
        try:
            version = _daemon_version(self._url())
        except (OSError, ValueError) as exc:
            return Availability(False, f"no docker daemon answers at {self._url()} ({exc}); "
                                       "start dockerd (Debian package docker.io), e.g. "
                                       "`dockerd --bridge=none --iptables=false --ip6tables=false`")
        if os.geteuid() != 0:
            return Availability(False, "the docker backend needs a node running as root "
                                       "(it hands the enclave's socket and scratch to a uid of its own)")
        return Availability(True, f"dockerd {version}; no network, read-only root, "
                                  "cap-drop ALL, no-new-privileges, init, a uid of its own, tmpfs scratch; "
                                  f"image {self.image_tag()} (built here on first use)")

    def image_tag(self) -> str:
        return f"{IMAGE_REPOSITORY}:{hashlib.sha256(image_tarball()).hexdigest()[:16]}"

    def ensure_image(self) -> str:
        """Build the enclave image from nothing unless it exists; return its tag (blocking)."""
        with self._image_lock:
            if self._image is not None:
                return self._image
            import docker.errors

            tag = self.image_tag()
            api = self.client()
            try:
                api.inspect_image(tag)
            except docker.errors.ImageNotFound:
                _log.info("building enclave image %s from scratch (first use on this host)", tag)
                repo, _, version = tag.partition(":")
                api.import_image_from_data(image_tarball(), repository=repo, tag=version,
                                           changes=[f"LABEL {LABEL}.image=1"])
                api.inspect_image(tag)  # fails loudly if the import did not produce it
            self._image = tag
            return tag

    def sweep(self) -> int:
        """Remove enclave containers whose node process is gone; return how many (blocking)."""
        api = self.client()
        removed = 0
        for c in api.containers(all=True, filters={"label": f"{LABEL}=1"}):
            labels = c.get("Labels") or {}
            if _Owner(labels.get(_OWNER_PID, ""), labels.get(_OWNER_START, "")).alive():
                continue
            try:
                api.remove_container(c["Id"], force=True)
                removed += 1
            except Exception as exc:  # noqa: BLE001 - one stuck container must not stop the sweep
                _log.warning("could not remove stale enclave container %s: %s", c["Id"][:12], exc)
        if removed:
            _log.info("removed %d enclave container(s) left by a node that is gone", removed)
        return removed

    async def start(self, spec: EnclaveSpec) -> EnclaveProcess:
        avail = self.available()
        if not avail.ok:
            raise BackendUnavailable(avail.reason)
        check_dirs(spec, other_uid=True)
        if not self._swept:
            await trio.to_thread.run_sync(self.sweep)
            self._swept = True
        image = await trio.to_thread.run_sync(self.ensure_image)
        uid = self._uids.allocate()
        cid: str | None = None
        try:
            hand_over(spec, uid)
            config = self.container_config(spec, image, uid)
            cid = await trio.to_thread.run_sync(self._create_and_start, config)
            state = (await trio.to_thread.run_sync(self.client().inspect_container, cid))["State"]
        except BaseException as exc:
            with trio.CancelScope(shield=True):
                if cid is not None:
                    await trio.to_thread.run_sync(self._remove, cid)
            self._uids.release(uid)
            if isinstance(exc, Exception) and not isinstance(exc, BackendError):
                raise BackendError(f"docker could not start the enclave: {exc}") from exc
            raise
        return DockerEnclaveProcess(self, cid, state, spec, on_exit=lambda: self._uids.release(uid))

    def container_config(self, spec: EnclaveSpec, image: str, uid: int) -> dict[str, Any]:
        """The full create-container request for ``spec`` (pure: tests read it)."""
        from docker.types import LogConfig, Ulimit

        binds: dict[str, dict[str, str]] = {"/usr": {"bind": "/usr", "mode": "ro"}}
        for name in _TOP_LINKS:
            host = Path("/") / name
            if host.is_dir() and not host.is_symlink():
                binds[str(host)] = {"bind": str(host), "mode": "ro"}
        for name in _ETC_FILES:
            host = Path("/etc") / name
            if host.exists():
                binds[str(host.resolve())] = {"bind": str(host), "mode": "ro"}
        for d in spec.code_dirs:
            if not (d == Path("/usr") or Path("/usr") in d.parents):
                binds[str(d)] = {"bind": str(d), "mode": "ro"}
        binds[str(spec.socket_dir)] = {"bind": SOCKET_DIR, "mode": "rw"}

        mem = spec.memory_bytes
        cpu_soft = math.ceil(spec.cpu_seconds)
        devices = []
        if self._sgx_devices or (self._sgx_devices is None and os.path.exists("/dev/sgx_enclave")):
            devices = [f"{d}:{d}:rwm" for d in ("/dev/sgx_enclave", "/dev/sgx_provision") if os.path.exists(d)]
        owner = _Owner.me()
        host_config = self.client().create_host_config(
            binds=binds,
            network_mode="none",
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            init=True,
            mem_limit=mem,
            memswap_limit=mem,
            pids_limit=spec.max_pids + 1,  # +1: docker-init
            nano_cpus=spec.threads * 1_000_000_000,
            ulimits=[Ulimit(name="cpu", soft=cpu_soft, hard=cpu_soft + 1), Ulimit(name="core", soft=0, hard=0)],
            tmpfs={
                SCRATCH_DIR: f"rw,nosuid,nodev,noexec,size={mem},mode=0700,uid={uid},gid={uid}",
                "/tmp": f"rw,nosuid,nodev,noexec,size={mem},mode=1777",
            },
            shm_size=min(mem, 64 << 20),
            ipc_mode="private",
            oom_score_adj=1000,  # under host memory pressure the enclave goes before the node
            devices=devices,
            log_config=LogConfig(type="json-file", config={"max-size": "64k", "max-file": "1"}),
        )
        return {
            "image": image,
            "command": list(spec.argv),
            "user": f"{uid}:{uid}",
            "environment": dict(spec.env),
            "working_dir": SCRATCH_DIR,
            "hostname": "enclave",
            "network_disabled": True,
            "labels": {LABEL: "1", _OWNER_PID: owner.pid, _OWNER_START: owner.start},
            "host_config": host_config,
        }

    def _create_and_start(self, config: dict[str, Any]) -> str:
        api = self.client()
        cid = api.create_container(**config)["Id"]
        try:
            api.start(cid)
        except BaseException:
            self._remove(cid)
            raise
        return cid

    def _remove(self, cid: str) -> None:
        try:
            self.client().remove_container(cid, force=True)
        except Exception as exc:  # noqa: BLE001 - the sweep retries whatever is left
            _log.warning("could not remove enclave container %s: %s", cid[:12], exc)


class DockerEnclaveProcess(EnclaveProcess):
    """One running enclave container; removed once it has ended and been reported."""

    def __init__(self, backend: DockerBackend, cid: str, state: dict[str, Any], spec: EnclaveSpec,
                 on_exit: Any) -> None:
        self._backend, self.container_id, self._spec, self._on_exit = backend, cid, spec, on_exit
        self._pid = int(state.get("Pid") or 0)
        self._pidfd: int | None = None
        if state.get("Running") and self._pid > 0:
            try:
                self._pidfd = os.pidfd_open(self._pid)
            except OSError:  # already gone: wait() will tell how
                self._pidfd = None
        self._killed = False
        self._exit: ExitInfo | None = None
        self._lock = trio.Lock()

    @property
    def pid(self) -> int:
        return self._pid

    def send_kill(self) -> None:
        if self._exit is not None or self._pidfd is None:
            return
        try:
            signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
            self._killed = True
        except OSError:
            pass  # already exited

    async def wait(self) -> ExitInfo:
        async with self._lock:
            if self._exit is None:
                api = self._backend.client()
                await trio.to_thread.run_sync(lambda: api.wait(self.container_id, timeout=None),
                                              abandon_on_cancel=True)
                with trio.CancelScope(shield=True):
                    self._exit = await trio.to_thread.run_sync(self._finish)
        return self._exit

    def _finish(self) -> ExitInfo:
        """Read how it ended, then remove it (blocking; runs once)."""
        api = self._backend.client()
        try:
            state = api.inspect_container(self.container_id)["State"]
            logs = api.logs(self.container_id, stdout=True, stderr=True, tail=200)[-TAIL_BYTES:]
        finally:
            self._backend._remove(self.container_id)
            if self._pidfd is not None:
                os.close(self._pidfd)
                self._pidfd = None
            self._on_exit()
        return classify(state, spec=self._spec, killed_by_us=self._killed,
                        stderr_tail=logs.decode("utf-8", "replace"))


def _wall_seconds(state: dict[str, Any]) -> float:
    from datetime import datetime

    def parse(ts: str) -> float:
        ts = ts.rstrip("Z")
        head, _, frac = ts.partition(".")
        return datetime.fromisoformat(head + "+00:00").timestamp() + float("0." + (frac or "0"))

    try:
        return max(0.0, parse(state["FinishedAt"]) - parse(state["StartedAt"]))
    except (KeyError, ValueError):
        return math.inf


def classify(state: dict[str, Any], *, spec: EnclaveSpec, killed_by_us: bool, stderr_tail: str) -> ExitInfo:
    """How a container ended, in the terms of ``ExitInfo``.

    A SIGKILL that was neither ours nor the OOM killer's is the RLIMIT_CPU
    hard limit only if the container ran long enough to use that much CPU:
    CPU time can never exceed wall time times the cores it was allowed.
    """
    raw = int(state.get("ExitCode", -1))
    code: int | None = raw
    sig: int | None = None
    if raw in _SIGNAL_EXIT:
        code, sig = None, raw - 128
    if killed_by_us:
        reason = "killed"
    elif state.get("OOMKilled"):
        reason = "oom"
    elif code == 0:
        reason = "ok"
    elif sig == signal.SIGXCPU:
        reason = "cpu_time"
    elif sig == signal.SIGKILL:
        ran_long_enough = _wall_seconds(state) * spec.threads >= math.ceil(spec.cpu_seconds) - 0.05
        reason = "cpu_time" if ran_long_enough else "killed"
    else:
        reason = "error"
    return ExitInfo(code=code, signal=sig, reason=reason, stderr_tail=stderr_tail)
