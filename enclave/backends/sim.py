"""The ``sim`` backend: the enclave runs in a bubblewrap sandbox on this host.

Not confidential (the host can read the sandbox's memory and files; only the
attestation is simulated), but it holds the other half of the contract: the
AI reaches neither the network nor the host's files, and cannot exhaust the
provider's machine. ``docs/backends.md`` has the full table; in short:

* namespaces: new mount, pid, net (no interfaces but its own loopback), ipc,
  uts (hostname ``enclave``) and cgroup namespaces; ``--die-with-parent`` and
  ``--new-session``;
* files: a fresh read-only root holding only ``/usr`` (+ the merged-usr
  symlinks), ``/etc/ld.so.cache`` and ``/etc/localtime``, the spec's code dirs
  read-only, ``/proc`` of its own pid namespace, a minimal ``/dev``, tmpfs
  ``/tmp`` and ``/dev/shm``, the socket dir at ``/run/ofnode`` and the scratch
  dir at ``/scratch``;
* identity: when the node is root, bwrap runs as root *without* a user
  namespace (so it can mount directories under ``/root``) and the command
  runs through ``setpriv`` as a fresh unprivileged uid (no capabilities, no
  bounding set, no supplementary groups, ``no_new_privs``). A user namespace
  would map the AI to host root, which owns ``/etc/shadow`` and escapes
  RLIMIT_NPROC; a uid of its own owns nothing on the host. When the node is
  not root, bwrap makes a user namespace and the AI keeps the node's uid;
* syscalls: the seccomp filter of ``enclave.backends.seccomp`` when
  libseccomp is present;
* limits: a cgroup (memory, pids, CPU bandwidth) when one can be made, else
  rlimits (RLIMIT_AS, RLIMIT_NPROC); RLIMIT_CPU always; RLIMIT_CORE 0 (no
  core files with the enclave's memory in them).

Chain of processes: ``sh`` (joins the cgroup, sets rlimits, execs) -> bwrap
monitor (the pid the node holds) -> bwrap init (pid 1 inside) -> the command.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import re
import resource
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import trio

from enclave.backends import cgroup as cgroups
from enclave.backends import seccomp
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
from enclave.backends.process import LocalEnclaveProcess, RawExit, spawn
from enclave.backends.sandbox_uid import (
    SANDBOX_UID_RANGE,
    UidPool,
    check_dirs,
    hand_over,
)

__all__ = ["SANDBOX_UID_RANGE", "SimBackend"]

_log = logging.getLogger(__name__)

# bwrap exits with 128 + N when the command was killed by signal N.
_SIGNAL_EXIT = range(129, 129 + 64)
# How a MemoryError looks when only RLIMIT_AS bounds memory.
_OOM_MARKERS = re.compile(r"MemoryError|std::bad_alloc|Cannot allocate memory|[Oo]ut of memory")
_NS_ROOT = ("--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try")
_NS_USER = ("--unshare-user", "--disable-userns", *_NS_ROOT)
_ETC_FILES = ("ld.so.cache", "localtime")
_TOP_LINKS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
_SH = "/bin/sh"


def _is_root() -> bool:
    return os.geteuid() == 0


@functools.lru_cache(maxsize=8)
def _probe_bwrap(bwrap: str, root: bool) -> tuple[bool, str]:
    """Can bwrap make our namespaces here? (cached: about 10 ms once)."""
    flags = _NS_ROOT if root else _NS_USER
    try:
        out = subprocess.run(
            [bwrap, *flags, "--ro-bind", "/", "/", "--", "true"],
            check=False, capture_output=True, text=True, timeout=10, env={}, stdin=subprocess.DEVNULL,
        )
        ver = subprocess.run([bwrap, "--version"], check=False, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"cannot run {bwrap}: {exc}"
    if out.returncode != 0:
        return False, (
            f"bwrap cannot create namespaces here ({out.stderr.strip() or f'exit {out.returncode}'}); "
            "run the node as root, or allow unprivileged user namespaces "
            "(sysctl user.max_user_namespaces > 0; in a container: a seccomp/AppArmor profile that allows unshare)"
        )
    return True, ver.stdout.strip() or "bwrap"


@functools.lru_cache(maxsize=1)
def _seccomp_note() -> tuple[bool, str]:
    try:
        seccomp.filter_bpf()
    except seccomp.SeccompUnavailable as exc:
        return False, f"seccomp filter unavailable: {exc}; running WITHOUT a syscall filter"
    return True, "seccomp filter on"


class SimBackend(Backend):
    """Run enclaves in a bubblewrap sandbox with simulated attestation.

    ``use_cgroups``/``use_seccomp`` exist to test the fallbacks; ``bwrap``
    overrides the binary (default: ``bwrap`` on PATH).
    """

    name = "sim"

    def __init__(self, *, use_cgroups: bool = True, use_seccomp: bool = True, bwrap: str | None = None) -> None:
        self.use_cgroups = use_cgroups
        self.use_seccomp = use_seccomp
        self._bwrap = bwrap
        self._uids = UidPool()
        self._availability: Availability | None = None
        self._swept = False

    # -- availability --------------------------------------------------------

    def bwrap_path(self) -> str | None:
        return self._bwrap if self._bwrap else shutil.which("bwrap")

    def available(self) -> Availability:
        if self._availability is None:
            self._availability = self._check()
        return self._availability

    def _check(self) -> Availability:
        bwrap = self.bwrap_path()
        if not bwrap or not os.access(bwrap, os.X_OK):
            return Availability(False, "bubblewrap is not installed (no bwrap on PATH); install Debian package 'bubblewrap'")
        ok, what = _probe_bwrap(bwrap, _is_root())
        if not ok:
            return Availability(False, what)
        if _is_root() and not os.access("/usr/bin/setpriv", os.X_OK):
            return Availability(False, "/usr/bin/setpriv (Debian util-linux) is needed to drop the sandbox to its own uid")
        notes = [what, "sandbox runs as its own unprivileged uid" if _is_root() else "sandbox keeps the node's uid"]
        notes.append(_seccomp_note()[1] if self.use_seccomp else "seccomp filter disabled by configuration")
        notes.append(f"limits: {cgroups.probe()}" if self.use_cgroups else "limits: cgroups disabled by configuration")
        return Availability(True, "; ".join(notes))

    def sweep(self) -> int:
        """Kill and remove the cgroups of sandboxes whose node died."""
        self._swept = True
        return cgroups.sweep_stale() if self.use_cgroups else 0

    # -- start ---------------------------------------------------------------

    async def start(self, spec: EnclaveSpec) -> EnclaveProcess:
        """Start the sandbox; return once the command runs and ``--die-with-parent`` is armed.

        bwrap arms PR_SET_PDEATHSIG in steps: the monitor right before it
        writes ``--info-fd``, the sandbox's pid 1 only after the mounts are
        set up, just after it forks the command. A node killed in between
        would leave the sandbox running (observed with a start() that did
        not wait), so start() waits for the info and then for the command
        to be exec'd. A node that dies *during* start() can still orphan a
        sandbox; with cgroups, the next node's first start() sweeps it.
        """
        avail = self.available()
        if not avail.ok:
            raise BackendUnavailable(avail.reason)
        bwrap = self.bwrap_path()
        assert bwrap
        check_dirs(spec, other_uid=_is_root())
        if not self._swept:
            self.sweep()
        uid = self._uids.allocate() if _is_root() else None
        cg: cgroups.EnclaveCgroup | None = None
        seccomp_fd = info_r = info_w = -1
        try:
            if uid is not None:
                hand_over(spec, uid)
            if self.use_cgroups:
                try:
                    cg = cgroups.EnclaveCgroup.create(
                        cgroups.name_for(),
                        spec.memory_bytes, spec.max_pids + 2, spec.threads)  # +2: bwrap's monitor and init
                except cgroups.CgroupUnavailable as exc:
                    _log.warning("enclave runs with rlimits only: %s", exc)
                    cg = None
            if self.use_seccomp and _seccomp_note()[0]:
                seccomp_fd = os.memfd_create("ofnode-seccomp", os.MFD_CLOEXEC)
                os.write(seccomp_fd, seccomp.filter_bpf())
                os.lseek(seccomp_fd, 0, os.SEEK_SET)
            info_r, info_w = os.pipe()
            argv = build_command(bwrap, spec, uid=uid, cgroup=cg, seccomp_fd=seccomp_fd, info_fd=info_w)
            popen, stderr_fd = spawn(argv, env={"PATH": "/usr/bin:/bin"},
                                     pass_fds=tuple(fd for fd in (seccomp_fd, info_w) if fd >= 0))
        except BaseException:
            if cg is not None:
                cg.remove()
            self._uids.release(uid)
            if info_r >= 0:
                os.close(info_r)
            raise
        finally:
            for fd in (seccomp_fd, info_w):
                if fd >= 0:
                    os.close(fd)

        def on_exit() -> None:
            if cg is not None:
                cg.kill_all()
                cg.remove()
            self._uids.release(uid)

        proc = LocalEnclaveProcess(
            popen, stderr_fd,
            classify=functools.partial(_classify, spec=spec, cg=cg),
            on_kill=cg.kill_all if cg is not None else (lambda: None),
            on_exit=on_exit,
        )
        try:
            info = await _read_all(info_r, timeout=30)
            child = re.search(rb'"child-pid"\s*:\s*(\d+)', info)
            if child is None:  # sh or bwrap failed before the sandbox existed
                exit_info = await proc.wait()
                raise BackendError(f"sandbox setup failed: {exit_info.stderr_tail.strip() or exit_info}")
            # The sandbox's pid 1: killing it tears down the whole pid namespace even
            # in the instant before its own parent-death signal is armed.
            proc.also_kill(int(child.group(1)))
            await _until_command_runs(int(child.group(1)), timeout=30)
        except BaseException:
            await proc.aclose()
            raise
        return proc


def _rlimits(spec: EnclaveSpec, *, uid: int | None, cgroup: cgroups.EnclaveCgroup | None) -> list[str]:
    """``ulimit`` commands for dash; clamped to the node's own hard limits."""
    cmds = ["ulimit -c 0"]

    def clamp(kind: int, value: int) -> int:
        hard = resource.getrlimit(kind)[1]
        return value if hard == resource.RLIM_INFINITY else min(value, hard)

    cpu = clamp(resource.RLIMIT_CPU, math.ceil(spec.cpu_seconds))
    cpu_hard = clamp(resource.RLIMIT_CPU, cpu + 1)  # soft: SIGXCPU; hard: SIGKILL a second later
    cmds += [f"ulimit -S -t {cpu}", f"ulimit -H -t {cpu_hard}"]
    if cgroup is None:
        kib = clamp(resource.RLIMIT_AS, spec.memory_bytes) // 1024
        cmds.append(f"ulimit -v {kib}")
    if cgroup is None or not cgroup.has_pids:
        # RLIMIT_NPROC counts the tasks of the real uid host-wide: exact for a
        # fresh sandbox uid, approximate when the sandbox keeps the node's uid.
        already = 0 if uid is not None else _tasks_of(os.getuid())
        cmds.append(f"ulimit -p {clamp(resource.RLIMIT_NPROC, spec.max_pids + already)}")
    return cmds


