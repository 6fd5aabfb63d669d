"""What the sim sandbox keeps out: network, host files, other processes, the environment.

Each test runs a small Python probe inside the sandbox with a spec like the
runtime's; the probe prints one JSON line (stdout is merged into the
stderr tail) that the test checks.
"""

from __future__ import annotations

import json
import os
import socket

import pytest
import trio

from enclave.backends import ExitInfo
from enclave.backends.sim import SANDBOX_UID_RANGE
from tests.parts import require_part

from .conftest import PROBE_TRY, ROOT, Box, probe_host_reach


def result(info: ExitInfo) -> dict:
    assert info.reason == "ok", info
    return json.loads(info.stderr_tail.strip().splitlines()[-1])


async def test_no_ip_sockets_with_seccomp(sim, box: Box) -> None:
    """(a) AF_INET/AF_INET6/raw/netlink socket creation is refused by the filter."""
    info = await box.run(sim, PROBE_TRY + """
res = {name: attempt(lambda fam=fam, t=t: socket.socket(fam, t).close()) for name, fam, t in [
    ("inet", socket.AF_INET, socket.SOCK_STREAM), ("inet6", socket.AF_INET6, socket.SOCK_STREAM),
    ("udp", socket.AF_INET, socket.SOCK_DGRAM), ("netlink", socket.AF_NETLINK, socket.SOCK_RAW),
    ("packet", socket.AF_PACKET, socket.SOCK_RAW), ("unix", socket.AF_UNIX, socket.SOCK_STREAM)]}
print(json.dumps(res))
""")
    res = result(info)
    assert res.pop("unix") == "ok"
    assert set(res.values()) == {"EAFNOSUPPORT"}, res


@pytest.mark.parametrize("which", ["sim", "sim_plain"])
async def test_cannot_reach_host_listener(which, request, box: Box) -> None:
    """(a) A host TCP listener on 127.0.0.1 and a host abstract Unix socket are unreachable."""
    res = await probe_host_reach(request.getfixturevalue(which), box)
    assert res["tcp"] in ("EAFNOSUPPORT", "ECONNREFUSED"), res  # filtered, or its own empty loopback
    assert res["abstract"] == "ECONNREFUSED", res  # abstract sockets are per network namespace
    assert res["ifaces"] == ["lo"], res


async def test_filesystem_is_read_only_outside_scratch(sim, box: Box) -> None:
    """(b) Only /scratch (and the private tmpfs /tmp, /dev/shm, and the socket dir) take writes."""
    token = os.urandom(8).hex()
    info = await box.run(sim, PROBE_TRY + """
import sys
targets = ["/x", "/usr/x", "/etc/x", "/run/x", "/proc/sys/kernel/hostname",
           os.path.join(os.path.dirname(os.path.dirname(socket.__file__)), "x"),   # python install
           os.path.join(sys.prefix, "x"), "/dev/x"]
import enclave
targets.append(os.path.join(os.path.dirname(enclave.__file__), "x"))
def write(p):
    with open(p, "w") as f:
        f.write("x")
res = {p: attempt(lambda p=p: write(p)) for p in targets}
res["/scratch/ok"] = attempt(lambda: write("/scratch/ok"))
res["/tmp/ok"] = attempt(lambda: write("/tmp/ofnode-probe-" + os.environ["TOKEN"]))
res["/dev/shm/ok"] = attempt(lambda: write("/dev/shm/ok"))
res["/run/ofnode/ok"] = attempt(lambda: write("/run/ofnode/ok"))
print(json.dumps(res))
""", env={"TOKEN": token})
    res = result(info)
    for p in ("/scratch/ok", "/tmp/ok", "/dev/shm/ok", "/run/ofnode/ok"):
        assert res.pop(p) == "ok"
    bad = {p: e for p, e in res.items() if e not in ("EROFS", "EACCES", "EPERM", "ENOENT")}
    assert not bad, bad
    assert (box.scratch / "ok").exists() and (box.sock / "ok").exists()
    assert not os.path.exists(f"/tmp/ofnode-probe-{token}")  # /tmp inside is a private tmpfs


async def test_no_host_secrets(sim, box: Box, tmp_path) -> None:
    """(c)(d) /etc/shadow, /etc/passwd, /root's files and a node data dir are not there."""
    data = tmp_path / "node-data"
    data.mkdir()
    (data / "identity.key").write_text("secret")
    info = await box.run(sim, PROBE_TRY + f"""
def read(p):
    open(p).read()
res = {{p: attempt(lambda p=p: read(p)) for p in
        ["/etc/shadow", "/etc/passwd", "/etc/hostname", "{data}/identity.key", "/root/.bashrc",
         "/root/.ssh/id_rsa", "/proc/1/environ"]}}
res["root_ls"] = sorted(os.listdir("/root"))
res["etc_ls"] = sorted(os.listdir("/etc"))
res["box_root"] = os.path.exists("{box.root}")
res["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
res["hostname"] = socket.gethostname()
print(json.dumps(res))
""")
    res = result(info)
    for p in ("/etc/shadow", "/etc/passwd", "/etc/hostname", f"{data}/identity.key", "/root/.bashrc", "/root/.ssh/id_rsa"):
        assert res[p] == "ENOENT", (p, res[p])
    assert res["/proc/1/environ"] in ("EACCES", "EPERM")  # pid 1 is bwrap's init, not the host's
    assert set(res["root_ls"]) <= {".pyenv"}, res["root_ls"]  # only the path to the Python install
    assert set(res["etc_ls"]) <= {"ld.so.cache", "localtime"}
    assert res["box_root"] is False  # the host's paths to scratch/socket dir do not exist inside
    assert res["proc_pids"] == [1, 2], res["proc_pids"]  # bwrap's init and the probe: nothing else
    assert res["hostname"] == "enclave"


