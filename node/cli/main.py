"""The `ofnode` command line.

Client commands talk JSON-RPC to a running node over its Unix socket and import
nothing heavy, so they answer in tens of milliseconds. Only `start` (and
`testnet up`, which spawns daemons) imports libp2p.

Exit codes: 0 success, 1 the operation failed, 2 bad usage or unusable input,
3 no node reachable.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

from ..api.client import ApiClient, ApiUnavailable
from ..api.jsonrpc import RpcError
from . import output

EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE = 1, 2, 3


class CliError(Exception):
    def __init__(self, msg: str, code: int = EXIT_FAIL) -> None:
        super().__init__(msg)
        self.code = code


def _socket_path(args: argparse.Namespace) -> Path:
    if args.socket:
        return Path(args.socket)
    if os.environ.get("OFNODE_SOCKET"):
        return Path(os.environ["OFNODE_SOCKET"])
    from ..config import ConfigError, load_config

    try:
        return load_config(args.data_dir).socket_path
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None


def _client(args: argparse.Namespace, timeout: float = 30.0) -> ApiClient:
    return ApiClient(_socket_path(args), timeout=timeout)


def _call(args: argparse.Namespace, method: str, params: dict[str, Any] | None = None, timeout: float = 30.0) -> Any:
    with _client(args, timeout) as c:
        return c.call(method, params)


# -- commands ---------------------------------------------------------------
def cmd_start(args: argparse.Namespace) -> int:
    import json

    from ..config import ConfigError, load_config
    from ..genesis import GenesisError
    from ..identity import IdentityError
    from ..logs import setup_logging

    try:
        cfg = load_config(args.data_dir, args.config)
    except ConfigError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    setup_logging(cfg.log_level, cfg["log"]["format"], cfg["log"]["file"])
    import trio

    from ..daemon import Node, NodeError
    from ..dos.collateral import CollateralError
    from ..secrets.share_store import ShareStoreError
    from ..store.blockstore import BlockstoreError

    try:
        node = Node(cfg)
    except (GenesisError, IdentityError, NodeError) as e:
        raise CliError(str(e), EXIT_USAGE) from None
    except (BlockstoreError, ShareStoreError, CollateralError, OSError) as e:
        # Damaged or unreadable state in the data dir: an operator must look (exit 2, which
        # the systemd unit does not retry), not a traceback and a restart loop.
        raise CliError(f"cannot start: {e}", EXIT_USAGE) from None

    def ready(info: dict[str, Any]) -> None:
        sd_notify(f"READY=1\nSTATUS=ready: {info['peer_id']} on {info['socket']}\nMAINPID={os.getpid()}")
        if args.ready_fd is not None:
            with os.fdopen(args.ready_fd, "w") as f:
                json.dump(info, f)
        else:
            output.say(f"ofnode {info['name']} ({info['peer_id']}) ready on {info['socket']}")

    try:
        trio.run(node.run, ready)
    except NodeError as e:
        raise CliError(str(e)) from None
    except KeyboardInterrupt:
        pass
    return 0


def sd_notify(state: str) -> bool:
    """Tell systemd (``Type=notify``) our state through ``$NOTIFY_SOCKET``; False when not under it."""
    import socket

    addr = os.environ.get("NOTIFY_SOCKET", "")
    if not addr or addr[0] not in "/@":
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.connect("\0" + addr[1:] if addr[0] == "@" else addr)
            s.sendall(state.encode())
    except OSError:
        return False  # readiness is advisory: never let it stop the node
    return True


def cmd_init(args: argparse.Namespace) -> int:
    import tomli_w

    from ..config import load_config, ROLES
    from ..fsutil import atomic_write, private_dir
    from ..genesis import load_genesis, GenesisError
    from ..identity import load_or_create_identity

    from ..config import default_data_dir
    ddir = private_dir(Path(args.data_dir) if args.data_dir else default_data_dir())
    cfg_path = ddir / "config.toml"
    if cfg_path.exists() and not args.force:
        raise CliError(f"{cfg_path} exists; use --force to overwrite it (the identity key is never overwritten)", EXIT_USAGE)
    for r in args.role:
        if r not in ROLES:
            raise CliError(f"unknown role {r!r}; roles: {', '.join(ROLES)}", EXIT_USAGE)
    if args.genesis:
        try:
            g = load_genesis(args.genesis)
        except GenesisError as e:
            raise CliError(str(e), EXIT_USAGE) from None
        # A sim genesis carries the sim root CA's private key: private, as Genesis.save writes it.
        atomic_write(ddir / "genesis.toml", Path(args.genesis).read_bytes(), mode=0o600 if g.sim_root_key else 0o644)
    doc: dict[str, Any] = {"node": {"roles": args.role}}
    if args.listen:
        doc["p2p"] = {"listen": args.listen}
    if args.bootstrap:
        doc.setdefault("p2p", {})["bootstrap"] = args.bootstrap
    atomic_write(cfg_path, tomli_w.dumps(doc).encode(), mode=0o600)
    load_config(ddir)  # validate what we wrote
    ident, created = load_or_create_identity(ddir)
    res = {"data_dir": str(ddir), "peer_id": ident.peer_id, "created_identity": created, "config": str(cfg_path)}
    if args.json:
        output.emit_json(res)
    else:
        output.kv("initialised", list(res.items()))
    return 0


def cmd_id(args: argparse.Namespace) -> int:
    from ..config import default_data_dir
    from ..identity import IdentityError, load_identity

    ddir = Path(args.data_dir) if args.data_dir else default_data_dir()
    try:
        pid = load_identity(ddir).peer_id
    except IdentityError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    output.emit_json({"peer_id": pid}) if args.json else print(pid)
    return 0


def cmd_cid(args: argparse.Namespace) -> int:
    import time

    from enclave.unixfs import import_stream

    results = []
    for f in args.files:
        t = time.monotonic()
        try:
            with open(f, "rb", buffering=0) as stream:
                r = import_stream(stream)
        except OSError as e:
            raise CliError(f"{f}: {e.strerror}", EXIT_USAGE) from None
        results.append({"file": f, "cid": r.cid.encode(), "size": r.size, "blocks": r.blocks,
                        "seconds": round(time.monotonic() - t, 4)})
    if args.json:
        output.emit_json(results if len(results) > 1 else results[0])
    else:
        for r in results:
            print(f"{r['cid']}  {r['file']}" if len(results) > 1 else r["cid"])
    return 0


def _call_with_progress(args: argparse.Namespace, method: str, params: dict[str, Any], timeout: float = 3600) -> Any:
    line = output.ProgressLine(not args.json)
    try:
        with _client(args, timeout) as c:
            return c.call(method, params, on_progress=line)
    finally:
        line.done()


def cmd_store_add(args: argparse.Namespace) -> int:
    r = _call_with_progress(args, "store.add", {"path": str(Path(args.file).resolve())})
    output.emit_json(r) if args.json else print(r["cid"])
    return 0


def cmd_store_get(args: argparse.Namespace) -> int:
    r = _call_with_progress(args, "store.get", {"cid": args.cid, "out": str(Path(args.output).resolve())})
    output.emit_json(r) if args.json else output.say(f"wrote {r['size']} bytes to {r['path']}")
    return 0


def cmd_store_simple(args: argparse.Namespace) -> int:
    params = {"cid": args.cid} if getattr(args, "cid", None) else {}
    r = _call(args, f"store.{args.store_cmd}", params, timeout=3600)
    if args.json:
        output.emit_json(r)
    elif args.store_cmd == "ls":
        output.table(f"{len(r['pins'])} pin(s); {r['blocks']} blocks, {r['bytes'] / 1e6:.1f} MB",
                     ["pinned root"], [(p,) for p in r["pins"]])
    elif args.store_cmd == "verify":
        print(f"{r['ok']} blocks ok, {len(r['corrupt'])} corrupt (quarantined), {len(r['stray'])} stray files")
        for c in r["corrupt"]:
            print(f"corrupt: {c}")
        return 0 if r["clean"] else 1
    elif args.store_cmd == "gc":
        print(f"removed {r['blocks']} blocks, {r['bytes'] / 1e6:.1f} MB")
    else:
        print(json.dumps(r))
    return 0


def cmd_ai_publish(args: argparse.Namespace) -> int:
    r = _call_with_progress(args, "ai.publish", {"dir": str(Path(args.dir).resolve())})
    if args.json:
        output.emit_json(r)
    else:
        output.say(f"published {r['name']} {r['version']} ({r['runtime']}): {r['plaintext_bytes'] / 1e6:.2f} MB "
                   f"encrypted into {r['blocks']} blocks in {r['seconds']:.2f} s")
        print(r["cid"])
    return 0


def cmd_ai_inspect(args: argparse.Namespace) -> int:
    r = _call(args, "ai.inspect", {"cid": args.cid})
    if args.json:
        output.emit_json(r)
        return 0
    res = r["resources"]
    output.kv(f"AI {r['cid']}", [
        ("name", f"{r['name']} {r['version']}"), ("runtime", r["runtime"]), ("entry", r["entry"]),
        ("description", r["description"]),
        ("resources", f"cpu {res['cpu']}, memory {res['memory'] >> 20} MiB, enclave {res['enclave_size'] >> 20} MiB, "
                      f"threads {res['threads']}"),
        ("files", "\n".join(f"{k}  {v}" for k, v in r["files"].items())),
    ])
    return 0


def _parse_size(text: str) -> int:
    units = {"": 1, "k": 1 << 10, "kib": 1 << 10, "m": 1 << 20, "mib": 1 << 20, "g": 1 << 30, "gib": 1 << 30}
    t = text.strip().lower()
    num = t.rstrip("kmgib")
    unit = t[len(num):]
    if not num.isdigit() or unit not in units:
        raise CliError(f"--memory: {text!r} is not a size (e.g. 512MiB, 2GiB)", EXIT_USAGE)
    return int(num) * units[unit]


def cmd_submit(args: argparse.Namespace) -> int:
    import base64

    inp = Path(args.input)
    if not inp.is_file():
        raise CliError(f"--input: {inp}: no such file", EXIT_USAGE)
    params = {"ai_cid": args.cid, "input_path": str(inp.resolve()), "cpu": args.cpu,
              "memory": _parse_size(args.memory), "tee": args.tee, "backend": args.backend or "",
              "deadline_s": args.deadline or 0}

    def stage(p: dict[str, Any]) -> None:
        if not args.json and "stage" in p and "job" in p:
            extra = " ".join(f"{k}={v}" for k, v in p.items() if k not in ("stage", "job", "seconds", "id"))
            output.say(f"  {p['seconds']:7.3f} s  {p['stage']:<10} {extra}")

    with _client(args, timeout=3700) as c:
        if not args.json:
            output.say(f"submitting to the network: AI {args.cid}")
        r = c.call("job.submit", params, on_progress=stage)
    out = base64.b64decode(r.pop("output_b64"))
    if args.output:
        Path(args.output).write_bytes(out)
    if args.json:
        r["output_path"] = args.output or ""
        if not args.output:
            r["output"] = out.decode(errors="replace")
        output.emit_json(r)
        return 0
    rc = r["receipt"]
    output.say(f"job {r['id']} done on provider {r['provider'][-12:]} in {r['stages']['done']:.3f} s "
               f"(attempts {r['attempts']})")
    output.say(f"verified receipt: input {rc.get('input_sha256', '')[:16]}…, output {rc.get('output_sha256', '')[:16]}…, "
               f"enclave {r['mrenclave'][:16]}…, signed by the attested enclave key")
    if args.output:
        output.say(f"output written to {args.output}")
    else:
        sys.stdout.write(out.decode(errors="replace") + ("\n" if not out.endswith(b"\n") else ""))
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    items = _call(args, "jobs.list", {"limit": args.limit})
    if args.json:
        output.emit_json(items)
        return 0
    output.table(f"{len(items)} job(s)", ["id", "state", "AI", "provider", "seconds", "error"],
                 [(j["id"][:12], j["state"], j["ai_cid"][-10:], j["provider"][-10:],
                   j["stages"].get("done", ""), j["error"][:60]) for j in items])
    return 0


def cmd_job(args: argparse.Namespace) -> int:
    j = _call(args, "job.get", {"id": args.id, "output": bool(args.output)})
    if args.output:
        import base64

        Path(args.output).write_bytes(base64.b64decode(j.pop("output_b64")))
    if args.json:
        output.emit_json(j)
        return 0
    output.kv(f"job {j['id']}", [("state", j["state"]), ("AI", j["ai_cid"]), ("provider", j["provider"]),
                                 ("attempts", j["attempts"]), ("enclave", j["mrenclave"]), ("error", j["error"]),
                                 ("input sha256", j["input_sha256"]), ("output sha256", j["output_sha256"]),
                                 *((f"stage {k}", f"{v:.3f} s") for k, v in j["stages"].items())])
    return 0


def cmd_ai_revoke(args: argparse.Namespace) -> int:
    r = _call(args, "ai.revoke", {"cid": args.cid})
    if args.json:
        output.emit_json(r)
    else:
        state = "revoked" if r["effective"] else "NOT revoked (too few secrets peers agreed)"
        output.say(f"{r['cid']}: {state}: {r['revoked_at']} of {r['of']} secrets peers will release no more shares")
        for peer, why in r["refusals"].items():
            output.say(f"  {peer}: {why}")
    return 0 if r["effective"] else 1


def cmd_ai_rotate(args: argparse.Namespace) -> int:
    r = _call_with_progress(args, "ai.rotate", {"cid": args.cid, "dir": str(Path(args.dir).resolve())})
    if args.json:
        output.emit_json(r)
    else:
        rv = r["revoked"]
        output.say(f"new key, new CID; old {r['old_cid']} revoked at {rv['revoked_at']} of {rv['of']} secrets peers"
                   + ("" if rv["effective"] else " (NOT effective: too few agreed)"))
        print(r["new_cid"])
    return 0 if r["revoked"]["effective"] else 1


def cmd_status(args: argparse.Namespace) -> int:
    s = _call(args, "node.status")
    if args.json:
        output.emit_json(s)
        return 0
    g = s["gossip"]
    rejected = ", ".join(f"{k} {v}" for k, v in sorted(g["rejected"].items())) or "none"
    output.kv(f"ofnode {s['name']}", [
        ("peer id", s["peer_id"]),
        ("network", s["network"]),
        ("roles", ", ".join(s["roles"]) or "(none)"),
        ("addresses", "\n".join(s["addrs"])),
        ("peers", len(s["peers"])),
        *([("banned", "\n".join(f"{p} ({left:.0f} s left)" for p, left in sorted(s["banned"].items())))]
          if s.get("banned") else []),
        ("gossip", f"in {g['in']}, out {g['out']}, duplicates {g['duplicates']}, rejected: {rejected}"),
        ("uptime", f"{s['uptime_s']:.0f} s"),
        ("socket", s["socket"]),
        ("metrics", s["metrics_url"] or "off"),
        ("version", s["version"]),
        *_provider_rows(s.get("provider")),
    ])
    return 0


def _provider_rows(p: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not p:
        return []
    mine = p["backends"].get(p["backend"], {"ok": False, "reason": "unknown backend"})
    state = "working" if mine["ok"] else f"NOT WORKING: {mine['reason']}"
    others = "\n".join(f"{name}: {'ok' if b['ok'] else 'no'} ({b['reason']})" for name, b in sorted(p["backends"].items()))
    return [("enclaves", f"{p['backend']} backend, {state}; tees offered: {', '.join(p['tees']) or 'none'}; "
                         f"{p['jobs']} job(s), capacity {p['capacity']}"),
            ("backends here", others)]


def cmd_peers(args: argparse.Namespace) -> int:
    peers = _call(args, "node.peers")
    if args.json:
        output.emit_json(peers)
        return 0
    output.table(f"{len(peers)} connected peer(s)", ["peer id", "name", "roles", "address"],
                 [(p["peer_id"], p["name"], ", ".join(p["roles"]), (p["addrs"] or [""])[0]) for p in peers])
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    res = _call(args, "node.stop")
    output.emit_json(res) if args.json else output.say("node stopping")
    return 0


def cmd_gossip_send(args: argparse.Namespace) -> int:
    res = _call(args, "gossip.publish", {"text": args.text})
    output.emit_json(res) if args.json else print(res["id"])
    return 0


def cmd_gossip_recent(args: argparse.Namespace) -> int:
    items = _call(args, "gossip.recent", {"type": args.type or "", "limit": args.limit})
    if args.json:
        output.emit_json(items)
        return 0
    output.table("recent gossip", ["id", "type", "sender", "latency ms", "text"],
                 [(m["id"][:12], m["type"], m["sender"][-8:], m["received_ms"] - m["timestamp_ms"], m.get("text", ""))
                  for m in items])
    return 0


def cmd_testnet_up(args: argparse.Namespace) -> int:
    from .. import testnet

    say = (lambda s: None) if args.json else output.say
    try:
        st = testnet.up(Path(args.dir), args.nodes, args.dos, args.secrets, args.providers,
                        args.dos_quorum, args.secrets_threshold, timeout=args.timeout, log_level=args.log_level, say=say,
                        backend=args.backend, netns=args.netns, latency_ms=args.latency, jitter_ms=args.jitter,
                        loss_pct=args.loss)
    except testnet.TestnetError as e:
        raise CliError(str(e)) from None
    if args.json:
        output.emit_json(st)
    else:
        _testnet_table(st)
        output.say(f"use a node: ofnode --socket {st['nodes'][0]['socket']} status")
    return 0


def _testnet_table(st: dict[str, Any]) -> None:
    netns = bool(st.get("netns"))
    output.table(f"testnet {st['network']}", ["name", "peer id", "roles", "pid", "peers",
                                               *(["address", "namespace"] if netns else []), "socket"],
                 [(n["name"], n["peer_id"], ", ".join(n["roles"]), n["pid"], n.get("peers", ""),
                   *([n["ip"], n["netns"]] if netns else []), n["socket"]) for n in st["nodes"]])


def _links_table(sw: dict[str, Any]) -> None:
    """The switch's view of a netns testnet: per-node shaping, groups, frame counters."""
    title = "links" + (f" (PARTITIONED: {' | '.join(','.join(g) for g in sw['groups'])})" if sw["partitioned"] else "")
    output.table(title, ["node", "latency ms", "jitter ms", "loss %", "group", "frames in", "frames out",
                         "lost", "blocked"],
                 [(p["node"], f"{p['latency_ms']:g}", f"{p['jitter_ms']:g}", f"{p['loss_pct']:g}", p["group"],
                   p["rx_frames"], p["tx_frames"], p["lost"], p["blocked"]) for p in sw["ports"]])


