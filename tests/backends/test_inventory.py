"""Provider inventory: values sane and consistent with /proc, cheap when cached."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

from enclave.backends import get_backend, inventory


def _meminfo_kib(key: str) -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


def test_cores_and_memory_match_proc() -> None:
    inv = inventory.detect()
    assert inv.cores == len(os.sched_getaffinity(0)) >= 1
    assert inv.cores <= inv.cpu_count == os.cpu_count()
    assert inv.memory_total_bytes == _meminfo_kib("MemTotal") * 1024
    assert 0 < inv.memory_available_bytes <= inv.memory_total_bytes
    # MemAvailable moves; within 10% of a fresh reading
    assert abs(inv.memory_available_bytes - _meminfo_kib("MemAvailable") * 1024) < inv.memory_total_bytes / 10


def test_sgx_consistent_with_devices() -> None:
    sgx = inventory.detect().sgx
    assert sgx.enclave_device == os.path.exists("/dev/sgx_enclave")
    assert sgx.provision_device == os.path.exists("/dev/sgx_provision")
    assert sgx.usable == (sgx.enclave_device and sgx.provision_device)
    if sgx.epc_bytes is None:
        assert sgx.epc_source == "unknown"
    else:
        assert sgx.epc_bytes > 0 and sgx.epc_source in ("cpuid", "sysfs")
    if not sgx.cpu_flag and os.path.exists("/dev/cpu/0/cpuid"):
        assert sgx.epc_bytes is None or sgx.epc_source == "sysfs"


def test_backends_reported_as_they_say() -> None:
    inv = inventory.detect()
    names = [b.name for b in inv.backends]
    assert "sim" in names
    sim = next(b for b in inv.backends if b.name == "sim")
    assert sim.ok == get_backend("sim").available().ok == inv.backend_ok("sim")
    assert ("sim" in inv.working_backends()) == sim.ok
    assert sim.reason


def test_to_dict_is_json() -> None:
    d = inventory.detect().to_dict()
    again = json.loads(json.dumps(d))
    assert again["cores"] >= 1 and "sim" in again["backends"]
    assert set(again["sgx"]) >= {"enclave_device", "provision_device", "epc_bytes", "usable"}
    assert set(again["docker"]) == {"socket", "answers", "reason"}
    assert "gramine_sgx" in again and "gramine_direct" in again


def test_fast_when_cached() -> None:
    inventory.detect()
    t = time.perf_counter()
    for _ in range(10):
        inventory.detect()
    assert (time.perf_counter() - t) / 10 < 0.05


def test_docker_ping_without_sdk(tmp_path, monkeypatch) -> None:
    """A socket that answers /_ping like dockerd counts; no docker SDK is imported."""
    path = str(tmp_path / "docker.sock")
    srv = socket.socket(socket.AF_UNIX)
    srv.bind(path)
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        conn.recv(1024)
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK")
        conn.close()

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    info = inventory.docker_info.__wrapped__()
    srv.close()
    assert info.socket == path and info.answers, info


def test_no_docker_sdk_import() -> None:
    code = "import sys, enclave.backends.inventory as i; i.detect(); print('docker' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_docker_absent(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", f"unix://{tmp_path}/none.sock")
    monkeypatch.setattr(inventory, "_DOCKER_SOCKETS", ())
    info = inventory.docker_info.__wrapped__()
    assert info.socket is None and not info.answers


def test_refresh_reprobes() -> None:
    inventory.detect(refresh=True)
    assert inventory.sgx_info.cache_info().hits == 0 and inventory.sgx_info.cache_info().misses == 1
    inventory.detect()
    assert inventory.sgx_info.cache_info().hits == 1
