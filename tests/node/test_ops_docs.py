"""The operator docs stay true to the code: every config key with its default
in docs/configuration.md, every genesis key in docs/genesis.md, the documented
sim-genesis recipe works, and the shipped systemd unit is well formed."""
from __future__ import annotations

import configparser
import math
import re
import shlex
import stat
import textwrap
import tomllib
from pathlib import Path

import pytest

from node.cli.main import main as cli_main
from node.config import DEFAULTS_PATH, _load_defaults, documented_keys
from node.genesis import _SCHEMA, load_genesis
from node.identity import Identity
from tests.parts import require_part

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
UNIT_DIR = ROOT / "config" / "systemd"


# -- configuration.md ---------------------------------------------------------
def _doc_rows(text: str) -> dict[str, list[str]]:
    """Table rows whose first cell is a `dotted.key`: key -> the other cells."""
    rows = {}
    for line in text.splitlines():
        m = re.match(r"\|\s*`([a-z0-9_]+\.[a-z0-9_]+)`\s*\|(.*)\|\s*$", line)
        if m:
            rows[m.group(1)] = [c.strip() for c in m.group(2).split("|")]
    return rows


def _toml_literal(v: object) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_literal(x) for x in v) + "]"
    return repr(v)


def test_every_config_key_is_in_the_reference_with_its_default() -> None:
    rows = _doc_rows((DOCS / "configuration.md").read_text())
    defaults = _load_defaults()
    missing = [k for k in documented_keys() if k not in rows]
    assert not missing, f"config keys missing from docs/configuration.md: {missing}"
    for key in documented_keys():
        section, name = key.split(".")
        cells = rows[key]
        assert len(cells) == 3, f"{key}: expected | key | type | default | what |"
        typ, default = cells[0], cells[1]
        assert default == f"`{_toml_literal(defaults[section][name])}`", f"{key}: docs say {default}"
        value = defaults[section][name]
        kind = {bool: "bool", int: "int", float: "float", str: "string", list: "list"}[type(value)]
        assert typ.startswith(kind), f"{key}: type {typ!r} should start with {kind!r}"


def test_reference_names_no_key_that_does_not_exist() -> None:
    reference = (DOCS / "configuration.md").read_text().split("## Reference", 1)[1].split("\n## ", 1)[0]
    rows = _doc_rows(reference)
    keys = set(documented_keys())
    # Genesis keys are in genesis.md; configuration.md's tables hold config keys only.
    stale = [k for k in rows if k not in keys]
    assert not stale, f"docs/configuration.md documents keys default.toml lacks: {stale}"


def test_float_defaults_are_written_as_floats() -> None:
    """A float key whose default were written `2` would refuse `2.5` (the type comes from the default)."""
    for section, table in tomllib.loads(DEFAULTS_PATH.read_text()).items():
        for k, v in table.items():
            if isinstance(v, float):
                assert math.isfinite(v), f"{section}.{k}"


# -- genesis.md -----------------------------------------------------------------
def test_every_genesis_key_is_documented() -> None:
    doc = (DOCS / "genesis.md").read_text()
    rows = _doc_rows(doc)
    missing = [f"{s}.{k}" for s, keys in _SCHEMA.items() for k in keys if f"{s}.{k}" not in rows]
    assert not missing, f"genesis keys missing from docs/genesis.md: {missing}"
    for section in _SCHEMA:
        assert f"### `[{section}]`" in doc, f"no heading for [{section}]"


def test_genesis_template_has_every_key() -> None:
    doc = tomllib.loads((ROOT / "config" / "genesis.template.toml").read_text())
    for section, keys in _SCHEMA.items():
        if section == "sim":
            continue  # testnets only; the template is a production starting point
        assert set(doc[section]) == set(keys), section


def test_documented_sim_genesis_recipe_works(tmp_path, monkeypatch) -> None:
    doc = (DOCS / "genesis.md").read_text()
    code = textwrap.dedent(re.search(r"```python\n(.*?)\n *```", doc, re.S).group(1))  # type: ignore[union-attr]
    dos, sec = Identity.generate().peer_id, Identity.generate().peer_id
    code = code.replace('dos_peers=("12D3KooW...",)', f"dos_peers=({dos!r},)")
    code = code.replace('secrets_peers=("12D3KooW...",)', f"secrets_peers=({sec!r},)")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "docs/genesis.md", "exec"), {})
    g = load_genesis(tmp_path / "genesis.toml")
    assert g.network_id == "mynet" and g.dos_peers == (dos,) and g.secrets_peers == (sec,)
    assert g.sim_root_key and g.policy.sim_root_ca and g.policy.mrsigner
    assert stat.S_IMODE((tmp_path / "genesis.toml").stat().st_mode) == 0o600