async def test_identity_environment_and_seccomp_status(sim, box: Box) -> None:
    """Own uid (when the node is root), no capabilities, no_new_privs, filter on, env exactly spec.env."""
    info = await box.run(sim, """
import json, os
st = dict(l.split(":\\t", 1) for l in open("/proc/self/status").read().splitlines() if ":\\t" in l)
print(json.dumps({"uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
    "caps": [st[k].strip() for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")],
    "nnp": st["NoNewPrivs"].strip(), "seccomp": st["Seccomp"].strip(), "env": dict(os.environ),
    "cwd": os.getcwd()}))
""", env={"OFNODE_X": "1", "LANG": "C.UTF-8"})
    res = result(info)
    if ROOT:
        assert res["uid"] in SANDBOX_UID_RANGE and res["euid"] == res["uid"] == res["gid"]
        assert res["groups"] == []
    assert set(res["caps"]) == {"0000000000000000"}
    assert res["nnp"] == "1" and res["seccomp"] == "2"
    assert res["env"] == {"OFNODE_X": "1", "LANG": "C.UTF-8", "PWD": "/scratch"}  # bwrap's --chdir sets PWD
    assert res["cwd"] == "/scratch"


async def test_dangerous_syscalls_denied(sim, box: Box) -> None:
    """ptrace, unshare (user namespaces), mount, keyctl and bpf fail with EPERM; clone3 with ENOSYS."""
    info = await box.run(sim, """
import ctypes, json, os
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def call(nr, *args):
    r = libc.syscall(ctypes.c_long(nr), *[ctypes.c_long(a) for a in args])
    return 0 if r >= 0 else ctypes.get_errno()
CLONE_NEWUSER, CLONE_NEWNET = 0x10000000, 0x40000000
res = {"ptrace": call(101, 0, 0, 0, 0),          # PTRACE_TRACEME
       "unshare_user": call(272, CLONE_NEWUSER), "unshare_net": call(272, CLONE_NEWNET),
       "mount": call(165, 0, 0, 0, 0, 0), "keyctl": call(250, 0, 0, 0, 0, 0),
       "bpf": call(321, 0, 0, 0), "clone3": call(435, 0, 0),
       "clone_newuser": call(56, CLONE_NEWUSER | 17, 0, 0, 0, 0)}
print(json.dumps(res))
""")
    res = result(info)
    import errno
    import platform
    require_part("an x86_64 machine (the probe's syscall numbers)", platform.machine() == "x86_64")
    assert res.pop("clone3") == errno.ENOSYS
    assert res == dict.fromkeys(res, errno.EPERM), res


async def test_threads_and_subprocesses_still_work(sim, box: Box) -> None:
    """The filter must not break ordinary Python: threads (clone3 -> clone fallback) and subprocess."""
    info = await box.run(sim, """
import json, subprocess, threading
out = []
t = threading.Thread(target=lambda: out.append(1)); t.start(); t.join()
r = subprocess.run(["/usr/bin/true"])
print(json.dumps({"thread": out, "sub": r.returncode}))
""")
    assert result(info) == {"thread": [1], "sub": 0}


async def test_unix_socket_link_both_ways(sim, box: Box) -> None:
    """(i) The socket dir is the intended link: the enclave reaches a host listener, and the host its."""
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(box.sock / "host.sock"))
    listener.listen()
    spec = box.spec("""
import socket, time
s = socket.socket(socket.AF_UNIX); s.connect("/run/ofnode/host.sock"); s.sendall(b"hello from inside"); s.close()
srv = socket.socket(socket.AF_UNIX); srv.bind("/run/ofnode/enclave.sock"); srv.listen()
c, _ = srv.accept(); c.sendall(c.recv(100).upper()); c.close()
""")
    with trio.fail_after(30):
        async with await sim.start(spec) as proc:
            conn, _ = await listener.accept()
            assert await conn.recv(100) == b"hello from inside"
            conn.close()
            path = box.sock / "enclave.sock"
            while not path.exists():
                await trio.sleep(0.01)
            c = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            for _ in range(200):  # bound before listen(): retry until it listens
                try:
                    await c.connect(str(path))
                    break
                except ConnectionRefusedError:
                    c.close()
                    c = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    await trio.sleep(0.01)
            await c.send(b"ping")
            assert await c.recv(100) == b"PING"
            c.close()
            info = await proc.wait()
    listener.close()
    assert info.reason == "ok", info


async def test_scratch_writes_visible_to_host(sim, box: Box) -> None:
    """(j) Files written to /scratch are there for the node, owned by the sandbox uid."""
    info = await box.run(sim, "open('/scratch/out.txt', 'w').write('result 42')")
    assert info.reason == "ok", info
    out = box.scratch / "out.txt"
    assert out.read_text() == "result 42"
    if ROOT:
        assert out.stat().st_uid in SANDBOX_UID_RANGE


async def test_enclave_runtime_imports_in_sandbox(sim, box: Box) -> None:
    """The code dirs from runtime_code_dirs() suffice to import the runtime and its dependencies."""
    pytest.importorskip("enclave.runtime.main")
    info = await box.run(sim, """
import enclave.runtime.main, cryptography, numpy
print("imported")
""", memory_bytes=512 << 20)
    assert info.reason == "ok", info
    assert info.stderr_tail.strip().endswith("imported")
