"""ai.toml parsing and validation, hash_tree and check_files."""

from __future__ import annotations

import os
import textwrap

import pytest

from enclave.ai_manifest import (
    AiManifest,
    ManifestError,
    check_files,
    format_files_table,
    hash_file,
    hash_tree,
    load_manifest,
    parse_manifest,
    parse_size,
    python_entry_candidates,
    relpath_problem,
)

H = "sha256:" + "ab" * 32
MiB = 1 << 20

ONNX = textwrap.dedent(f"""\
    name = "digits"
    version = "1.2.3"
    runtime = "onnx"
    entry = "model.onnx"
    description = "test"

    [resources]
    cpu = 2
    memory = "512MiB"
    enclave_size = "1GiB"
    threads = 8

    [io]
    input = "json"
    output = "json"

    [io.onnx]
    input_name = "input"
    input_key = "pixels"
    input_shape = [64]
    input_dtype = "float32"

    [io.onnx.outputs]
    label = "label"
    probabilities = "probabilities"

    [files]
    "model.onnx" = "{H}"
    "data/x.bin" = "{H}"
""")

PYTHON = textwrap.dedent(f"""\
    name = "wc"
    version = "0.1.0"
    runtime = "python"
    entry = "pkg.wc:run"

    [files]
    "pkg/wc.py" = "{H}"
""")


def bad(text: str, key: str, reason_part: str) -> ManifestError:
    with pytest.raises(ManifestError) as ei:
        parse_manifest(text)
    assert ei.value.key == key, str(ei.value)
    assert reason_part in ei.value.reason, str(ei.value)
    assert str(ei.value).startswith(f"{key}: ") if key else True
    return ei.value


# ---- good manifests --------------------------------------------------------


def test_parse_onnx_manifest() -> None:
    m = parse_manifest(ONNX)
    assert isinstance(m, AiManifest)
    assert (m.name, m.version, m.runtime, m.entry) == ("digits", "1.2.3", "onnx", "model.onnx")
    assert m.resources.cpu == 2
    assert m.resources.memory == 512 * MiB
    assert m.resources.enclave_size == 1024 * MiB
    assert m.resources.threads == 8
    assert m.resources.network is False
    assert m.io.onnx is not None
    assert m.io.onnx.input_shape == (64,)
    assert m.io.onnx.input_size == 64
    assert dict(m.io.onnx.outputs) == {"label": "label", "probabilities": "probabilities"}
    assert list(m.files) == ["data/x.bin", "model.onnx"]  # sorted
    assert m.entry_file == "model.onnx"
    assert m.entry_function is None
    assert dict(m.gramine) == {}


def test_parse_python_manifest_defaults() -> None:
    m = parse_manifest(PYTHON.encode())
    assert m.runtime == "python"
    assert m.resources.cpu == 1 and m.resources.threads == 4
    assert m.resources.memory == 256 * MiB
    assert m.resources.enclave_size == 256 * MiB
    assert (m.io.input, m.io.output, m.io.onnx) == ("bytes", "bytes", None)
    assert m.entry_file == "pkg/wc.py"
    assert m.entry_function == "run"


def test_manifest_is_frozen() -> None:
    m = parse_manifest(PYTHON)
    with pytest.raises(AttributeError):
        m.name = "other"  # type: ignore[misc]
    with pytest.raises(TypeError):
        m.files["x"] = H  # type: ignore[index]


def test_enclave_size_defaults_to_power_of_two_above_memory() -> None:
    m = parse_manifest(PYTHON + '[resources]\nmemory = "300MiB"\n')
    assert m.resources.enclave_size == 512 * MiB


def test_gramine_options_are_flattened() -> None:
    m = parse_manifest(PYTHON + textwrap.dedent("""\
        [gramine]
        sgx.debug = false
        loader.log_level = "error"
        fs.mounts = [{ path = "/tmp", type = "tmpfs" }]
        """))
    assert m.gramine["sgx.debug"] is False
    assert m.gramine["loader.log_level"] == "error"
    assert m.gramine["fs.mounts"][0]["type"] == "tmpfs"