def test_init_keeps_a_sim_genesis_private(tmp_path, monkeypatch, capsys) -> None:
    """docs: genesis.toml is 0644, 0600 when it carries the sim root key."""
    monkeypatch.chdir(tmp_path)
    from node.genesis import Genesis, Policy

    Genesis("plain", "x", (), 1, (), 1, Policy()).save(tmp_path / "plain.toml")
    from enclave.quotes.sim_pki import SimPki

    pki = SimPki.generate("simnet")
    Genesis("simnet", "x", (), 1, (), 1, Policy(sim_root_ca=pki.root_cert_der),
            sim_root_key=pki.root_key_pem().decode()).save(tmp_path / "sim.toml")
    for name, mode in (("plain", 0o644), ("sim", 0o600)):
        d = tmp_path / f"d-{name}"
        assert cli_main(["init", "--data-dir", str(d), "--genesis", str(tmp_path / f"{name}.toml"), "--json"]) == 0
        assert stat.S_IMODE((d / "genesis.toml").stat().st_mode) == mode, name


# -- the systemd unit -------------------------------------------------------------
def _unit(path: Path) -> configparser.ConfigParser:
    p = configparser.ConfigParser(strict=True, interpolation=None, delimiters=("=",), comment_prefixes=("#",),
                                  empty_lines_in_values=False)
    p.optionxform = str  # type: ignore[assignment,method-assign]
    p.read_string(path.read_text(), str(path))
    return p


def _argv(exec_line: str) -> list[str]:
    return shlex.split(exec_line)


def test_unit_runs_the_console_script_with_valid_arguments() -> None:
    from node.cli.main import build_parser

    svc = _unit(UNIT_DIR / "ofnode.service")["Service"]
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    argv = _argv(svc["ExecStart"])
    assert Path(argv[0]).name in scripts, f"{argv[0]} is not a console script of pyproject.toml"
    args = build_parser().parse_args(argv[1:])
    assert args.command == "start" and args.data_dir == "/var/lib/ofnode"
    assert "ExecStartPost" not in svc  # readiness is sd_notify, no polling


def test_unit_hardening() -> None:
    u = _unit(UNIT_DIR / "ofnode.service")
    svc = u["Service"]
    expect = {
        "Type": "notify", "NotifyAccess": "main",  # READY=1 from `ofnode start`
        "User": "ofnode", "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "PrivateDevices": "yes", "ProtectControlGroups": "yes", "RestrictNamespaces": "yes",
        "CapabilityBoundingSet": "", "StateDirectory": "ofnode", "StateDirectoryMode": "0700",
        "RuntimeDirectory": "ofnode", "RuntimeDirectoryMode": "0700", "UMask": "0077",
        "Restart": "on-failure", "RestartPreventExitStatus": "2", "KillMode": "mixed", "LimitCORE": "0",
        "SystemCallFilter": "@system-service", "StandardError": "journal",
    }
    for k, v in expect.items():
        assert svc.get(k) == v, f"[Service] {k}={svc.get(k)!r}, expected {v!r}"
    assert int(svc["LimitNOFILE"]) >= 65536
    assert u["Install"]["WantedBy"] == "multi-user.target"
    # The exit status for unusable config is the CLI's EXIT_USAGE.
    from node.cli.main import EXIT_USAGE

    assert svc["RestartPreventExitStatus"] == str(EXIT_USAGE)


