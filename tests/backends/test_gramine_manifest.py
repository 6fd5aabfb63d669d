"""The Gramine manifest of the runtime: rendered for the digits AI, parsed, every file and limit checked.

No Gramine here (it cannot be installed on these machines): stage 2, which
``gramine-manifest`` does, runs through our reproduction
(``gramine_manifest.finish``) with the STAND-IN Gramine install in
``tests/helpers/gramine_standin/pkglib`` (placeholder libsysdb.so and glibc).
Hashes are recomputed here with hashlib, independently of the renderer.
"""

from __future__ import annotations

import copy
import hashlib
import re
import shutil
import sys
import tomllib
from dataclasses import replace
from pathlib import Path

import pytest
import tomli_w

from enclave import gramine_manifest as gm
from enclave import measure
from enclave.ai_manifest import load_manifest

REPO = Path(__file__).resolve().parents[2]
STANDIN = gm.GramineInstall(REPO / "tests" / "helpers" / "gramine_standin" / "pkglib")
DIGITS = load_manifest(REPO / "examples" / "digits")


def sha(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def layout() -> gm.RuntimeLayout:
    return gm.RuntimeLayout.current()


@pytest.fixture(scope="module")
def digits_manifest(layout) -> tuple[str, dict]:
    text = gm.render(gm.Limits.for_ai(DIGITS.resources), layout, quote_source="dev-attestation", install=STANDIN)
    return text, tomllib.loads(text)


def trusted_of(doc: dict) -> dict[str, str]:
    return {tf["uri"].removeprefix("file:"): tf["sha256"] for tf in doc["sgx"]["trusted_files"]}


def test_digits_manifest_lists_every_file_with_its_hash_and_the_ais_limits(layout, digits_manifest) -> None:
    """CI-required: the Gramine manifest for the digits AI lists every file with its hash and the AI's limits."""
    text, doc = digits_manifest
    trusted = trusted_of(doc)

    # every file the runtime may read is trusted, with the SHA-256 of the file on disk
    expected = gm.runtime_files(layout)
    assert len(expected) > 500
    for path in expected:
        assert trusted.get(str(path)) == sha(path), path
    for path, digest in trusted.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest) and sha(path) == digest, path
    # the pieces that matter by name: the runtime's own code, the interpreter, the
    # venv marker, the stdlib, cryptography and onnxruntime (the digits AI is ONNX)
    for rel in measure.RUNTIME_FILES:
        assert str(layout.enclave_dir / rel) in trusted, rel
    assert str(layout.python_bin) in trusted and str(layout.venv / "pyvenv.cfg") in trusted
    assert str(layout.stdlib / "json" / "__init__.py") in trusted
    assert any("/onnxruntime/capi/" in p and ".so" in p for p in trusted)
    assert any("/cryptography/hazmat/bindings/_rust" in p for p in trusted)
    # nothing unstable or unneeded: no bytecode, no base site-packages, no repo files outside enclave/
    assert not any("__pycache__" in p or p.endswith(".pyc") for p in trusted)
    assert not any(p.startswith(str(layout.stdlib / "site-packages")) for p in trusted)
    inside = (str(layout.enclave_dir) + "/", str(layout.venv) + "/", str(STANDIN.pkglibdir) + "/")
    assert [p for p in trusted if p.startswith(str(REPO)) and not p.startswith(inside)] == []
    # stage 2: Gramine's runtime dir expanded and hashed, the LibOS as loader entrypoint
    glibc = STANDIN.runtimedir()
    assert trusted[str(glibc / "libc.so.6")] == sha(glibc / "libc.so.6")
    assert doc["loader"]["entrypoint"] == {"uri": f"file:{STANDIN.libos}", "sha256": sha(STANDIN.libos)}
    assert {"path": "/lib", "uri": f"file:{glibc}"} in doc["fs"]["mounts"]
    assert "{{" not in text and "{%" not in text

    # the AI's limits: digits asks for 1GiB enclave, 512MiB memory, 8 threads
    assert (DIGITS.resources.enclave_size, DIGITS.resources.memory, DIGITS.resources.threads) == (1 << 30, 512 << 20, 8)
    assert doc["sgx"]["enclave_size"] == "1G"
    assert gm.parse_size(doc["sgx"]["enclave_size"]) >= DIGITS.resources.memory
    assert doc["sgx"]["max_threads"] == 8 + gm.RUNTIME_THREADS
    assert doc["loader"]["env"]["OMP_NUM_THREADS"] == "8"

    # the fixed, measured command line and the settings a production enclave needs
    assert doc["libos"]["entrypoint"] == str(layout.python_bin)
    assert doc["loader"]["argv"] == [sys.executable, "-m", "enclave.runtime", "--socket", "env:OFNODE_CHANNEL",
                                     "--quote-source", "dev-attestation"]
    assert doc["loader"]["env"]["OFNODE_CHANNEL"] == {"passthrough": True}
    assert [k for k, v in doc["loader"]["env"].items() if isinstance(v, dict)] == ["OFNODE_CHANNEL"]
    assert doc["sgx"]["debug"] is False and doc["sgx"]["remote_attestation"] == "dcap"
    assert doc["sgx"]["file_check_policy"] == "strict" and doc["loader"]["log_level"] == "error"
    assert doc["sys"]["enable_extra_runtime_domain_names_conf"] is False
    assert {"type": "tmpfs", "path": "/tmp"} in doc["fs"]["mounts"]
    assert not any("insecure__" in k for k in doc["loader"]) and "allowed_files" not in doc["sgx"]

    # and the validator agrees
    limits = gm.Limits.for_ai(DIGITS.resources)
    assert gm.check_manifest(text, limits=limits, argv=doc["loader"]["argv"], required=expected) == []