@pytest.mark.parametrize("entry,files", [
    ("wc:run", ("wc.py", "wc/__init__.py")),
    ("a.b.c:main", ("a/b/c.py", "a/b/c/__init__.py")),
    ("src/wc.py:run", ("src/wc.py",)),
])
def test_python_entry_candidates(entry: str, files: tuple[str, ...]) -> None:
    assert python_entry_candidates(entry) == files


@pytest.mark.parametrize("value,expected", [
    (4096, 4096),
    ("4096", 4096),
    ("512MiB", 512 * MiB),
    ("512M", 512 * MiB),
    ("1 GiB", 1 << 30),
    ("2G", 2 << 30),
    ("64KiB", 64 << 10),
    ("1TiB", 1 << 40),
])
def test_parse_size(value: object, expected: int) -> None:
    assert parse_size(value) == expected


@pytest.mark.parametrize("value", ["12XB", "512MB", "1.5GiB", "-1", "", "MiB", 0, -5, True, 1.5, None])
def test_parse_size_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


# ---- bad manifests: each names the key and the reason ----------------------


def test_invalid_toml() -> None:
    bad("name = ", "", "invalid TOML")


def test_not_utf8() -> None:
    with pytest.raises(ManifestError, match="UTF-8"):
        parse_manifest(b"name = \"\xff\"")


@pytest.mark.parametrize("missing", ["name", "version", "runtime", "entry"])
def test_required_keys(missing: str) -> None:
    text = "\n".join(line for line in PYTHON.splitlines() if not line.startswith(missing + " "))
    bad(text, missing, "is required")


def test_unknown_top_level_key() -> None:
    bad("colour = 1\n" + PYTHON, "colour", "unknown key")


def test_unknown_resources_key_typo() -> None:
    bad(PYTHON + '[resources]\nmemroy = "1GiB"\n', "resources.memroy", "unknown key")


def test_unknown_io_key() -> None:
    bad(ONNX.replace('output = "json"', 'output = "json"\nformat = "x"'), "io.format", "unknown key")


def test_unknown_onnx_key() -> None:
    bad(ONNX.replace('input_dtype = "float32"', 'input_dtype = "float32"\nbatch = 4'), "io.onnx.batch", "unknown key")


@pytest.mark.parametrize("name", ["Digits", "my_ai", "-x", "x-", "", "a" * 65, "a b"])
def test_bad_name(name: str) -> None:
    bad(PYTHON.replace('name = "wc"', f'name = "{name}"'), "name", "not a lowercase slug")


def test_name_wrong_type() -> None:
    bad(PYTHON.replace('name = "wc"', "name = 3"), "name", "not a string")


@pytest.mark.parametrize("version", ["1", "1.0", "v1.0.0", "01.0.0", "1.0.0.0", "1.0.0-"])
def test_bad_version(version: str) -> None:
    bad(PYTHON.replace('version = "0.1.0"', f'version = "{version}"'), "version", "not a version")


@pytest.mark.parametrize("version", ["0.0.1", "10.20.30", "1.0.0-rc.1", "1.0.0+build.5", "1.0.0-alpha+001"])
def test_good_version(version: str) -> None:
    assert parse_manifest(PYTHON.replace('version = "0.1.0"', f'version = "{version}"')).version == version


def test_bad_runtime() -> None:
    bad(PYTHON.replace('runtime = "python"', 'runtime = "docker"'), "runtime", '"docker" is not one of onnx, python')


@pytest.mark.parametrize("entry,reason", [
    ("model.pt", "not an .onnx file"),
    ("/abs/model.onnx", "absolute path"),
    ("../model.onnx", "'..' path component"),
])
def test_bad_onnx_entry(entry: str, reason: str) -> None:
    bad(ONNX.replace('entry = "model.onnx"', f'entry = "{entry}"'), "entry", reason)


@pytest.mark.parametrize("entry,reason", [
    ("wc", "is not \"module:function\""),
    ("wc:", "is not \"module:function\""),
    ("wc:1run", "is not \"module:function\""),
    ("wc-x:run", "not a dotted module name"),
    ("../wc.py:run", "'..' path component"),
    ("/x/wc.py:run", "absolute path"),
])
def test_bad_python_entry(entry: str, reason: str) -> None:
    bad(PYTHON.replace('entry = "pkg.wc:run"', f'entry = "{entry}"'), "entry", reason)


