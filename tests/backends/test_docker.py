"""The docker backend against a real dockerd: hardening, isolation, limits, cleanup.

Needs a running dockerd (``make test`` starts one: tests/helpers/dockerd.sh);
without it these tests skip on a developer machine and fail under CI=true.
Each probe is a small Python program run in the container with a spec like
the runtime's; it prints one JSON line that the test checks.
"""

from __future__ import annotations

import json
import os
import signal
import socket

import pytest
import trio

from enclave.backends import ExitInfo, get_backend
from enclave.backends.docker import LABEL, DockerBackend, image_tarball
from enclave.backends.sandbox_uid import SANDBOX_UID_RANGE
from tests.helpers.docker_orphan import orphan_container
from tests.parts import require_part

from .conftest import PROBE_TRY, Box, probe_host_reach


@pytest.fixture(scope="module")
def docker() -> DockerBackend:
    b = DockerBackend()
    a = b.available()
    require_part("dockerd", a.ok, a.reason)
    return b


def result(info: ExitInfo) -> dict:
    assert info.reason == "ok", info
    return json.loads(info.stderr_tail.strip().splitlines()[-1])


def containers(docker: DockerBackend) -> list[dict]:
    return docker.client().containers(all=True, filters={"label": f"{LABEL}=1"})


def test_registered_and_available(docker: DockerBackend) -> None:
    assert get_backend("docker").name == "docker"
    reason = docker.available().reason
    for word in ("no network", "read-only root", "cap-drop ALL", "no-new-privileges"):
        assert word in reason


def test_image_is_built_from_nothing_and_named_by_its_content(docker: DockerBackend) -> None:
    assert image_tarball() == image_tarball()  # deterministic
    tag = docker.ensure_image()
    assert tag == docker.image_tag() and tag.startswith("ofnode-enclave:")
    img = docker.client().inspect_image(tag)
    assert len(img["RootFS"]["Layers"]) == 1  # one layer: our tarball, no base image
    assert img["Size"] < 64 * 1024  # empty mount points and links only
    assert img["Config"]["Labels"][f"{LABEL}.image"] == "1"


async def test_hardening_as_docker_reports_it(docker: DockerBackend, box: Box) -> None:
    spec = box.spec("import time; time.sleep(30)", memory_bytes=200 << 20, max_pids=16, threads=1)
    async with await docker.start(spec) as proc:
        hc = docker.client().inspect_container(proc.container_id)
        h, cfg = hc["HostConfig"], hc["Config"]
        assert h["NetworkMode"] == "none" and cfg["NetworkDisabled"] is True
        assert h["ReadonlyRootfs"] is True and h["Init"] is True and h["Privileged"] is False
        assert h["CapDrop"] == ["ALL"] and not h["CapAdd"]
        assert "no-new-privileges" in h["SecurityOpt"]
        assert h["Memory"] == 200 << 20 and h["MemorySwap"] == 200 << 20
        assert h["PidsLimit"] == 17 and h["NanoCpus"] == 1_000_000_000
        assert {u["Name"]: u["Soft"] for u in h["Ulimits"]} == {"cpu": 20, "core": 0}
        assert set(h["Tmpfs"]) == {"/scratch", "/tmp"}
        uid = int(cfg["User"].split(":")[0])
        assert uid in SANDBOX_UID_RANGE
        for b in h["Binds"]:
            _, inside, mode = b.split(":")
            assert mode == "ro" or inside == "/run/ofnode", b
        assert proc.pid > 0 and os.path.exists(f"/proc/{proc.pid}")
    assert not [c for c in containers(docker) if c["Id"] == proc.container_id]  # removed once reaped


async def test_no_network(docker: DockerBackend, box: Box) -> None:
    """The AI reaches neither a host TCP listener nor a host abstract socket; only loopback exists."""
    res = await probe_host_reach(docker, box)
    assert res["tcp"] == "ECONNREFUSED", res  # its own empty loopback
    assert res["outside"] == "ENETUNREACH", res
    assert res["abstract"] == "ECONNREFUSED", res
    assert res["ifaces"] == ["lo"], res


async def test_read_only_outside_tmpfs(docker: DockerBackend, box: Box) -> None:
    """Writes land only in the in-memory /scratch and /tmp and the socket dir; never on the host disk."""
    info = await box.run(docker, PROBE_TRY + """
import sys, enclave
targets = ["/x", "/usr/x", "/etc/x", "/run/x", "/sbin/x", "/proc/sys/kernel/hostname", os.path.join(sys.prefix, "x"),
           os.path.join(os.path.dirname(socket.__file__), "x"), os.path.join(os.path.dirname(enclave.__file__), "x")]
def write(p):
    with open(p, "w") as f:
        f.write("x")
res = {p: attempt(lambda p=p: write(p)) for p in targets}
for p in ("/scratch/ok", "/tmp/ok", "/run/ofnode/ok"):
    res[p] = attempt(lambda p=p: write(p))
res["scratch_fs"] = [l.split()[2] for l in open("/proc/mounts") if l.split()[1] == "/scratch"]
print(json.dumps(res))
""")
    res = result(info)
    for p in ("/scratch/ok", "/tmp/ok", "/run/ofnode/ok"):
        assert res.pop(p) == "ok"
    assert res.pop("scratch_fs") == ["tmpfs"]
    bad = {p: e for p, e in res.items() if e not in ("EROFS", "EACCES", "EPERM")}
    assert not bad, bad
    assert (box.sock / "ok").exists()
    assert not (box.scratch / "ok").exists()  # scratch is the container's tmpfs, not a host dir