def _tasks_of(uid: int) -> int:
    n = 0
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                if os.stat(f"/proc/{p}").st_uid == uid:
                    n += len(os.listdir(f"/proc/{p}/task"))
            except OSError:
                pass
    return n


async def _read_all(fd: int, timeout: float) -> bytes:
    """Read a pipe to EOF without blocking the event loop; closes ``fd``."""
    chunks = []
    async with trio.lowlevel.FdStream(fd) as stream:
        with trio.fail_after(timeout):
            while chunk := await stream.receive_some(4096):
                chunks.append(chunk)
    return b"".join(chunks)


async def _until_command_runs(init_pid: int, timeout: float) -> None:
    """Poll until the sandbox's pid 1 has a child that is no longer bwrap (exec'd).

    Returns early if pid 1 is gone (setup failed: ``wait()`` will say why).
    """
    with trio.fail_after(timeout):
        while True:
            try:
                kids = Path(f"/proc/{init_pid}/task/{init_pid}/children").read_text().split()
            except OSError:
                return
            for kid in kids:
                try:
                    comm = Path(f"/proc/{kid}/comm").read_text().strip()
                except OSError:
                    continue
                if comm != "bwrap":
                    return
            await trio.sleep(0.001)


def build_command(bwrap: str, spec: EnclaveSpec, *, uid: int | None,
                  cgroup: cgroups.EnclaveCgroup | None, seccomp_fd: int = -1, info_fd: int = -1) -> list[str]:
    """The full argv: ``sh -c 'join cgroup; ulimit ...; exec "$@"' sh bwrap ... -- command``."""
    pre = [f"echo $$ > {shlex.quote(f)}" for f in (cgroup.procs_files() if cgroup else [])]
    pre += _rlimits(spec, uid=uid, cgroup=cgroup)
    script = " && ".join([*pre, 'exec "$@"'])

    b: list[str] = [bwrap, *(_NS_ROOT if uid is not None else _NS_USER)]
    b += ["--die-with-parent", "--new-session", "--hostname", "enclave", "--cap-drop", "ALL"]
    if uid is not None:  # only for setpriv, which drops them for good before the command runs
        b += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID", "--cap-add", "CAP_SETPCAP"]
    b += ["--ro-bind", "/usr", "/usr"]
    for name in _TOP_LINKS:
        host = Path("/") / name
        if host.is_symlink():
            b += ["--symlink", os.readlink(host), str(host)]
        elif host.is_dir():
            b += ["--ro-bind", str(host), str(host)]
    b += ["--perms", "0755", "--dir", "/etc"]
    for name in _ETC_FILES:
        host = Path("/etc") / name
        if host.is_symlink():
            b += ["--symlink", os.readlink(host), str(host)]
        elif host.is_file():
            b += ["--ro-bind", str(host), str(host)]
    # The private /tmp comes before the code binds, so a code dir that lives
    # under /tmp on the host (a checkout there) is bound on top of it.
    tmp_size = str(spec.memory_bytes)
    b += ["--proc", "/proc", "--dev", "/dev"]
    b += ["--perms", "1777", "--size", tmp_size, "--tmpfs", "/dev/shm"]
    b += ["--perms", "1777", "--size", tmp_size, "--tmpfs", "/tmp"]
    code = sorted(set(spec.code_dirs), key=lambda p: (len(p.parts), str(p)))
    made = {Path("/"), Path("/usr"), Path("/etc"), Path("/tmp")}
    for d in code:
        # bwrap would create missing parents 0700 (unreachable for the sandbox uid)
        for parent in reversed(d.parents):
            if parent not in made and not any(parent == c or c in parent.parents for c in code):
                b += ["--perms", "0755", "--dir", str(parent)]
                made.add(parent)
        if not (d == Path("/usr") or Path("/usr") in d.parents):
            b += ["--ro-bind", str(d), str(d)]
    b += ["--perms", "0755", "--dir", "/run"]
    b += ["--bind", str(spec.socket_dir), SOCKET_DIR, "--bind", str(spec.scratch_dir), SCRATCH_DIR]
    b += ["--remount-ro", "/", "--clearenv"]
    for k, v in sorted(spec.env.items()):
        b += ["--setenv", k, v]
    b += ["--chdir", SCRATCH_DIR]
    if seccomp_fd >= 0:
        b += ["--seccomp", str(seccomp_fd)]
    if info_fd >= 0:
        b += ["--info-fd", str(info_fd)]
    b.append("--")
    if uid is not None:
        b += ["/usr/bin/setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
              "--inh-caps=-all", "--bounding-set=-all", "--"]
    b += list(spec.argv)
    return [_SH, "-c", script, "sh", *b]


def _classify(raw: RawExit, *, spec: EnclaveSpec, cg: cgroups.EnclaveCgroup | None) -> ExitInfo:
    code: int | None
    sig: int | None
    if os.WIFSIGNALED(raw.status):  # the bwrap monitor itself was killed
        code, sig = None, os.WTERMSIG(raw.status)
    else:
        code = os.WEXITSTATUS(raw.status)
        sig = None
        if code in _SIGNAL_EXIT:
            code, sig = None, code - 128

    cpu_used = raw.cpu_seconds
    if cg is not None:
        cpu_used = max(cpu_used, cg.cpu_seconds() or 0.0)
    if raw.killed_by_us:
        reason = "killed"
    elif code == 0:
        reason = "ok"
    elif cg is not None and cg.oom_kills() > 0 or cg is None and _OOM_MARKERS.search(raw.stderr_tail):
        reason = "oom"
    elif sig == signal.SIGXCPU or (sig == signal.SIGKILL and cpu_used >= math.ceil(spec.cpu_seconds) - 0.05):
        reason = "cpu_time"
    elif sig == signal.SIGKILL:
        reason = "killed"
    else:
        reason = "error"
    return ExitInfo(code=code, signal=sig, reason=reason, stderr_tail=raw.stderr_tail)
