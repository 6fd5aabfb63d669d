"""Enclave backends: swappable ways for a provider to run the in-enclave runtime.

``base`` is the interface (``EnclaveSpec`` -> ``Backend.start`` ->
``EnclaveProcess``); each backend is one module; ``inventory`` reports what
this host has. Importing this package starts nothing and imports no backend
SDK (docker, gramine): backends are made on first use via ``get_backend``.

To add a backend: write ``enclave/backends/<name>.py`` with a ``Backend``
subclass and add one line to ``_FACTORIES``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

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
    ExitReason,
    runtime_code_dirs,
)

__all__ = [
    "SCRATCH_DIR",
    "SOCKET_DIR",
    "Availability",
    "Backend",
    "BackendError",
    "BackendUnavailable",
    "EnclaveProcess",
    "EnclaveSpec",
    "ExitInfo",
    "ExitReason",
    "backend_names",
    "get_backend",
    "register_backend",
    "runtime_code_dirs",
]


def _lazy(module: str, cls: str) -> Callable[[], Backend]:
    def make() -> Backend:
        return getattr(importlib.import_module(module), cls)()
    return make


# name -> factory
_FACTORIES: dict[str, Callable[[], Backend]] = {
    "sim": _lazy("enclave.backends.sim", "SimBackend"),
    "docker": _lazy("enclave.backends.docker", "DockerBackend"),
    "gramine-direct": _lazy("enclave.backends.gramine", "GramineDirectBackend"),
    "gramine-sgx": _lazy("enclave.backends.gramine", "GramineSgxBackend"),
}
_INSTANCES: dict[str, Backend] = {}


def register_backend(name: str, factory: Callable[[], Backend]) -> None:
    """Add (or replace) a backend factory under ``name``."""
    _FACTORIES[name] = factory
    _INSTANCES.pop(name, None)


def backend_names() -> tuple[str, ...]:
    return tuple(_FACTORIES)


def get_backend(name: str) -> Backend:
    """The shared instance of backend ``name`` (made on first use)."""
    if name not in _FACTORIES:
        raise BackendUnavailable(f"unknown enclave backend {name!r}; known: {', '.join(_FACTORIES)}")
    if name not in _INSTANCES:
        _INSTANCES[name] = _FACTORIES[name]()
    return _INSTANCES[name]