def cmd_testnet_status(args: argparse.Namespace) -> int:
    from .. import testnet

    try:
        st = testnet.status(Path(args.dir))
    except testnet.TestnetError as e:
        raise CliError(str(e)) from None
    if args.json:
        output.emit_json(st)
    else:
        for n in st["nodes"]:
            n["peers"] = n["peers"] if n["alive"] else "down"
        _testnet_table(st)
        if st.get("netns", {}).get("links"):
            net = st["netns"]
            _links_table({"groups": net["groups"], "partitioned": net["partitioned"], "ports": net["links"]})
        elif st.get("netns"):
            output.say(f"switch (pid {st['netns']['switch']['pid']}) is not running")
    return 0


def _testnet_switch_cmd(args: argparse.Namespace, fn: Any, *a: Any, **kw: Any) -> int:
    from .. import testnet

    try:
        sw = fn(Path(args.dir), *a, **kw)
    except testnet.TestnetError as e:
        raise CliError(str(e)) from None
    if args.json:
        output.emit_json(sw)
    else:
        _links_table(sw)
    return 0


def cmd_testnet_shape(args: argparse.Namespace) -> int:
    from .. import testnet

    return _testnet_switch_cmd(args, testnet.shape, args.node or None, args.latency, args.jitter, args.loss)