def test_stage_one_keeps_only_gramines_globals_for_gramine_manifest(layout) -> None:
    stage1 = gm.render(gm.Limits.for_ai(DIGITS.resources), layout, quote_source="sim-host")
    assert set(re.findall(r"\{\{.*?\}\}", stage1)) == {"{{ gramine.runtimedir() }}"}
    doc = tomllib.loads(stage1)  # already TOML: gramine-manifest renders it once more
    assert doc["sgx"]["trusted_files"][0] == "file:{{ gramine.runtimedir() }}/"
    assert doc["loader"]["argv"][-1] == "sim-host"
    assert gm.check_manifest(stage1, limits=gm.Limits.for_ai(DIGITS.resources)) == []


@pytest.fixture
def copied_layout(tmp_path, layout) -> gm.RuntimeLayout:
    """The runtime with its enclave/ package copied, so a test can tamper with it."""
    pkg = tmp_path / "enclave"
    for rel in measure.RUNTIME_FILES:
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(layout.enclave_dir / rel, pkg / rel)
    return replace(layout, enclave_dir=pkg)


def test_tampered_file_is_caught(copied_layout) -> None:
    limits = gm.Limits.for_ai(DIGITS.resources)
    text = gm.render(limits, copied_layout, quote_source="dev-attestation", install=STANDIN)
    assert gm.check_manifest(text, limits=limits) == []
    target = copied_layout.enclave_dir / "runtime" / "runners.py"
    target.write_text(target.read_text() + "\n# the host slipped something in\n")
    problems = gm.check_manifest(text, limits=limits)
    assert len(problems) == 1 and f"file:{target}: the manifest says sha256" in problems[0], problems
    with pytest.raises(gm.GramineManifestError, match="runners.py"):
        gm.validate(text, limits=limits)
    # a fresh render picks up the new content (the hash cache is keyed by size and mtime)
    fresh = gm.render(limits, copied_layout, quote_source="dev-attestation", install=STANDIN)
    assert trusted_of(tomllib.loads(fresh))[str(target)] == sha(target)


def test_wrong_or_missing_hash_and_untrusted_required_file_are_caught(digits_manifest, layout) -> None:
    _, doc = digits_manifest
    victim = str(layout.enclave_dir / "ratls.py")

    def edited(change) -> str:
        d = copy.deepcopy(doc)
        d["sgx"]["trusted_files"] = [change(tf) for tf in d["sgx"]["trusted_files"]]
        d["sgx"]["trusted_files"] = [tf for tf in d["sgx"]["trusted_files"] if tf is not None]
        return tomli_w.dumps(d)

    def on_victim(new):
        return lambda tf: new(tf) if tf["uri"] == f"file:{victim}" else tf

    wrong = edited(on_victim(lambda tf: {**tf, "sha256": "0" * 64}))
    expected = f"file:{victim}: the manifest says sha256 0000000000000000…, the file has {sha(victim)[:16]}…"
    assert gm.check_manifest(wrong) == [expected]
    unhashed = edited(on_victim(lambda tf: {"uri": tf["uri"]}))
    assert gm.check_manifest(unhashed) == [f"file:{victim} has no SHA-256 (None)"]
    dropped = edited(on_victim(lambda tf: None))
    assert gm.check_manifest(dropped, required=[Path(victim)]) == [f"{victim} is not a trusted file"]
    gone = edited(on_victim(lambda tf: {**tf, "uri": f"file:{victim}.gone"}))
    assert gm.check_manifest(gone) == [f"file:{victim}.gone cannot be read: No such file or directory"]


