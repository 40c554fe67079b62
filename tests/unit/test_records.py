"""The job store: records served before and after they are written, and expired ones swept a
bounded number at a time, oldest first."""

from pathlib import Path
from typing import Any

from krewe.orchestrator.activity import NetworkActivity
from krewe.orchestrator.records import SWEEP_ROWS, JobStore


def record(job_id: str) -> dict[str, Any]:
    return {
        "job_id": job_id,
        "model": "m",
        "task": "chat",
        "engine": "e",
        "created_at": "2026-01-01T00:00:00Z",
        "verdict": "agreed",
        "deadline_exceeded": False,
        "threshold": 2,
        "replicas": 3,
        "agreeing": ["0xa", "0xb"],
        "creditable": True,
        "credits": {"0xa": "1", "0xb": "1"},
        "workers": [{"worker": "0xa", "answer": "result", "latency_ms": 1.5}],
        "output": {"text": "é ✓"},
    }


async def test_a_record_reads_the_same_before_and_after_it_is_written(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.db", retention_s=3600, activity=NetworkActivity())
    try:
        store.put(record("j1"))
        assert await store.get("j1") == record("j1")  # from memory
        await store.flush()
        assert await store.get("j1") == record("j1")  # from SQLite
        assert await store.get("j2") is None
    finally:
        await store.close()


async def test_expired_records_are_swept_a_bounded_number_per_write_oldest_first(tmp_path: Path) -> None:
    backlog = SWEEP_ROWS + 500
    store = JobStore(tmp_path / "jobs.db", retention_s=3600, activity=NetworkActivity())
    for index in range(backlog):
        store.put(record(f"old{index:05d}"))
    await store.close()

    store = JobStore(tmp_path / "jobs.db", retention_s=1e-9, activity=NetworkActivity())  # all expired
    try:
        store.put(record("new1"))
        await store.flush()
        assert await store.get("old00000") is None
        assert await store.get(f"old{SWEEP_ROWS - 1:05d}") is None
        assert await store.get(f"old{SWEEP_ROWS:05d}") is not None  # left for the next write
        assert await store.get(f"old{backlog - 1:05d}") is not None
        store.put(record("new2"))
        await store.flush()
        assert await store.get(f"old{backlog - 1:05d}") is None
    finally:
        await store.close()