def cmd_testnet_partition(args: argparse.Namespace) -> int:
    from .. import testnet

    groups = [[n for n in g.split(",") if n] for g in args.groups]
    return _testnet_switch_cmd(args, testnet.partition, groups)


def cmd_testnet_heal(args: argparse.Namespace) -> int:
    from .. import testnet

    return _testnet_switch_cmd(args, testnet.heal)


def cmd_testnet_down(args: argparse.Namespace) -> int:
    from .. import testnet

    say = (lambda s: None) if args.json else output.say
    try:
        res = testnet.down(Path(args.dir), say=say)
    except testnet.TestnetError as e:
        raise CliError(str(e)) from None
    if args.json:
        output.emit_json(res)
    return 0


# -- parser -----------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", metavar="PATH", default=argparse.SUPPRESS,
                        help="node API socket (default: $OFNODE_SOCKET, else <data dir>/ofnode.sock)")
    common.add_argument("--data-dir", metavar="DIR", default=argparse.SUPPRESS,
                        help="node data directory (default: $OFNODE_HOME or ~/.ofnode)")
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS, help="machine-readable output")

    p = argparse.ArgumentParser(
        prog="ofnode", parents=[common],
        description="ofnode: a peer-to-peer node for confidential AI execution.",
        epilog="Start a local 5-node network: ofnode testnet up --nodes 5 --dir ./testnet",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("start", parents=[common], help="run the node daemon in the foreground")
    s.add_argument("--config", metavar="FILE", help="config file (default: <data dir>/config.toml)")
    s.add_argument("--ready-fd", type=int, metavar="FD", help=argparse.SUPPRESS)
    s.set_defaults(fn=cmd_start)

    s = sub.add_parser("init", parents=[common], help="create a data dir: identity key and config")
    s.add_argument("--role", action="append", default=[], help="provider, dos or secrets (repeatable)")
    s.add_argument("--genesis", metavar="FILE", help="network genesis to install")
    s.add_argument("--listen", action="append", metavar="MULTIADDR", help="listen address (repeatable)")
    s.add_argument("--bootstrap", action="append", metavar="MULTIADDR", help="bootstrap peer (repeatable)")
    s.add_argument("--force", action="store_true", help="overwrite an existing config.toml")
    s.set_defaults(fn=cmd_init)

    s = sub.add_parser("id", parents=[common], help="print this node's peer id (offline)")
    s.set_defaults(fn=cmd_id)
    s = sub.add_parser("cid", parents=[common], help="compute a file's IPFS CIDv1 offline (same as `ipfs add --cid-version 1`)")
    s.add_argument("files", nargs="+", metavar="FILE")
    s.set_defaults(fn=cmd_cid)
    st = sub.add_parser("store", parents=[common], help="content-addressed block store").add_subparsers(
        dest="store_cmd", metavar="COMMAND", required=True)
    s = st.add_parser("add", parents=[common], help="add a file; prints its CID (pinned)")
    s.add_argument("file")
    s.set_defaults(fn=cmd_store_add)
    s = st.add_parser("get", parents=[common], help="write the file named by CID")
    s.add_argument("cid")
    s.add_argument("-o", "--output", required=True, metavar="FILE")
    s.set_defaults(fn=cmd_store_get)
    for name, text in (("pin", "pin a DAG (all its blocks must be here)"), ("unpin", "drop a pin")):
        s = st.add_parser(name, parents=[common], help=text)
        s.add_argument("cid")
        s.set_defaults(fn=cmd_store_simple)
    for name, text in (("ls", "pinned roots and store size"), ("gc", "delete unpinned blocks"),
                       ("verify", "re-hash every block; corrupt ones are quarantined (exit 1)")):
        s = st.add_parser(name, parents=[common], help=text)
        s.set_defaults(fn=cmd_store_simple)

    a = sub.add_parser("ai", parents=[common], help="publish and inspect encrypted AIs").add_subparsers(
        dest="ai_cmd", metavar="COMMAND", required=True)
    s = a.add_parser("publish", parents=[common], help="check, pack, encrypt and store an AI directory; prints its CID")
    s.add_argument("dir")
    s.set_defaults(fn=cmd_ai_publish)
    s = a.add_parser("inspect", parents=[common], help="show the public manifest of an AI")
    s.add_argument("cid")
    s.set_defaults(fn=cmd_ai_inspect)
    s = a.add_parser("revoke", parents=[common], help="stop all further key releases for an AI you published")
    s.add_argument("cid")
    s.set_defaults(fn=cmd_ai_revoke)
    s = a.add_parser("rotate", parents=[common], help="re-publish an AI under a fresh key and revoke the old CID")
    s.add_argument("cid", help="the AI CID to retire")
    s.add_argument("dir", help="the AI directory to publish again")
    s.set_defaults(fn=cmd_ai_rotate)

    s = sub.add_parser("submit", parents=[common], help="run an AI on your input in an attested enclave")
    s.add_argument("cid", metavar="AI_CID")
    s.add_argument("--input", required=True, metavar="FILE", help="the input (sent only to the attested enclave, over TLS)")
    s.add_argument("-o", "--output", metavar="FILE", help="write the output here (default: print it)")
    s.add_argument("--cpu", type=int, default=1, help="cores needed (default 1)")
    s.add_argument("--memory", default="512MiB", help="memory needed (default 512MiB)")
    s.add_argument("--tee", choices=["sim", "sgx"], default="sim", help="enclave kind (default sim)")
    s.add_argument("--backend", choices=["sim", "docker", "gramine-sgx", "gramine-direct"], help="require this backend")
    s.add_argument("--deadline", type=float, metavar="SECONDS", help="give up after this long")
    s.set_defaults(fn=cmd_submit)
    s = sub.add_parser("jobs", parents=[common], help="this node's job history")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(fn=cmd_jobs)
    s = sub.add_parser("job", parents=[common], help="one job: stages, timings, receipt")
    s.add_argument("id")
    s.add_argument("-o", "--output", metavar="FILE", help="also write the job's output here")
    s.set_defaults(fn=cmd_job)

    from .attest import add_attest_parser

    add_attest_parser(sub, common)

    s = sub.add_parser("status", parents=[common], help="show the running node's status")
    s.set_defaults(fn=cmd_status)
    s = sub.add_parser("peers", parents=[common], help="list connected peers")
    s.set_defaults(fn=cmd_peers)
    s = sub.add_parser("stop", parents=[common], help="stop the running node")
    s.set_defaults(fn=cmd_stop)

    g = sub.add_parser("gossip", parents=[common], help="send and inspect gossip").add_subparsers(
        dest="gossip_cmd", metavar="COMMAND", required=True)
    s = g.add_parser("send", parents=[common], help="gossip a signed note to the whole network")
    s.add_argument("text")
    s.set_defaults(fn=cmd_gossip_send)
    s = g.add_parser("recent", parents=[common], help="messages this node received recently")
    s.add_argument("--type", help="only this message type (e.g. node.note)")
    s.add_argument("--limit", type=int, default=20)
    s.set_defaults(fn=cmd_gossip_recent)

    t = sub.add_parser("testnet", parents=[common], help="run a local multi-node network").add_subparsers(
        dest="testnet_cmd", metavar="COMMAND", required=True)
    s = t.add_parser(
        "up", parents=[common], help="start N daemons (on 127.0.0.1, or each in a network namespace with --netns)",
        description="Start N daemons and wait until every node is connected to every other. By default they "
                    "listen on 127.0.0.1. With --netns each node runs in its own network namespace "
                    "(ofnode-<network>-node<i>, address 10.77.0.<i+1>) linked through a userspace switch that "
                    "delays and drops each node's outgoing frames (--latency, --jitter, --loss) and can partition "
                    "the network (`testnet partition`, `testnet heal`, `testnet shape`). --netns needs root and "
                    "iproute2; the host's own interfaces and routes are not touched. See docs/testnet.md.")
    s.add_argument("--nodes", type=int, default=5)
    s.add_argument("--dos", type=int, default=2, help="nodes with the dos role (default 2)")
    s.add_argument("--secrets", type=int, default=3, help="nodes with the secrets role (default 3)")
    s.add_argument("--providers", type=int, default=2, help="nodes with the provider role (default 2)")
    s.add_argument("--dos-quorum", type=int, help="ACL signatures needed (default: majority of DOS peers)")
    s.add_argument("--secrets-threshold", type=int, help="key shares needed (default: majority of secrets peers)")
    s.add_argument("--dir", default="./testnet", help="testnet directory (default ./testnet)")
    s.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for the network (default 60)")
    s.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    s.add_argument("--backend", default="sim", choices=["sim", "docker", "gramine-direct", "gramine-sgx"],
                   help="enclave backend of the providers (default sim: bubblewrap sandbox)")
    s.add_argument("--netns", action="store_true",
                   help="each node in its own network namespace behind a shaping switch (root, iproute2)")
    _shape_args(s, default=0.0)
    s.set_defaults(fn=cmd_testnet_up)
    s = t.add_parser("status", parents=[common], help="show the nodes of a testnet")
    s.add_argument("--dir", default="./testnet")
    s.set_defaults(fn=cmd_testnet_status)
    s = t.add_parser("down", parents=[common], help="stop every node of a testnet (and remove its namespaces)")
    s.add_argument("--dir", default="./testnet")
    s.set_defaults(fn=cmd_testnet_down)
    s = t.add_parser("shape", parents=[common], help="change latency, jitter or loss of a running --netns testnet",
                     description="Change how the switch treats the outgoing frames of some nodes (default: all); "
                                 "what is not given stays as it is.")
    s.add_argument("--dir", default="./testnet")
    s.add_argument("--node", action="append", metavar="NAME", help="only this node (repeatable), e.g. node2")
    _shape_args(s, default=None)
    s.set_defaults(fn=cmd_testnet_shape)
    s = t.add_parser("partition", parents=[common], help="split a running --netns testnet into groups",
                     description="Cut the network: frames between different groups are dropped until "
                                 "`testnet heal`. Nodes named in no group form one more group, so "
                                 "`partition node3` isolates node3. Open connections stall as on a real split.")
    s.add_argument("--dir", default="./testnet")
    s.add_argument("groups", nargs="+", metavar="GROUP", help="comma-separated node names, e.g. node0,node1")
    s.set_defaults(fn=cmd_testnet_partition)
    s = t.add_parser("heal", parents=[common], help="undo a partition of a --netns testnet")
    s.add_argument("--dir", default="./testnet")
    s.set_defaults(fn=cmd_testnet_heal)
    return p


def _shape_args(s: argparse.ArgumentParser, default: float | None) -> None:
    d = " (default 0)" if default is not None else ""
    s.add_argument("--latency", type=float, default=default, metavar="MS",
                   help=f"delay every outgoing frame of a node by MS milliseconds (netns only){d}")
    s.add_argument("--jitter", type=float, default=default, metavar="MS",
                   help=f"vary the delay uniformly by ± MS, at most the latency; frames are not reordered{d}")
    s.add_argument("--loss", type=float, default=default, metavar="PCT",
                   help=f"drop each outgoing frame with probability PCT percent{d}")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    for k, v in (("socket", None), ("data_dir", None), ("json", False)):
        if not hasattr(args, k):
            setattr(args, k, v)
    try:
        return args.fn(args)
    except CliError as e:
        output.err(str(e))
        return e.code
    except ApiUnavailable as e:
        output.err(str(e))
        return EXIT_UNREACHABLE
    except RpcError as e:
        output.err(f"{e.message} (code {e.code})")
        return EXIT_FAIL
    except BrokenPipeError:
        return EXIT_FAIL


if __name__ == "__main__":
    sys.exit(main())
