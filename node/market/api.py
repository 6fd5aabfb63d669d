"""JSON-RPC methods of the consumer: submit a job, list jobs, show one."""
from __future__ import annotations

import base64
from dataclasses import asdict
from pathlib import Path
from typing import Any, Awaitable, Callable

from ..api.jsonrpc import INVALID_PARAMS, NODE_ERROR, RpcError
from ..api.server import ApiServer
from ..store.service import parse_cid
from .consumer import Consumer, JobFailed
from .jobs import JobStore
from .messages import MessageError, Requirements

MAX_INPUT = 64 << 20


def register(api: ApiServer, consumer: Consumer, jobs: JobStore, defaults: dict[str, Any]) -> None:
    async def submit(ai_cid: str, input_b64: str = "", input_path: str = "", cpu: int = 1, memory: int = 512 << 20,
                     tee: str = "sim", backend: str = "", max_price: int = 0, deadline_s: float = 0,
                     request_id: str = "",
                     progress: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> dict[str, Any]:
        cid = parse_cid(ai_cid, "ai_cid").encode()
        if bool(input_b64) == bool(input_path):
            raise RpcError(INVALID_PARAMS, "give exactly one of input_b64 and input_path")
        if input_path:
            p = Path(input_path)
            if not p.is_absolute() or not p.is_file():
                raise RpcError(INVALID_PARAMS, f"input_path: {input_path} is not an absolute path to a file")
            if p.stat().st_size > MAX_INPUT:
                raise RpcError(INVALID_PARAMS, f"input over {MAX_INPUT >> 20} MiB")
            data = p.read_bytes()
        else:
            try:
                data = base64.b64decode(input_b64, validate=True)
            except (ValueError, TypeError):
                raise RpcError(INVALID_PARAMS, "input_b64 is not base64") from None
        try:
            req = Requirements.parse({"cpu": cpu, "memory": memory, "tee": tee, "backend": backend, "max_price": max_price})
        except MessageError as e:
            raise RpcError(INVALID_PARAMS, str(e)) from None
        if not isinstance(deadline_s, (int, float)) or deadline_s < 0 or deadline_s > 3600:
            raise RpcError(INVALID_PARAMS, "deadline_s must lie in 0..3600")
        if request_id and (not isinstance(request_id, str) or len(request_id) != 32
                           or any(c not in "0123456789abcdef" for c in request_id)):
            raise RpcError(INVALID_PARAMS, "request_id must be 32 lowercase hex digits (an idempotency key)")
        if request_id and jobs.get(request_id) is not None:
            raise RpcError(INVALID_PARAMS, f"job {request_id} already exists on this node")
        try:
            job = await consumer.submit(cid, data, req, progress=progress, request_id=request_id or None,
                                        deadline_s=float(deadline_s or defaults["deadline_s"]),
                                        bidding_ms=defaults["bidding_ms"])
        except JobFailed as e:
            raise RpcError(NODE_ERROR, f"job failed: {e}") from None
        out = asdict(job)
        out["output_b64"] = base64.b64encode(jobs.output(job.id) or b"").decode()
        return out

    async def list_jobs(limit: int = 50) -> list[dict[str, Any]]:
        if not isinstance(limit, int) or limit < 1:
            raise RpcError(INVALID_PARAMS, "limit must be an int >= 1")
        return [asdict(j) for j in jobs.list(min(limit, 1000))]

    async def get_job(id: str, output: bool = False) -> dict[str, Any]:
        j = jobs.get(id) if isinstance(id, str) else None
        if j is None:
            raise RpcError(INVALID_PARAMS, f"no job {str(id)[:40]!r} on this node")
        out = asdict(j)
        if output:
            out["output_b64"] = base64.b64encode(jobs.output(j.id) or b"").decode()
        return out

    api.method("job.submit", submit, timeout=3700)
    api.method("jobs.list", list_jobs)
    api.method("job.get", get_job)
