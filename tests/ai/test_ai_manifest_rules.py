"""The questionable-manifest rules: a clean manifest passes, each rule declines."""

from __future__ import annotations

import dataclasses
import re
import textwrap
import types
from pathlib import Path

import pytest

from enclave.ai_manifest import AiManifest, Resources, parse_manifest
from enclave.manifest_rules import RULES, Limits, Refusal, check_manifest, flatten_options

H = "sha256:" + "cd" * 32
GiB = 1 << 30
MiB = 1 << 20
DOCS = Path(__file__).resolve().parents[2] / "docs" / "ai-manifest.md"

CLEAN = textwrap.dedent(f"""\
    name = "wc"
    version = "1.0.0"
    runtime = "python"
    entry = "wc:run"

    [resources]
    cpu = 2
    memory = "512MiB"
    enclave_size = "1GiB"
    threads = 8

    [gramine]
    sgx.debug = false
    loader.log_level = "error"
    sgx.file_check_policy = "strict"
    sys.stack.size = "2M"
    fs.mounts = [
      {{ path = "/tmp", type = "tmpfs" }},
      {{ path = "/models", uri = "file:weights" }},
    ]

    [files]
    "wc.py" = "{H}"
    "weights/w.bin" = "{H}"
""")

PROVIDER = Limits(cpu=4, memory=2 * GiB, enclave_size=4 * GiB, threads=64)
REQUEST = Limits(cpu=2, memory=1 * GiB, enclave_size=1 * GiB, threads=None)


def clean() -> AiManifest:
    return parse_manifest(CLEAN)


def rules_of(refusals: list[Refusal]) -> set[str]:
    return {r.rule for r in refusals}


def only(refusals: list[Refusal], rule: str) -> list[Refusal]:
    """Assert every refusal is of ``rule`` (and there is one), and return them."""
    assert refusals, "expected a refusal"
    assert rules_of(refusals) == {rule}, [str(r) for r in refusals]
    return refusals


def with_files(m: AiManifest, files: dict[str, str]) -> AiManifest:
    return dataclasses.replace(m, files=types.MappingProxyType(files))


def test_clean_manifest_passes() -> None:
    assert check_manifest(clean(), PROVIDER, REQUEST) == []


def test_clean_manifest_passes_without_request_and_with_tree() -> None:
    m = clean()
    assert check_manifest(m, Limits(), tree=dict(m.files)) == []


def test_clean_onnx_example_manifest_passes() -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    for ai in ("digits", "wordcount-python"):
        m = parse_manifest((root / ai / "ai.toml").read_bytes())
        assert check_manifest(m, PROVIDER) == [], ai


def test_refusal_str() -> None:
    assert str(Refusal("no-debug", "sgx.debug = True")) == "no-debug: sgx.debug = True"


# ---- one test per rule ------------------------------------------------------


@pytest.mark.parametrize("field,value", [
    ("cpu", 8), ("memory", 4 * GiB), ("enclave_size", 8 * GiB), ("threads", 128),
])
def test_resources_provider(field: str, value: int) -> None:
    m = clean()
    m = dataclasses.replace(m, resources=dataclasses.replace(m.resources, **{field: value}))
    refusals = [r for r in check_manifest(m, PROVIDER) if r.rule == "resources-provider"]
    assert len(refusals) == 1
    assert f"resources.{field} = {value}" in refusals[0].reason


@pytest.mark.parametrize("field,limit", [
    ("cpu", 1), ("memory", 256 * MiB), ("enclave_size", 512 * MiB), ("threads", 4),
])
def test_resources_request(field: str, limit: int) -> None:
    refusals = check_manifest(clean(), PROVIDER, Limits(**{field: limit}))
    assert only(refusals, "resources-request")[0].reason.endswith(f"request allows at most {limit}")


def test_files_hashed_no_files() -> None:
    m = with_files(clean(), {})
    assert "files-hashed" in rules_of(check_manifest(m, PROVIDER))


@pytest.mark.parametrize("digest", ["sha256:" + "cd" * 31, "md5:" + "cd" * 16, "cd" * 32, "sha256:" + "CD" * 32])
def test_files_hashed_bad_digest(digest: str) -> None:
    m = with_files(clean(), {"wc.py": H, "weights/w.bin": digest})
    only(check_manifest(m, PROVIDER), "files-hashed")


def test_files_match() -> None:
    m = clean()
    tree = {"wc.py": "sha256:" + "00" * 32, "extra.txt": H}  # weights/w.bin missing
    refusals = only(check_manifest(m, PROVIDER, tree=tree), "files-match")
    text = " ".join(r.reason for r in refusals)
    assert '"wc.py" does not match' in text
    assert '"weights/w.bin" is listed but missing' in text
    assert '"extra.txt" is present but not listed' in text


@pytest.mark.parametrize("path", ["/etc/passwd", "../up.py", "a/../../b"])
def test_paths_confined_files(path: str) -> None:
    m = with_files(clean(), {"wc.py": H, "weights/w.bin": H, path: H})
    only(check_manifest(m, PROVIDER), "paths-confined")


def test_paths_confined_entry() -> None:
    m = dataclasses.replace(clean(), entry="/abs/wc.py:run")
    assert "paths-confined" in rules_of(check_manifest(m, PROVIDER))


