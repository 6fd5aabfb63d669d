"""Rules that decline a "questionable" AI manifest before anything runs.

A provider runs strangers' AIs; the AI owner relies on the enclave to keep the
AI confidential.  Both sides are protected by refusing, up front, anything that
would weaken the enclave or overrun the provider: resources beyond the limits,
files that are not pinned by hash, paths that reach outside the AI, network
access, Gramine's ``insecure__*`` switches, debug enclaves (whose memory the
host can read) and ``sgx.allowed_files`` (files the host may change at will).

:func:`check_manifest` never raises for a bad manifest; it returns every
:class:`Refusal` so the requester sees all reasons at once.  Each refusal
carries a stable rule id from :data:`RULES`; the ids are documented in
``docs/ai-manifest.md``.  Standard library only (trusted base).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from enclave.ai_manifest import AiManifest, relpath_problem, python_entry_candidates

__all__ = ["RULES", "Refusal", "Limits", "check_manifest", "flatten_options"]

#: Rule id -> what it declines.  Stable ids: clients may match on them.
RULES: dict[str, str] = {
    "resources-provider": "cpu, memory, enclave_size or threads above what this provider offers",
    "resources-request": "cpu, memory, enclave_size or threads above the limits set in the request",
    "files-hashed": "no [files], or a file whose hash is not sha256 with 64 hex digits",
    "files-match": "the AI's files differ from [files] (missing, extra or different content)",
    "paths-confined": "absolute or '..' paths, or mounts of host paths outside the AI",
    "entry-listed": "the entry point is not one of the hashed files",
    "no-network": "the AI asks for network access",
    "no-insecure": "a Gramine insecure__* option or a non-strict file check policy",
    "no-debug": "a debug enclave, verbose logging, profiling or statistics",
    "no-allowed-files": "sgx.allowed_files (files the host may change without detection)",
    "options-known": "a Gramine option these rules do not know to be safe",
}

_SHA256_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
_SAFE_LOG_LEVELS = ("none", "error", "warning")
# Options that are safe as long as the rule named for them accepts the value.
_KNOWN_OPTIONS = frozenset({
    "sgx.debug",
    "sgx.allowed_files",
    "sgx.file_check_policy",
    "sgx.profile.enable",
    "sgx.enable_stats",
    "loader.log_level",
    "fs.mounts",
    "sys.stack.size",
    "sys.brk.max_size",
})


@dataclass(frozen=True)
class Refusal:
    """One reason to decline an AI: the rule id and a human-readable reason."""

    rule: str
    reason: str

    def __str__(self) -> str:
        return f"{self.rule}: {self.reason}"


@dataclass(frozen=True)
class Limits:
    """Resource ceilings.  ``None`` means "no limit on this one"."""

    cpu: int | None = None
    memory: int | None = None
    enclave_size: int | None = None
    threads: int | None = None


def flatten_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Flatten nested option tables to dotted keys (``{"sgx": {"debug": 1}}`` -> ``sgx.debug``).

    Already-dotted keys pass through, so both spellings of an option are judged alike.
    """
    out: dict[str, Any] = {}
    for k, v in options.items():
        if isinstance(v, Mapping):
            for sub, x in flatten_options(v).items():
                out[f"{k}.{sub}"] = x
        else:
            out[k] = v
    return out


def check_manifest(
    manifest: AiManifest,
    provider: Limits,
    request: Limits | None = None,
    options: Mapping[str, Any] | None = None,
    tree: Mapping[str, str] | None = None,
) -> list[Refusal]:
    """Every reason to decline running ``manifest``; an empty list means "acceptable".

    ``provider`` are this provider's ceilings, ``request`` the ceilings the
    requester set (both optional per field).  ``options`` are extra Gramine
    options the AI asks for, on top of ``manifest.gramine`` (nested or dotted
    keys).  ``tree`` is the result of :func:`enclave.ai_manifest.hash_tree` on
    the unpacked AI, when available, to check the files themselves.
    """
    opts = flatten_options(dict(manifest.gramine))
    if options:
        opts.update(flatten_options(options))
    out: list[Refusal] = []
    out += _resources(manifest, provider, "resources-provider", "provider allows")
    if request is not None:
        out += _resources(manifest, request, "resources-request", "request allows")
    out += _files_hashed(manifest)
    if tree is not None:
        out += _files_match(manifest, tree)
    out += _paths_confined(manifest, opts)
    out += _entry_listed(manifest)
    out += _no_network(manifest, opts)
    out += _no_insecure(opts)
    out += _no_debug(opts)
    out += _no_allowed_files(opts)
    out += _options_known(opts)
    return out


# --------------------------------------------------------------------------
# the rules, one function each


def _resources(m: AiManifest, limits: Limits, rule: str, who: str) -> Iterable[Refusal]:
    r = m.resources
    for key, asked, cap in (
        ("cpu", r.cpu, limits.cpu),
        ("memory", r.memory, limits.memory),
        ("enclave_size", r.enclave_size, limits.enclave_size),
        ("threads", r.threads, limits.threads),
    ):
        if cap is not None and asked > cap:
            yield Refusal(rule, f"resources.{key} = {asked}, {who} at most {cap}")