async def test_no_host_files(docker: DockerBackend, box: Box, tmp_path) -> None:
    """/etc/shadow, /root's files, the node's data dir and other processes are not there."""
    data = tmp_path / "node-data"
    data.mkdir()
    (data / "identity.key").write_text("secret")
    info = await box.run(docker, PROBE_TRY + f"""
def read(p):
    open(p).read()
res = {{p: attempt(lambda p=p: read(p)) for p in
        ["/etc/shadow", "/etc/passwd", "{data}/identity.key", "/root/.bashrc", "/root/.ssh/id_rsa"]}}
res["root_ls"] = sorted(os.listdir("/root"))
res["etc_ls"] = sorted(os.listdir("/etc"))
res["proc_pids"] = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
res["uid"], res["gid"], res["groups"] = os.getuid(), os.getgid(), os.getgroups()
res["caps"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith(("CapEff", "CapBnd", "CapPrm"))]
res["nnp"] = [l.split()[1] for l in open("/proc/self/status") if l.startswith("NoNewPrivs")][0]
res["hostname"] = socket.gethostname()
print(json.dumps(res))
""")
    res = result(info)
    for p in ("/etc/shadow", "/etc/passwd", f"{data}/identity.key", "/root/.bashrc", "/root/.ssh/id_rsa"):
        assert res[p] == "ENOENT", (p, res[p])
    assert set(res["root_ls"]) <= {".pyenv"}, res["root_ls"]  # only the path to the Python install
    assert set(res["etc_ls"]) <= {"ld.so.cache", "localtime", "hostname", "hosts", "resolv.conf", "mtab"}, res["etc_ls"]
    assert res["proc_pids"] == [1, res["proc_pids"][1]] and len(res["proc_pids"]) == 2  # docker-init + probe
    assert res["uid"] in SANDBOX_UID_RANGE and res["gid"] == res["uid"] and set(res["groups"]) <= {res["uid"]}
    assert set(res["caps"]) == {"0000000000000000"}
    assert res["nnp"] == "1" and res["hostname"] == "enclave"


async def test_unix_socket_is_the_link_out(docker: DockerBackend, box: Box) -> None:
    listener = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    await listener.bind(str(box.sock / "enclave.sock"))
    listener.listen(1)
    spec = box.spec("""
import socket
s = socket.socket(socket.AF_UNIX); s.connect("/run/ofnode/enclave.sock")
s.sendall(s.recv(100).upper()); s.close()
""")
    with trio.fail_after(30):
        async with await docker.start(spec) as proc:
            conn, _ = await listener.accept()
            await conn.send(b"ping from the node")
            assert await conn.recv(100) == b"PING FROM THE NODE"
            conn.close()
            assert (await proc.wait()).reason == "ok"
    listener.close()


async def test_memory_limit_is_oom_and_node_unharmed(docker: DockerBackend, box: Box) -> None:
    info = await box.run(docker, "x = []\nwhile True: x.append(bytearray(16 << 20))", memory_bytes=128 << 20)
    assert info.reason == "oom", info
    assert info.signal == signal.SIGKILL
    # the node process (this one) and dockerd are fine, and a new enclave starts
    assert (await box.run(docker, "print('{}')")).reason == "ok"


async def test_cpu_time_limit(docker: DockerBackend, box: Box) -> None:
    info = await box.run(docker, "while True: pass", cpu_seconds=1, timeout=30)
    assert info.reason == "cpu_time", info


async def test_pids_limit(docker: DockerBackend, box: Box) -> None:
    info = await box.run(docker, """
import os, json, time
n = 0
err = None
try:
    for _ in range(100):
        if os.fork() == 0:
            time.sleep(5); os._exit(0)
        n += 1
except OSError as e:
    err = e.errno
print(json.dumps({"forked": n, "err": err}))
""", max_pids=8)
    res = result(info)
    assert res["forked"] < 8 and res["err"] is not None, res


async def test_kill_and_cancel_remove_the_container(docker: DockerBackend, box: Box) -> None:
    proc = await docker.start(box.spec("import time; time.sleep(60)"))
    cid = proc.container_id
    await proc.kill()
    info = await proc.wait()
    assert info.reason == "killed" and info.signal == signal.SIGKILL
    assert not [c for c in containers(docker) if c["Id"] == cid]

    with trio.move_on_after(1.5):
        async with await docker.start(box.spec("import time; time.sleep(60)")) as p2:
            cid2 = p2.container_id
            await p2.wait()
    assert not [c for c in containers(docker) if c["Id"] == cid2]


async def test_exit_codes(docker: DockerBackend, box: Box) -> None:
    info = await box.run(docker, "import sys; print('bye'); sys.exit(3)")
    assert (info.reason, info.code, info.signal) == ("error", 3, None)
    assert "bye" in info.stderr_tail
    info = await box.run(docker, "import os, signal; os.kill(os.getpid(), signal.SIGTERM)")
    assert (info.reason, info.code, info.signal) == ("error", None, signal.SIGTERM)


def test_container_of_a_killed_node_is_swept_on_restart(docker: DockerBackend, box: Box) -> None:
    """A node SIGKILLed while its enclave runs: the container survives it, the next start removes it."""
    cid = orphan_container(box.root / "orphan")
    assert [c for c in containers(docker) if c["Id"] == cid and c["State"] == "running"]
    fresh = DockerBackend()
    assert fresh.sweep() >= 1
    assert not [c for c in containers(docker) if c["Id"] == cid]


async def test_sweep_keeps_containers_of_live_nodes(docker: DockerBackend, box: Box) -> None:
    async with await docker.start(box.spec("import time; time.sleep(60)")) as proc:
        DockerBackend().sweep()
        assert [c for c in containers(docker) if c["Id"] == proc.container_id]