@pytest.mark.parametrize("mount", [
    {"path": "/data", "uri": "file:/etc"},
    {"path": "/data", "uri": "file:../other-ai"},
    {"path": "/data", "uri": "dev:/dev/sda"},
    {"path": "/data", "uri": "file:/home/user", "type": "chroot"},
    {"path": "/data", "uri": "file:weights", "type": "encrypted"},
    {"path": "/data", "uri": "file:weights", "key_name": "x"},
    {"path": "/", "uri": "file:weights"},
    {"path": "data", "uri": "file:weights"},
    {"path": "/../etc", "type": "tmpfs"},
    {"path": "/tmp", "type": "tmpfs", "uri": "file:/tmp"},
    "file:/etc",
])
def test_paths_confined_mounts(mount: object) -> None:
    refusals = check_manifest(clean(), PROVIDER, options={"fs.mounts": [mount]})
    assert only(refusals, "paths-confined")[0].reason.startswith("fs.mounts[0]")


def test_paths_confined_mounts_not_a_list() -> None:
    only(check_manifest(clean(), PROVIDER, options={"fs": {"mounts": "file:/"}}), "paths-confined")


@pytest.mark.parametrize("entry,files", [
    ("wc:run", {"other.py": H}),
    ("pkg.mod:run", {"pkg/other.py": H}),
    ("src/main.py:run", {"main.py": H}),
])
def test_entry_listed_python(entry: str, files: dict[str, str]) -> None:
    m = with_files(dataclasses.replace(clean(), entry=entry), files)
    only(check_manifest(m, PROVIDER), "entry-listed")


def test_entry_listed_python_package_init() -> None:
    m = with_files(dataclasses.replace(clean(), entry="pkg.mod:run"), {"pkg/mod/__init__.py": H})
    assert check_manifest(m, PROVIDER) == []


def test_entry_listed_onnx() -> None:
    m = dataclasses.replace(parse_manifest(
        (Path(__file__).resolve().parents[2] / "examples" / "digits" / "ai.toml").read_bytes()
    ), entry="other.onnx")
    only(check_manifest(m, PROVIDER), "entry-listed")


def test_no_network_resources() -> None:
    m = clean()
    m = dataclasses.replace(m, resources=dataclasses.replace(m.resources, network=True))
    only(check_manifest(m, PROVIDER), "no-network")


@pytest.mark.parametrize("options", [{"net.allow": True}, {"net": {"hosts": ["example.com"]}}])
def test_no_network_options(options: dict) -> None:
    only(check_manifest(clean(), PROVIDER, options=options), "no-network")


@pytest.mark.parametrize("options", [
    {"loader.insecure__use_cmdline_argv": True},
    {"sys.insecure__allow_eventfd": True},
    {"loader": {"insecure__use_host_env": True}},
    {"sgx.insecure__rpc_thread_num": 4},
    {"sgx.file_check_policy": "allow_all_but_log"},
])
def test_no_insecure(options: dict) -> None:
    only(check_manifest(clean(), PROVIDER, options=options), "no-insecure")


@pytest.mark.parametrize("options", [
    {"sgx.debug": True},
    {"sgx": {"debug": 1}},
    {"loader.log_level": "debug"},
    {"loader.log_level": "all"},
    {"sgx.profile.enable": "main"},
    {"sgx.enable_stats": True},
])
def test_no_debug(options: dict) -> None:
    only(check_manifest(clean(), PROVIDER, options=options), "no-debug")


def test_no_debug_from_manifest_gramine_table() -> None:
    m = parse_manifest(CLEAN.replace("sgx.debug = false", "sgx.debug = true"))
    only(check_manifest(m, PROVIDER), "no-debug")


@pytest.mark.parametrize("allowed", [["file:/tmp/"], ["file:weights/"]])
def test_no_allowed_files(allowed: list[str]) -> None:
    only(check_manifest(clean(), PROVIDER, options={"sgx.allowed_files": allowed}), "no-allowed-files")


def test_empty_allowed_files_is_fine() -> None:
    assert check_manifest(clean(), PROVIDER, options={"sgx.allowed_files": []}) == []


@pytest.mark.parametrize("options", [
    {"sgx.enclave_size": "64G"},
    {"loader.env.LD_PRELOAD": "/tmp/evil.so"},
    {"fs.root.uri": "file:/"},
    {"sgx.trusted_files": ["file:/"]},
    {"libos.entrypoint": "/bin/sh"},
])
def test_options_known(options: dict) -> None:
    only(check_manifest(clean(), PROVIDER, options=options), "options-known")


def test_every_refusal_uses_a_documented_rule() -> None:
    m = clean()
    m = dataclasses.replace(
        m,
        resources=Resources(cpu=99, memory=99 * GiB, enclave_size=128 * GiB, threads=999, network=True),
        entry="/x.py:run",
        files=types.MappingProxyType({"../a": "nope"}),
    )
    options = {
        "sgx.debug": True, "sgx.allowed_files": ["file:/"], "loader.insecure__use_cmdline_argv": True,
        "net.x": 1, "fs.mounts": [{"path": "/h", "uri": "file:/"}], "foo.bar": 1,
    }
    refusals = check_manifest(m, PROVIDER, REQUEST, options=options, tree={"b": H})
    assert rules_of(refusals) == set(RULES)


def test_flatten_options() -> None:
    assert flatten_options({"sgx": {"debug": True, "profile": {"enable": "none"}}, "a.b": 1}) == {
        "sgx.debug": True, "sgx.profile.enable": "none", "a.b": 1,
    }


def test_rules_table_in_docs_lists_every_rule() -> None:
    text = DOCS.read_text(encoding="utf-8")
    documented = set(re.findall(r"^\|\s*`([a-z-]+)`\s*\|", text, flags=re.M))
    assert set(RULES) <= documented, set(RULES) - documented
