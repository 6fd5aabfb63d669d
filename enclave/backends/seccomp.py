"""A seccomp filter for the sandbox, compiled with libseccomp through ctypes.

Why: namespaces hide the host's network and files, but the kernel's whole
syscall surface stays reachable. The filter shuts the parts an AI never needs
and an attacker loves: IP sockets (belt and braces over the empty network
namespace), ptrace and cross-process memory access, mounts and namespace
creation, keyrings, BPF, perf, io_uring, module and kexec loading.

Why libseccomp via ctypes: bwrap's ``--seccomp FD`` wants a compiled classic
BPF program. libseccomp (Debian ``libseccomp2``, already pulled in by apt and
systemd on nearly every Debian system) knows every architecture's syscall
numbers and the x32/compat traps; hand-written BPF would have to re-learn
them. No Python binding package is needed: the five C calls used here are
stable since libseccomp 2.0. When the library is missing the sandbox still
runs, without the filter, and ``SimBackend.available()`` says so.

The policy is a deny list over a default of *allow*: a default-deny list
would have to track what CPython, glibc, numpy and onnxruntime call, and
break on every upgrade. Denied calls fail with an errno (not a kill), so a
probing AI sees ordinary errors and the node sees an ordinary exit.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import os
import socket

__all__ = ["DENIED_SYSCALLS", "SeccompUnavailable", "build_filter", "filter_bpf"]

# libseccomp ABI constants (seccomp.h); stable across 2.x.
_SCMP_ACT_ALLOW = 0x7FFF0000
_SCMP_CMP_NE = 1
_SCMP_CMP_MASKED_EQ = 7


def _act_errno(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


class _ArgCmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(RuntimeError):
    """libseccomp is missing or refused to build the filter."""


#: Syscalls that fail with EPERM inside the sandbox.
DENIED_SYSCALLS: tuple[str, ...] = (
    # debugging / reading other processes' memory
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp",
    # filesystem namespace changes
    "mount", "umount2", "pivot_root", "chroot", "mount_setattr", "move_mount",
    "open_tree", "fsopen", "fsconfig", "fsmount", "fspick",
    # new namespaces (clone's namespace flags are handled below)
    "unshare", "setns",
    # kernel keyrings, BPF, perf, io_uring, userfaultfd: large attack surfaces
    "keyctl", "add_key", "request_key", "bpf", "perf_event_open",
    "io_uring_setup", "io_uring_enter", "io_uring_register", "userfaultfd",
    # host administration
    "kexec_load", "kexec_file_load", "init_module", "finit_module", "delete_module",
    "reboot", "swapon", "swapoff", "syslog", "acct", "quotactl",
    "settimeofday", "clock_settime", "clock_adjtime", "adjtimex",
    "iopl", "ioperm", "vhangup", "fanotify_init", "lookup_dcookie",
    # file handles bypass path-based checks
    "open_by_handle_at", "name_to_handle_at",
)

# clone() flags that create namespaces (CLONE_NEWTIME shares bits with the exit
# signal in clone()'s flags word, so it is covered by denying clone3/unshare).
_CLONE_NS_FLAGS = (0x00020000, 0x02000000, 0x04000000, 0x08000000, 0x10000000, 0x20000000, 0x40000000)


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp") or "libseccomp.so.2"
    try:
        lib = ctypes.CDLL(name, use_errno=True)
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp not found ({exc}); install Debian package libseccomp2") from exc
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_release.restype = None
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_syscall_resolve_name.restype = ctypes.c_int
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_ArgCmp)
    ]
    lib.seccomp_rule_add_array.restype = ctypes.c_int
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    lib.seccomp_export_bpf.restype = ctypes.c_int
    return lib


def build_filter() -> bytes:
    """Compile the sandbox's filter for this machine's architecture to BPF bytes."""
    lib = _lib()
    ctx = lib.seccomp_init(_SCMP_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    try:
        def rule(action: int, name: str, *cmps: _ArgCmp) -> None:
            nr = lib.seccomp_syscall_resolve_name(name.encode())
            if nr < 0:  # not a syscall on this architecture: nothing to deny
                return
            arr = (_ArgCmp * len(cmps))(*cmps) if cmps else None
            rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), arr)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_rule_add({name}) failed: {os.strerror(-rc)}")

        for name in DENIED_SYSCALLS:
            rule(_act_errno(errno.EPERM), name)
        # Only Unix sockets: the socket dir is the enclave's one link out.
        not_unix = _ArgCmp(0, _SCMP_CMP_NE, socket.AF_UNIX, 0)
        rule(_act_errno(errno.EAFNOSUPPORT), "socket", not_unix)
        rule(_act_errno(errno.EAFNOSUPPORT), "socketpair", not_unix)
        for flag in _CLONE_NS_FLAGS:
            rule(_act_errno(errno.EPERM), "clone", _ArgCmp(0, _SCMP_CMP_MASKED_EQ, flag, flag))
        # clone3 passes its flags in memory, which seccomp cannot inspect. ENOSYS
        # makes glibc fall back to clone(), which the rules above do inspect.
        rule(_act_errno(errno.ENOSYS), "clone3")

        fd = os.memfd_create("ofnode-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            size = os.lseek(fd, 0, os.SEEK_END)
            return os.pread(fd, size, 0)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


@functools.lru_cache(maxsize=1)
def filter_bpf() -> bytes:
    """The compiled filter, built once per process (about a millisecond)."""
    return build_filter()
