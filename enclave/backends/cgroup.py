"""Per-enclave cgroups: memory, pids and CPU limits that hold for the whole tree.

Why cgroups and not only rlimits: RLIMIT_AS counts address space, not memory
(onnxruntime and glibc reserve far more than they touch), and RLIMIT_NPROC
counts per host uid across the machine. A cgroup bounds the resident memory
and the number of tasks of exactly the enclave's processes, and the kernel
reports OOM kills in it, which is how ``ExitInfo.reason == "oom"`` is known
rather than guessed.

Both layouts are handled: cgroup v1 (one hierarchy per controller, as on this
project's machines, where the ``unified`` v2 mount carries no controllers)
and pure cgroup v2. The enclave's cgroup is made *under the node's own
cgroup*, so whatever limits the node lives under also cover its enclaves,
and is removed when the enclave is gone. Nothing here is required: when the
hierarchy is read-only or the node is not root, ``create()`` raises
``CgroupUnavailable`` and the backend falls back to rlimits.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["CgroupUnavailable", "EnclaveCgroup", "name_for", "probe", "sweep_stale"]

_V1_CONTROLLERS = ("memory", "pids", "cpu", "cpuacct")
# ofnode-<node pid>-<n>: the node's pid lets a later node find what a crashed one left.
_NAME = re.compile(r"^ofnode-(?:probe-)?(\d+)(?:-\d+)?$")


_serial = itertools.count(1)


def name_for() -> str:
    """A fresh cgroup name, unique within this node process (across backend instances)."""
    return f"ofnode-{os.getpid()}-{next(_serial)}"


class CgroupUnavailable(RuntimeError):
    """No writable cgroup hierarchy with a memory controller."""


def _mounts() -> tuple[dict[str, tuple[Path, str]], tuple[Path, str] | None]:
    """v1 controller -> (mount point, mount root); and the v2 (mount point, root)."""
    v1: dict[str, tuple[Path, str]] = {}
    v2: tuple[Path, str] | None = None
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            parts, rparts = left.split(), right.split()
            if len(parts) < 5 or len(rparts) < 3:
                continue
            fstype, root, mnt = rparts[0], parts[3], Path(parts[4])
            if fstype == "cgroup2" and v2 is None:
                v2 = (mnt, root)
            elif fstype == "cgroup":
                for opt in rparts[2].split(","):
                    if opt in _V1_CONTROLLERS:
                        v1.setdefault(opt, (mnt, root))
    return v1, v2


def _own_paths() -> dict[str, str]:
    """controller ('' for v2) -> this process's cgroup path, from /proc/self/cgroup."""
    out: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(",") if ctrls else [""]:
                out[c] = path
    return out


def _under(mnt: Path, root: str, own: str) -> Path:
    """Directory of ``own`` inside a hierarchy mounted at ``mnt`` showing ``root``."""
    rel = own
    if root not in ("/", "") and (own == root or own.startswith(root.rstrip("/") + "/")):
        rel = own[len(root):]
    return mnt / rel.lstrip("/")


def _write(path: Path, value: str) -> None:
    with open(path, "w") as f:
        f.write(value)


def _read_kv(path: Path) -> dict[str, int]:
    out: dict[str, int] = {}
    try:
        for line in path.read_text().splitlines():
            k, _, v = line.partition(" ")
            if v.strip().lstrip("-").isdigit():
                out[k] = int(v)
    except OSError:
        pass
    return out


