"""Host uids for enclaves, and the two host directories handed to them.

Shared by the backends that run the enclave as a uid of its own (sim when the
node is root, docker always): a fresh uid far above any real user owns
nothing on the host, so a broken-out AI still cannot read or signal anything.
"""

from __future__ import annotations

import os
import random
import stat

from enclave.backends.base import BackendError, EnclaveSpec

__all__ = ["SANDBOX_UID_RANGE", "UidPool", "check_dirs", "hand_over"]

#: Host uids handed to sandboxes: far above any real user and above the usual
#: subuid ranges; one per enclave, never reused while in use.
SANDBOX_UID_RANGE = range(2_000_000_000, 2_100_000_000)


class UidPool:
    """Random uids from ``SANDBOX_UID_RANGE``, unique among the enclaves of this process."""

    def __init__(self) -> None:
        self._in_use: set[int] = set()

    def allocate(self) -> int:
        while True:
            uid = random.choice(SANDBOX_UID_RANGE)
            if uid not in self._in_use:
                self._in_use.add(uid)
                return uid

    def release(self, uid: int | None) -> None:
        if uid is not None:
            self._in_use.discard(uid)


def check_dirs(spec: EnclaveSpec, *, other_uid: bool) -> None:
    """Fail early, with the fix, when a spec's directories cannot work.

    ``other_uid``: the enclave runs as a uid other than the node's, so code
    dirs must be world-readable.
    """
    for label, d in (("socket_dir", spec.socket_dir), ("scratch_dir", spec.scratch_dir)):
        if not d.is_dir():
            raise BackendError(f"{label} {d} is not a directory")
    for d in spec.code_dirs:
        if not d.exists():
            raise BackendError(f"code dir {d} does not exist")
        if other_uid and d.is_dir() and (d.stat().st_mode & 0o005) != 0o005:
            raise BackendError(
                f"code dir {d} is not world-readable; the enclave runs as an unprivileged uid (chmod o+rx)")


def hand_over(spec: EnclaveSpec, uid: int) -> None:
    """Give the enclave uid its two writable directories (and the sockets already there).

    Mode 0750 with the node's group: the node (and bwrap, uid 0 without
    capabilities when it chdirs) still gets in; other host users do not.
    """
    gid = os.getegid()
    for d in (spec.scratch_dir, spec.socket_dir):
        os.chown(d, uid, gid)
        os.chmod(d, 0o750)
    for entry in os.scandir(spec.socket_dir):
        if stat.S_ISSOCK(entry.stat(follow_symlinks=False).st_mode):
            os.chown(entry.path, uid, gid, follow_symlinks=False)