def _files_hashed(m: AiManifest) -> Iterable[Refusal]:
    if not m.files:
        yield Refusal("files-hashed", "[files] lists no file")
    for path, digest in m.files.items():
        if not isinstance(digest, str) or not _SHA256_RE.match(digest):
            yield Refusal("files-hashed", f'"{path}": {digest!r} is not sha256:<64 hex digits>')


def _files_match(m: AiManifest, tree: Mapping[str, str]) -> Iterable[Refusal]:
    for path, digest in m.files.items():
        if path not in tree:
            yield Refusal("files-match", f'"{path}" is listed but missing')
        elif tree[path] != digest:
            yield Refusal("files-match", f'"{path}" does not match its hash')
    for path in tree:
        if path not in m.files:
            yield Refusal("files-match", f'"{path}" is present but not listed')


def _paths_confined(m: AiManifest, opts: Mapping[str, Any]) -> Iterable[Refusal]:
    for path in m.files:
        problem = relpath_problem(path)
        if problem:
            yield Refusal("paths-confined", f'file "{path}" {problem}')
    problem = relpath_problem(m.entry_file)
    if problem:
        yield Refusal("paths-confined", f'entry "{m.entry}" {problem}')
    mounts = opts.get("fs.mounts")
    if mounts is None:
        return
    if not isinstance(mounts, (list, tuple)):
        yield Refusal("paths-confined", "fs.mounts is not a list of mounts")
        return
    for i, mount in enumerate(mounts):
        reason = _mount_problem(mount)
        if reason:
            yield Refusal("paths-confined", f"fs.mounts[{i}]: {reason}")


def _mount_problem(mount: Any) -> str | None:
    """Why a Gramine mount escapes the AI, or ``None``.

    Allowed are in-enclave ``tmpfs`` mounts and ``chroot`` mounts of a
    ``file:`` URI relative to (and inside) the AI directory.
    """
    if not isinstance(mount, Mapping):
        return "is not a table"
    unknown = set(mount) - {"path", "uri", "type"}
    if unknown:
        return f"unknown key(s) {', '.join(sorted(unknown))}"
    path = mount.get("path")
    if not isinstance(path, str) or not path.startswith("/") or path == "/" \
            or relpath_problem(path[1:]):
        return f"mount point {path!r} is not a clean absolute path below /"
    kind = mount.get("type", "chroot")
    if kind == "tmpfs":
        return None if "uri" not in mount else "a tmpfs mount takes no uri"
    if kind != "chroot":
        return f"mount type {kind!r} is not allowed (only chroot inside the AI, or tmpfs)"
    uri = mount.get("uri")
    if not isinstance(uri, str) or not uri.startswith("file:"):
        return f"uri {uri!r} is not a file: URI inside the AI"
    problem = relpath_problem(uri[len("file:"):])
    if problem:
        return f"uri {uri!r} reaches outside the AI (path {problem})"
    return None


def _entry_listed(m: AiManifest) -> Iterable[Refusal]:
    if m.runtime == "python":
        candidates = python_entry_candidates(m.entry)
    else:
        candidates = (m.entry,)
    if not any(c in m.files for c in candidates):
        yield Refusal("entry-listed", f'entry "{m.entry}": none of {", ".join(candidates)} is in [files]')


def _no_network(m: AiManifest, opts: Mapping[str, Any]) -> Iterable[Refusal]:
    if m.resources.network:
        yield Refusal("no-network", "resources.network = true")
    for key in opts:
        if key == "net" or key.startswith("net."):
            yield Refusal("no-network", f"option {key}")


def _no_insecure(opts: Mapping[str, Any]) -> Iterable[Refusal]:
    for key, value in opts.items():
        if _is_insecure_key(key):
            yield Refusal("no-insecure", f"option {key} = {value!r}")
    policy = opts.get("sgx.file_check_policy")
    if policy is not None and policy != "strict":
        yield Refusal("no-insecure", f"sgx.file_check_policy = {policy!r} (only 'strict')")


def _is_insecure_key(key: str) -> bool:
    return any(part.startswith("insecure__") for part in key.split("."))


def _no_debug(opts: Mapping[str, Any]) -> Iterable[Refusal]:
    if opts.get("sgx.debug", False) is not False:
        yield Refusal("no-debug", f"sgx.debug = {opts['sgx.debug']!r} (host could read enclave memory)")
    level = opts.get("loader.log_level")
    if level is not None and level not in _SAFE_LOG_LEVELS:
        yield Refusal("no-debug", f"loader.log_level = {level!r} (at most 'warning')")
    profile = opts.get("sgx.profile.enable")
    if profile is not None and profile != "none":
        yield Refusal("no-debug", f"sgx.profile.enable = {profile!r}")
    if opts.get("sgx.enable_stats", False) is not False:
        yield Refusal("no-debug", f"sgx.enable_stats = {opts['sgx.enable_stats']!r}")


def _no_allowed_files(opts: Mapping[str, Any]) -> Iterable[Refusal]:
    allowed = opts.get("sgx.allowed_files")
    if allowed is not None and allowed != [] and allowed != ():
        yield Refusal("no-allowed-files", f"sgx.allowed_files = {allowed!r}")


def _options_known(opts: Mapping[str, Any]) -> Iterable[Refusal]:
    for key in opts:
        if key in _KNOWN_OPTIONS or _is_insecure_key(key) or key == "net" or key.startswith("net."):
            continue  # judged (and if need be declined) by a more specific rule
        yield Refusal("options-known", f"option {key} is not one the provider knows to be safe")
