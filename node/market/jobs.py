"""The consumer's job history: one JSON file per job, written atomically at
every stage change, so a restart loses no finished result."""
from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..fsutil import atomic_write, private_dir

STAGES = ("requested", "assigned", "attested", "connected", "running", "done")
_ID = re.compile(r"[0-9a-f]{32}")


@dataclass
class JobRecord:
    id: str
    ai_cid: str
    requirements: dict[str, Any]
    state: str = "requested"  # a stage, or "failed"
    stages: dict[str, float] = field(default_factory=dict)  # stage -> seconds since submit
    submitted: float = field(default_factory=time.time)
    provider: str = ""
    attempts: int = 0
    error: str = ""
    input_sha256: str = ""
    output_sha256: str = ""
    output_bytes: int = 0
    receipt: dict[str, Any] = field(default_factory=dict)
    mrenclave: str = ""

    def mark(self, stage: str) -> None:
        self.state = stage
        self.stages[stage] = round(time.time() - self.submitted, 4)


class JobStore:
    def __init__(self, data_dir: Path) -> None:
        self.dir = private_dir(data_dir / "jobs")

    def save(self, job: JobRecord, output: bytes | None = None) -> None:
        if output is not None:
            atomic_write(self.dir / f"{job.id}.out", output, mode=0o600)
        atomic_write(self.dir / f"{job.id}.json", json.dumps(asdict(job), indent=1).encode(), mode=0o600)

    def fail_interrupted(self) -> list[str]:
        """Mark jobs left in a running stage as failed (called once when the node starts).

        A job lives in the node that submitted it; if that node stops or is
        killed mid-job, nothing will finish it, so its record would otherwise
        say "assigned" forever. Returns the ids marked."""
        marked = []
        for p in self.dir.glob("*.json"):
            try:
                job = JobRecord(**json.loads(p.read_text()))
            except (OSError, ValueError, TypeError):
                continue
            if job.state in ("done", "failed"):
                continue
            job.error = f"interrupted: the node stopped during the job (stage: {job.state})"
            job.state = "failed"
            self.save(job)
            marked.append(job.id)
        return marked

    def get(self, job_id: str) -> JobRecord | None:
        if not _ID.fullmatch(job_id):
            return None
        try:
            return JobRecord(**json.loads((self.dir / f"{job_id}.json").read_text()))
        except FileNotFoundError:
            return None

    def output(self, job_id: str) -> bytes | None:
        try:
            return (self.dir / f"{job_id}.out").read_bytes() if _ID.fullmatch(job_id) else None
        except FileNotFoundError:
            return None

    def list(self, limit: int = 100) -> list[JobRecord]:
        recs = []
        for p in sorted(self.dir.glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)[:limit]:
            try:
                recs.append(JobRecord(**json.loads(p.read_text())))
            except (ValueError, TypeError):
                continue
        return recs
