"""The README demo: a local 5-node ofnode network, end to end, on one machine:
the network comes up, gossips, an AI is published encrypted, a consumer's
image is classified inside an attested (simulated SGX) enclave, and the
verified answer is printed.

Run it with `make demo`. It drives ofnode exactly as a user would, through the
`ofnode` CLI and the nodes' JSON-RPC sockets, and tears everything down at the
end (also on Ctrl-C or failure).
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from node.api.client import ApiClient

OFNODE = [sys.executable, "-m", "node.cli.main"]
DIGITS = Path(__file__).resolve().parent / "digits"


def step(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def ofnode(*args: str, capture: bool = False) -> str:
    res = subprocess.run([*OFNODE, *args], check=True, text=True, stdout=subprocess.PIPE if capture else None)
    return res.stdout or ""


def main() -> int:
    tmp = Path(tempfile.mkdtemp(prefix="ofnode-demo-"))
    tn = tmp / "testnet"
    try:
        step("starting a 5-node testnet (2 DOS, 3 secrets with t=2, 2 providers) on 127.0.0.1")
        t0 = time.monotonic()
        state = json.loads(ofnode("testnet", "up", "--nodes", "5", "--dos", "2", "--secrets", "3",
                                  "--providers", "2", "--dir", str(tn), "--json", capture=True))
        print(f"all 5 nodes up and fully connected in {time.monotonic() - t0:.1f} s")
        ofnode("testnet", "status", "--dir", str(tn))

        nodes = state["nodes"]
        step(f"node0 gossips a signed note; every node should receive it exactly once")
        with ApiClient(nodes[0]["socket"]) as c:
            msg_id = c.call("gossip.publish", {"text": "hello from node0"})["id"]
        seen: dict[str, dict] = {}
        for n in nodes:
            with ApiClient(n["socket"]) as c:
                r = c.call("gossip.wait", {"id": msg_id, "timeout": 10})
            if r["received"]:
                seen[n["name"]] = {"copies": r["copies"], "latency_ms": r["received_ms"] - r["timestamp_ms"]}
        for n in nodes:
            s = seen.get(n["name"])
            print(f"  {n['name']:6} {'received ' + str(s['copies']) + 'x, ' + str(s['latency_ms']) + ' ms' if s else 'NOT received'}")
        if len(seen) < len(nodes) or any(s["copies"] != 1 for s in seen.values()):
            print("demo failed: the note did not reach every node exactly once", file=sys.stderr)
            return 1

        step("node4's view of the network")
        ofnode("--socket", nodes[4]["socket"], "peers")

        consumer = nodes[0]["socket"]
        step("node0 publishes the digits AI: packed, AES-256-GCM encrypted, stored as IPFS blocks, "
             "key split 2-of-3 among the secrets peers")
        pub = json.loads(ofnode("--socket", consumer, "ai", "publish", str(DIGITS), "--json", capture=True))
        print(f"AI CID {pub['cid']} ({pub['plaintext_bytes']} bytes plaintext, key shares deposited "
              f"{pub['key_shares']['deposited']}/{pub['key_shares']['of']})")
        ofnode("--socket", consumer, "ai", "inspect", pub["cid"])

        sample = sorted((DIGITS / "samples").glob("*.json"))[7]
        truth = int(sample.name.split("-")[0])
        step(f"node0 submits a handwritten {truth} ({sample.name}) to be classified in an attested enclave")
        res = json.loads(ofnode("--socket", consumer, "submit", pub["cid"], "--input", str(sample), "--json",
                                capture=True))
        answer = json.loads(res["output"])
        print(f"provider {res['provider']} ran it in enclave {res['mrenclave'][:16]}…")
        print("stages: " + ", ".join(f"{k} {v:.3f} s" for k, v in res["stages"].items()))
        print(f"verified receipt (signed by the attested enclave key): {json.dumps(res['receipt'])}")
        print(f"\npredicted digit: {answer['label']} (true label {truth}, "
              f"confidence {max(answer['probabilities']):.3f})")
        if answer["label"] != truth:
            print("demo failed: wrong digit", file=sys.stderr)
            return 1
        print("\ndemo ok")
        return 0
    finally:
        step("tearing the testnet down")
        if (tn / "testnet.json").exists():
            subprocess.run([*OFNODE, "testnet", "down", "--dir", str(tn)], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