@pytest.mark.parametrize("line,key,reason", [
    ('memory = "12XB"', "resources.memory", '"12XB" is not a size'),
    ('memory = "512MB"', "resources.memory", "is not a size"),
    ("memory = 0", "resources.memory", "not a positive size"),
    ("cpu = 0", "resources.cpu", "not an integer >= 1"),
    ('cpu = "2"', "resources.cpu", "not an integer >= 1"),
    ("cpu = true", "resources.cpu", "not an integer >= 1"),
    ("threads = 1.5", "resources.threads", "not an integer >= 1"),
    ('enclave_size = "768MiB"', "resources.enclave_size", "not a power of two"),
    ('memory = "1GiB"\nenclave_size = "512MiB"', "resources.enclave_size", "smaller than resources.memory"),
    ('network = "no"', "resources.network", "not true or false"),
])
def test_bad_resources(line: str, key: str, reason: str) -> None:
    bad(PYTHON + "[resources]\n" + line + "\n", key, reason)


def test_resources_not_a_table() -> None:
    bad(PYTHON.replace('entry = "pkg.wc:run"', 'entry = "pkg.wc:run"\nresources = 3'), "resources", "must be a table")


@pytest.mark.parametrize("old,new,key,reason", [
    ('input = "json"', 'input = "xml"', "io.input", "not one of"),
    ('input = "json"', 'input = "bytes"', "io.input", 'must be "json"'),
    ("input_shape = [64]", "input_shape = [8, 0]", "io.onnx.input_shape", "positive integers"),
    ("input_shape = [64]", "input_shape = []", "io.onnx.input_shape", "positive integers"),
    ("input_shape = [64]", 'input_shape = "64"', "io.onnx.input_shape", "positive integers"),
    ('input_dtype = "float32"', 'input_dtype = "float16"', "io.onnx.input_dtype", "not one of"),
    ('input_key = "pixels"', 'input_key = ""', "io.onnx.input_key", "is empty"),
    ('input_name = "input"\n', "", "io.onnx.input_name", "is required"),
    ('label = "label"', "label = 1", "io.onnx.outputs.label", "not an ONNX output name"),
])
def test_bad_onnx_io(old: str, new: str, key: str, reason: str) -> None:
    assert old in ONNX
    bad(ONNX.replace(old, new, 1), key, reason)


def test_onnx_requires_io_onnx() -> None:
    text = ONNX.split("[io.onnx]")[0] + f'[files]\n"model.onnx" = "{H}"\n'
    bad(text, "io.onnx", "required")


def test_io_onnx_only_for_onnx_runtime() -> None:
    bad(PYTHON + '[io.onnx]\ninput_name = "x"\n', "io.onnx", "only allowed")


@pytest.mark.parametrize("path,reason", [
    ("/etc/passwd", "absolute path"),
    ("../x.py", "'..' path component"),
    ("a/../../x", "'..' path component"),
    ("./x", "'.' path component"),
    ("a//b", "empty path component"),
    ("a\\\\b", "backslash"),
    ("C:x", "colon"),
    ("a\\u0000b", "control character"),
])
def test_bad_file_paths(path: str, reason: str) -> None:
    err = bad(PYTHON + f'"{path}" = "{H}"\n', err_key(path), reason)
    assert "path" in err.reason


def err_key(path: str) -> str:
    """The key an error about file ``path`` (as written in TOML source) carries."""
    import tomllib

    real = tomllib.loads(f'"{path}" = 1').popitem()[0]
    from enclave.ai_manifest import toml_string

    return f"files.{toml_string(real)}"


@pytest.mark.parametrize("digest", [
    "ab" * 32,
    "sha256:" + "ab" * 31,
    "sha256:" + "AB" * 32,
    "sha1:" + "ab" * 20,
    "sha256:" + "zz" * 32,
])
def test_bad_file_hash(digest: str) -> None:
    bad(PYTHON + f'"x.bin" = "{digest}"\n', 'files."x.bin"', "is not \"sha256:\"")


def test_manifest_cannot_list_itself() -> None:
    bad(PYTHON + f'"ai.toml" = "{H}"\n', 'files."ai.toml"', "cannot list itself")


