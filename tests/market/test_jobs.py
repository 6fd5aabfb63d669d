"""The consumer's job store across a restart."""
from __future__ import annotations

from node.market.jobs import JobRecord, JobStore


def test_jobs_left_running_by_a_stop_are_marked_failed_on_start(tmp_path):
    store = JobStore(tmp_path)
    done = JobRecord(id="a" * 32, ai_cid="bafy", requirements={})
    done.mark("done")
    store.save(done, b"out")
    failed = JobRecord(id="b" * 32, ai_cid="bafy", requirements={}, state="failed", error="no provider")
    store.save(failed)
    running = JobRecord(id="c" * 32, ai_cid="bafy", requirements={})
    running.mark("assigned")
    store.save(running)

    again = JobStore(tmp_path)  # the node starts again
    assert again.fail_interrupted() == ["c" * 32]
    rec = again.get("c" * 32)
    assert rec is not None and rec.state == "failed" and "interrupted" in rec.error and "assigned" in rec.error
    assert rec.stages == running.stages
    assert again.get("a" * 32).state == "done" and again.output("a" * 32) == b"out"
    assert again.get("b" * 32).error == "no provider"
    assert again.fail_interrupted() == []