@dataclass
class EnclaveCgroup:
    """One enclave's cgroup: one directory (v2) or one per controller (v1)."""

    version: int
    dirs: dict[str, Path]  # controller -> directory ("memory", "pids", "cpu", "cpuacct")
    controllers: tuple[str, ...] = field(default=())

    @classmethod
    def create(cls, name: str, memory_bytes: int, max_pids: int, cpus: int) -> EnclaveCgroup:
        """Make and configure the cgroup; raise CgroupUnavailable if that is impossible."""
        if os.geteuid() != 0:
            raise CgroupUnavailable("cgroups need root (the node is not root)")
        try:
            v1, v2 = _mounts()
            own = _own_paths()
        except OSError as exc:
            raise CgroupUnavailable(f"cannot read cgroup mounts: {exc}") from exc
        if "memory" in v1:
            cg = cls._make_v1(name, v1, own)
        elif v2 is not None:
            cg = cls._make_v2(name, v2, own.get("", "/"))
        else:
            raise CgroupUnavailable("no cgroup hierarchy with a memory controller is mounted")
        try:
            cg._configure(memory_bytes, max_pids, cpus)
        except OSError as exc:
            cg.remove()
            raise CgroupUnavailable(f"cannot configure cgroup: {exc}") from exc
        return cg

    @classmethod
    def _make_v1(cls, name: str, v1: dict[str, tuple[Path, str]], own: dict[str, str]) -> EnclaveCgroup:
        dirs: dict[str, Path] = {}
        made: list[Path] = []
        for ctrl in _V1_CONTROLLERS:
            if ctrl not in v1:
                continue
            mnt, root = v1[ctrl]
            d = _under(mnt, root, own.get(ctrl, "/")) / name
            if d in made:  # co-mounted controllers (cpu,cpuacct) share a directory
                dirs[ctrl] = d
                continue
            try:
                d.mkdir()
            except OSError as exc:
                if ctrl == "memory":
                    for m in made:
                        _rmdir(m)
                    raise CgroupUnavailable(f"cannot create {d}: {exc}") from exc
                continue  # an optional controller we cannot use
            made.append(d)
            dirs[ctrl] = d
        return cls(1, dirs, tuple(dirs))

    @classmethod
    def _make_v2(cls, name: str, v2: tuple[Path, str], own: str) -> EnclaveCgroup:
        mnt, root = v2
        parent = _under(mnt, root, own)
        try:
            available = (parent / "cgroup.controllers").read_text().split()
        except OSError as exc:
            raise CgroupUnavailable(f"cannot read {parent}/cgroup.controllers: {exc}") from exc
        wanted = [c for c in ("memory", "pids", "cpu") if c in available]
        if "memory" not in wanted:
            raise CgroupUnavailable(f"the memory controller is not delegated to {parent}")
        try:
            # Fails with EBUSY when the node's own cgroup holds processes and is not
            # the root (cgroup v2's no-internal-processes rule): then rlimits it is.
            _write(parent / "cgroup.subtree_control", " ".join("+" + c for c in wanted))
            d = parent / name
            d.mkdir()
        except OSError as exc:
            raise CgroupUnavailable(f"cannot create a child cgroup of {parent}: {exc}") from exc
        ctrls = tuple(wanted) + (("cpuacct",) if "cpu" in wanted else ())
        return cls(2, {c: d for c in ctrls} | {"memory": d}, ctrls)

    def _configure(self, memory_bytes: int, max_pids: int, cpus: int) -> None:
        mem = self.dirs["memory"]
        if self.version == 1:
            _write(mem / "memory.limit_in_bytes", str(memory_bytes))
            if (mem / "memory.memsw.limit_in_bytes").exists():
                _try_write(mem / "memory.memsw.limit_in_bytes", str(memory_bytes))  # no swap either
            if "pids" in self.dirs:
                _write(self.dirs["pids"] / "pids.max", str(max_pids))
            if "cpu" in self.dirs:
                period = 100_000
                _try_write(self.dirs["cpu"] / "cpu.cfs_period_us", str(period))
                _try_write(self.dirs["cpu"] / "cpu.cfs_quota_us", str(period * cpus))
        else:
            _write(mem / "memory.max", str(memory_bytes))
            _try_write(mem / "memory.swap.max", "0")
            if "pids" in self.dirs:
                _write(self.dirs["pids"] / "pids.max", str(max_pids))
            if "cpu" in self.dirs:
                _try_write(self.dirs["cpu"] / "cpu.max", f"{100_000 * cpus} 100000")

    @property
    def has_pids(self) -> bool:
        return "pids" in self.dirs

    def procs_files(self) -> list[str]:
        """The cgroup.procs files a process writes its pid to, to join every controller."""
        return sorted({str(d / "cgroup.procs") for d in self.dirs.values()})

    def oom_kills(self) -> int:
        """How many processes the kernel OOM-killed in this cgroup."""
        mem = self.dirs["memory"]
        if self.version == 1:
            return _read_kv(mem / "memory.oom_control").get("oom_kill", 0)
        return _read_kv(mem / "memory.events").get("oom_kill", 0)

    def cpu_seconds(self) -> float | None:
        """CPU time used by all the enclave's processes, or None if not accounted."""
        d = self.dirs.get("cpuacct")
        if d is None:
            return None
        try:
            if self.version == 1:
                return int((d / "cpuacct.usage").read_text()) / 1e9
            return _read_kv(d / "cpu.stat")["usage_usec"] / 1e6
        except (OSError, ValueError, KeyError):
            return None

    def pids(self) -> list[int]:
        out: set[int] = set()
        for f in self.procs_files():
            try:
                out.update(int(x) for x in Path(f).read_text().split())
            except OSError:
                pass
        return sorted(out)

    def kill_all(self) -> None:
        """SIGKILL everything in the cgroup (cgroup.kill where the kernel has it)."""
        if self.version == 2 and _try_write(self.dirs["memory"] / "cgroup.kill", "1"):
            return
        for _ in range(10):  # a fork racing the loop is caught by the next pass
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass

    def remove(self, timeout: float = 2.0) -> bool:
        """Remove the directories; True when all are gone (retries while tasks exit)."""
        deadline = time.monotonic() + timeout
        left = sorted(set(self.dirs.values()))
        while left:
            left = [d for d in left if not _rmdir(d)]
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        return not left