def test_limits_and_weakened_settings_are_caught(digits_manifest) -> None:
    text, _ = digits_manifest
    other = gm.Limits(enclave_size=2 << 30, max_threads=60, memory=512 << 20, ai_threads=20)
    problems = gm.check_manifest(text, limits=other)
    assert "sgx.enclave_size is 1G, the AI asks for 2G" in problems
    assert any(p.startswith("sgx.max_threads is 48, expected 60") for p in problems)
    assert any(p.startswith("loader.env.OMP_NUM_THREADS is '8'") for p in problems)
    weakened = (text.replace("debug = false", "debug = true", 1)
                .replace('remote_attestation = "dcap"', 'remote_attestation = "none"', 1))
    weakened += '\n[loader.env.LD_PRELOAD]\npassthrough = true\n\n[loader.x]\ninsecure__use_cmdline_argv = true\n'
    problems = gm.check_manifest(weakened)
    assert "sgx.debug is True, must be False" in problems
    assert "sgx.remote_attestation is 'none', must be 'dcap'" in problems
    assert "loader.env.LD_PRELOAD passes a host value through; only OFNODE_CHANNEL may" in problems
    assert "loader.x.insecure__use_cmdline_argv is set: insecure" in problems
    assert gm.check_manifest("sgx = [") [0].startswith("not valid TOML")


def test_limits_that_cannot_be_an_enclave_are_refused(layout) -> None:
    with pytest.raises(gm.GramineManifestError) as err:
        gm.variables(gm.Limits(enclave_size=768 << 20, max_threads=10, memory=1 << 30, ai_threads=4),
                     layout, quote_source="sim-host", files=[])
    assert err.value.problems == (
        f"enclave size {768 << 20} is not a power of two (SGX needs one)",
        "memory 1G does not fit in the enclave (768M)",
        f"max_threads 10 leaves no room for the runtime's {gm.RUNTIME_THREADS}",
    )
    with pytest.raises(gm.GramineManifestError, match="set by the manifest itself"):
        gm.variables(gm.Limits.for_ai(DIGITS.resources), layout, quote_source="sim-host",
                     env={"LD_LIBRARY_PATH": "/evil"}, files=[])
    with pytest.raises(gm.GramineManifestError, match="cannot go into the manifest"):
        gm.variables(gm.Limits.for_ai(DIGITS.resources), layout, quote_source="sim-host",
                     files=[gm.TrustedFile('/x/{{ evil }}"', "0" * 64)])


def test_sizes_use_gramines_syntax() -> None:
    assert [gm.format_size(n) for n in (1 << 30, 512 << 20, 3 << 10, 1000)] == ["1G", "512M", "3K", "1000"]
    assert [gm.parse_size(s) for s in ("1G", "512M", "3K", "1000")] == [1 << 30, 512 << 20, 3 << 10, 1000]
    with pytest.raises(ValueError):
        gm.parse_size("1GiB")


def test_runtime_threads_cover_the_runtimes_streams() -> None:
    from enclave.runtime.main import MAX_STREAMS

    assert gm.RUNTIME_THREADS >= MAX_STREAMS + 3 + 3  # main, reader, AI + Gramine's IPC, async, TLS helper


def test_command_line_renders_and_checks(tmp_path, capsys) -> None:
    ai = str(REPO / "examples" / "digits")
    assert gm.main(["render", ai, "--gramine", str(STANDIN.pkglibdir)]) == 0
    rendered = tmp_path / "ofenclave.manifest"
    rendered.write_text(capsys.readouterr().out)
    assert tomllib.loads(rendered.read_text())["sgx"]["enclave_size"] == "1G"
    assert gm.main(["check", str(rendered), ai]) == 0
    assert capsys.readouterr().out == ""
    rendered.write_text(rendered.read_text().replace('enclave_size = "1G"', 'enclave_size = "2G"'))
    assert gm.main(["check", str(rendered), ai]) == 1
    assert "sgx.enclave_size is 2G, the AI asks for 1G" in capsys.readouterr().out
    assert gm.main(["check", str(tmp_path / "missing"), ai]) == 2