def test_sim_drop_in_grants_exactly_the_verified_capabilities() -> None:
    svc = _unit(UNIT_DIR / "ofnode.service.d" / "provider-sim.conf")["Service"]
    assert svc["User"] == "root"
    assert set(svc["CapabilityBoundingSet"].split()) == {
        "CAP_SYS_ADMIN", "CAP_NET_ADMIN", "CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_CHOWN", "CAP_FOWNER",
        "CAP_DAC_OVERRIDE", "CAP_KILL"}
    # bwrap's namespaces (root path: no user namespace), hostname, cgroups, mount syscalls
    assert set(svc["RestrictNamespaces"].split()) == {"mnt", "pid", "net", "ipc", "uts", "cgroup"}
    assert svc["ProtectHostname"] == "no" and svc["ProtectControlGroups"] == "no" and svc["Delegate"] == "yes"
    assert svc["SystemCallFilter"] == ""
    assert "NoNewPrivileges" not in svc  # kept from the unit: the sim backend works with no_new_privs


def test_docker_drop_in_keeps_enclave_dirs_visible_to_dockerd() -> None:
    u = _unit(UNIT_DIR / "ofnode.service.d" / "provider-docker.conf")
    svc = u["Service"]
    assert svc["User"] == "root"
    tmp = svc["Environment"].split("=", 1)[1]
    assert svc["Environment"].startswith("TMPDIR=") and tmp.startswith("/var/lib/")
    assert tmp.removeprefix("/var/lib/") in svc["StateDirectory"].split()
    assert "docker.service" in u["Unit"]["After"]
    assert "CAP_SYS_ADMIN" not in svc["CapabilityBoundingSet"]


def _staged_unit(tmp_path: Path, drop_in: str | None) -> Path:
    """The unit with ExecStart pointing at this checkout's console script (verify wants it to exist)."""
    import sys

    ofnode = Path(sys.executable).parent / "ofnode"
    if not ofnode.exists():
        require_part("the ofnode console script", False, f"no {ofnode}: pip install -e .")
    d = tmp_path / (drop_in or "base")
    d.mkdir()
    text = (UNIT_DIR / "ofnode.service").read_text().replace("/opt/ofnode/venv/bin/ofnode", str(ofnode))
    (d / "ofnode.service").write_text(text)
    if drop_in:
        (d / "ofnode.service.d").mkdir()
        (d / "ofnode.service.d" / drop_in).write_text((UNIT_DIR / "ofnode.service.d" / drop_in).read_text())
    return d


@pytest.mark.parametrize("drop_in", [None, "provider-sim.conf", "provider-docker.conf"])
def test_systemd_analyze_verify(tmp_path, drop_in) -> None:
    import shutil
    import subprocess

    require_part("systemd-analyze", shutil.which("systemd-analyze") is not None, "Debian package systemd")
    d = _staged_unit(tmp_path, drop_in)
    r = subprocess.run(["systemd-analyze", "verify", "./ofnode.service"], cwd=d, capture_output=True, text=True,
                       timeout=60)
    assert r.returncode == 0 and not r.stderr.strip() and not r.stdout.strip(), r.stdout + r.stderr
    r = subprocess.run(["systemd-analyze", "security", "--offline=yes", "./ofnode.service"], cwd=d,
                       capture_output=True, text=True, timeout=60)
    m = re.search(r"Overall exposure level for ofnode.service: ([0-9.]+)", r.stdout)
    if r.returncode != 0 or not m:
        require_part("systemd-analyze security --offline", False, r.stderr.strip()[:200])
    # systemd 252's scores: 1.7 (no provider), 2.7 (docker), 5.4 (sim: root with mount rights).
    assert float(m.group(1)) <= {None: 2.0, "provider-docker.conf": 3.0, "provider-sim.conf": 6.0}[drop_in]


# -- links ----------------------------------------------------------------------
@pytest.mark.parametrize("page", ["README.md", "docs/operations.md", "docs/systemd.md", "docs/configuration.md",
                                  "docs/genesis.md", "docs/upgrading.md", "docs/metrics.md"])
def test_relative_links_resolve(page) -> None:
    path = ROOT / page
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("../shared/"):
            continue  # URLs; the shared design repository is not part of this checkout
        assert (path.parent / target).exists(), f"{page}: broken link {target}"


def test_operations_index_links_every_operator_page() -> None:
    index = (DOCS / "operations.md").read_text()
    for page in ("systemd.md", "configuration.md", "genesis.md", "upgrading.md", "metrics.md"):
        assert f"]({page})" in index, page
    readme = (ROOT / "README.md").read_text()
    assert "](docs/operations.md)" in readme