def _rmdir(d: Path) -> bool:
    try:
        d.rmdir()
    except FileNotFoundError:
        return True
    except OSError:
        return False
    return True


def _try_write(path: Path, value: str) -> bool:
    try:
        _write(path, value)
        return True
    except OSError:
        return False


def _parents() -> list[Path]:
    """The directories enclave cgroups are made in, for every hierarchy in use."""
    v1, v2 = _mounts()
    own = _own_paths()
    out = [_under(mnt, root, own.get(ctrl, "/")) for ctrl, (mnt, root) in v1.items()]
    if v2 is not None:
        out.append(_under(v2[0], v2[1], own.get("", "/")))
    return sorted(set(out))


def sweep_stale() -> int:
    """Kill and remove enclave cgroups left by node processes that no longer exist.

    Catches sandboxes orphaned by a node that died in the few milliseconds
    before bwrap armed its parent-death signal. Returns how many were removed.
    """
    if os.geteuid() != 0:
        return 0
    removed = 0
    try:
        parents = _parents()
    except OSError:
        return 0
    for parent in parents:
        try:
            names = [e.name for e in os.scandir(parent) if e.is_dir()]
        except OSError:
            continue
        for name in names:
            m = _NAME.match(name)
            if m is None or int(m.group(1)) == os.getpid() or os.path.exists(f"/proc/{m.group(1)}"):
                continue
            d = parent / name
            cg = EnclaveCgroup(2 if (d / "cgroup.controllers").exists() else 1, {"memory": d})
            cg.kill_all()
            removed += cg.remove(timeout=0.5)
    return removed


def probe() -> str:
    """A one-line description of the cgroup support, for ``available()``'s reason."""
    name = f"ofnode-probe-{os.getpid()}"
    try:
        cg = EnclaveCgroup.create(name, 64 << 20, 16, 1)
    except CgroupUnavailable as exc:
        return f"no cgroup limits ({exc})"
    try:
        return f"cgroup v{cg.version} ({', '.join(cg.controllers)})"
    finally:
        cg.remove()