def test_load_manifest_from_dir_and_file(tmp_path) -> None:
    (tmp_path / "ai.toml").write_text(PYTHON)
    assert load_manifest(tmp_path) == load_manifest(tmp_path / "ai.toml")
    with pytest.raises(ManifestError, match="cannot read"):
        load_manifest(tmp_path / "nope")


# ---- relpath_problem -------------------------------------------------------


@pytest.mark.parametrize("path", ["a", "a/b/c.txt", "ünïcode/файл", "a..b", ".hidden", "x y"])
def test_relpath_ok(path: str) -> None:
    assert relpath_problem(path) is None


@pytest.mark.parametrize("path", ["", "/a", "a/", "a/./b", "..", "a\\b", "a:b", "a\nb", "x" * 256, "\udcff"])
def test_relpath_bad(path: str) -> None:
    assert relpath_problem(path) is not None


# ---- hash_tree / check_files ------------------------------------------------


def make_ai(root, files: dict[str, bytes], manifest_extra: str = "") -> AiManifest:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    tree = hash_tree(root)
    text = textwrap.dedent("""\
        name = "t"
        version = "1.0.0"
        runtime = "python"
        entry = "main.py:run"
        """) + manifest_extra + "\n" + format_files_table(tree)
    (root / "ai.toml").write_text(text)
    return load_manifest(root)


def test_hash_tree(tmp_path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x.txt").write_bytes(b"hello")
    (tmp_path / "a.py").write_bytes(b"")
    (tmp_path / "ai.toml").write_text("ignored")
    tree = hash_tree(tmp_path)
    assert list(tree) == ["a.py", "b/x.txt"]
    assert tree["b/x.txt"] == "sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    assert tree["a.py"] == hash_file(tmp_path / "a.py")


def test_hash_tree_keeps_nested_ai_toml(tmp_path) -> None:
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "ai.toml").write_text("x")
    assert list(hash_tree(tmp_path)) == ["sub/ai.toml"]


def test_hash_tree_refuses_symlink(tmp_path) -> None:
    (tmp_path / "real").write_text("x")
    os.symlink("real", tmp_path / "link")
    with pytest.raises(ManifestError, match='"link" is a symlink'):
        hash_tree(tmp_path)


def test_hash_tree_refuses_fifo(tmp_path) -> None:
    os.mkfifo(tmp_path / "pipe")
    with pytest.raises(ManifestError, match="not a regular file"):
        hash_tree(tmp_path)


def test_hash_tree_not_a_dir(tmp_path) -> None:
    with pytest.raises(ManifestError):
        hash_tree(tmp_path / "missing")


def test_check_files_ok(tmp_path) -> None:
    m = make_ai(tmp_path, {"main.py": b"def run(b): return b\n", "data/w.bin": b"\x00" * 10})
    check_files(tmp_path, m)  # does not raise
    assert list(m.files) == ["data/w.bin", "main.py"]


def test_check_files_reports_every_problem(tmp_path) -> None:
    m = make_ai(tmp_path, {"main.py": b"x", "gone.txt": b"y", "data.bin": b"z"})
    (tmp_path / "gone.txt").unlink()
    (tmp_path / "data.bin").write_bytes(b"changed")
    (tmp_path / "extra.txt").write_bytes(b"sneaky")
    with pytest.raises(ManifestError) as ei:
        check_files(tmp_path, m)
    msg = str(ei.value)
    assert ei.value.key == "files"
    assert '"gone.txt" is missing' in msg
    assert '"data.bin" has sha256:' in msg
    assert '"extra.txt" is not listed' in msg


def test_check_files_extra_pycache(tmp_path) -> None:
    m = make_ai(tmp_path, {"main.py": b"x"})
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "main.cpython-311.pyc").write_bytes(b"\x00")
    with pytest.raises(ManifestError, match="not listed"):
        check_files(tmp_path, m)


def test_format_files_table_round_trips_odd_names(tmp_path) -> None:
    names = {'we"ird.txt': b"1", "back slash/ü.bin": b"2", "a'b#c=d.txt": b"3"}
    m = make_ai(tmp_path, names)
    assert set(m.files) == set(names)
    check_files(tmp_path, m)
