"""`python -m bench --quick` completes and writes well-formed JSON (no timing is asserted)."""

import json
import subprocess
import sys
from pathlib import Path


def test_quick_bench_writes_its_report(tmp_path: Path) -> None:
    report_path = tmp_path / "bench.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--json", str(report_path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(report_path.read_text())
    assert {"machine", "date", "versions"} <= set(report)
    throughput = report["throughput"]
    assert throughput["max_jobs_per_s"] > 0 and throughput["baseline_max_jobs_per_s"] > 0
    assert throughput["cpu_ms_per_job"] > 0 and throughput["baseline_cpu_ms_per_job"] > 0
    for row in report["latency"]:
        assert {
            "offered_jobs_per_s",
            "jobs_per_s",
            "p50_ms",
            "p99_ms",
            "p999_ms",
            "baseline_p999_ms",
            "added_p50_ms",
            "added_p99_ms",
            "added_p999_ms",
            "loop_lag_max_ms",
            "loop_settlements",
            "cpu_pct",
            "baseline_cpu_pct",
        } <= set(row)
        assert row["cpu_pct"] > 0 and row["baseline_cpu_pct"] > 0
    assert report["loop_lag"]["samples"] > 0 and report["loop_lag"]["max_ms"] >= 0
    assert {"idle_miners", "rss_bytes_per_conn", "heartbeat_cpu_pct"} <= set(report["connections"])
    assert {"first_credit", "repeat_credit", "max_recipients_per_tx"} <= set(report["gas"])
    scale_out = report["scale_out"]
    for key in ("sqlite_one_instance_jobs_per_s", "one_instance_jobs_per_s", "two_instances_jobs_per_s"):
        assert scale_out[key] > 0
    assert scale_out["cores"] >= 1
    assert [(phase["store"], phase["instances"]) for phase in scale_out["phases"]] == [
        ("sqlite", 1),
        ("redis", 1),
        ("redis", 2),
    ]
