"""`python -m bench.chaos`, short: the orchestrator SIGKILLed under load, after a send is recorded and
during a fee bump, the chain stopped once; then not one wei may be out of place (docs/settlement.md)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_money_stays_exact_through_kills_and_a_chain_stop(tmp_path: Path) -> None:
    report_path = tmp_path / "chaos.json"
    done = subprocess.run(
        [sys.executable, "-m", "bench.chaos", "--kills", "3", "--seconds", "5", "--json", str(report_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    output = done.stdout[-5000:] + done.stderr[-3000:]
    assert report_path.exists(), output
    report = json.loads(report_path.read_text())
    assert [check for check in report["checks"] if not check["ok"]] == [], output
    assert report["violations"] == 0 and done.returncode == 0, output
    assert report["kills"] == 3 and report["chain_pauses"] == 1
    assert report["kills_by_stage"] == {
        "crediting": 1,
        "recorded": 1,
        "replaced": 1,
        "snapshot": 0,
        "sent": 0,
        "mined": 0,
    }
    assert report["jobs_agreed"] > 0
    assert report["paid_wei"] == report["credited_wei"] > 0
