"""The job life cycle (`orchestrator.jobs`), driven event by event on a fake clock: exact commands."""

import ast
from pathlib import Path
from typing import Any

import pytest

from krewe.orchestrator.consensus import Outcome
from krewe.orchestrator.jobs import (
    AnswerCaller,
    AskReplicas,
    Close,
    Command,
    Credit,
    CreditPolicy,
    Job,
    Release,
    Score,
    SendCancel,
    SendJob,
    SendVerdict,
    State,
    Violation,
)
from krewe.orchestrator.scoring import JobOutcome

REWARD = 7
PAID = CreditPolicy(reward=REWARD, min_replicas=3, min_agreeing=2)
OUTPUT_A, OUTPUT_B, OUTPUT_C = {"a": 1}, {"b": 2}, {"c": 3}


def new_job(
    workers: tuple[str, ...] = ("w1", "w2", "w3"),
    *,
    threshold: int = 2,
    timeout_ms: int = 1000,
    redispatch_max: int = 0,
    policy: CreditPolicy = PAID,
) -> Job:
    job = Job.create(
        "job1",
        "m",
        "chat",
        {"messages": []},
        workers=workers,
        threshold=threshold,
        timeout_ms=timeout_ms,
        redispatch_max=redispatch_max,
        policy=policy,
        now=100.0,
        created_at="2026-11-27T00:00:00Z",
    )
    assert job.start(100.0) == [SendJob(workers, timeout_ms)]
    return job


def of(commands: list[Command], kind: type) -> list[Any]:
    return [command for command in commands if isinstance(command, kind)]


def scores(commands: list[Command]) -> dict[str, JobOutcome]:
    (score,) = of(commands, Score)
    return {worker: outcome for worker, outcome, _ in score.outcomes}


def test_the_verdict_is_final_before_the_last_answer_and_winners_are_credited_then() -> None:
    job = new_job()
    assert job.result("w1", "A", OUTPUT_A, 100.010) == [Release("w1")]
    commands = job.result("w2", "A", OUTPUT_A, 100.020)
    (answer,) = of(commands, AnswerCaller)
    assert answer.verdict.outcome is Outcome.AGREED and answer.output == OUTPUT_A
    assert not answer.deadline_exceeded
    assert answer.record["agreeing"] == ["w1", "w2"] and answer.record["credits"] == {"w1": "7", "w2": "7"}
    assert commands[0] == Release("w2")
    assert commands[1] == Credit((("w1", REWARD), ("w2", REWARD)))  # before anyone hears of it
    assert commands[2] is answer
    assert commands[3:] == [SendVerdict("w1", True, REWARD), SendVerdict("w2", True, REWARD)]
    assert job.state is State.DECIDED and job.record()["final"] is False
    straggler = job.result("w3", "B", OUTPUT_B, 100.500)
    assert straggler[:2] == [Release("w3"), SendVerdict("w3", False, 0)]
    assert straggler[-1] == Close() and job.closed
    assert scores(straggler) == {"w1": JobOutcome.AGREED, "w2": JobOutcome.AGREED, "w3": JobOutcome.DISAGREED}
    (score,) = of(straggler, Score)
    assert [latency for _, _, latency in score.outcomes] == pytest.approx([10.0, 20.0, 500.0])


def test_a_straggler_that_joins_the_winners_is_credited_when_it_arrives() -> None:
    job = new_job()
    job.result("w1", "A", OUTPUT_A, 100.1)
    job.result("w2", "A", OUTPUT_A, 100.2)
    commands = job.result("w3", "A", OUTPUT_A, 100.3)
    assert commands[:3] == [Release("w3"), Credit((("w3", REWARD),)), SendVerdict("w3", True, REWARD)]
    assert job.record()["credits"] == {"w1": str(REWARD), "w2": str(REWARD), "w3": str(REWARD)}


def test_the_deadline_without_a_verdict_answers_the_caller_and_cancels_the_silent() -> None:
    job = new_job()
    job.result("w1", "A", OUTPUT_A, 100.1)
    commands = job.deadline_reached(101.0)
    assert commands[:3] == [SendCancel(("w2", "w3")), Release("w2"), Release("w3")]
    (answer,) = of(commands, AnswerCaller)
    assert answer.verdict.outcome is Outcome.NO_CONSENSUS and answer.deadline_exceeded
    assert not of(commands, Credit)
    assert scores(commands) == {"w2": JobOutcome.TIMEOUT, "w3": JobOutcome.TIMEOUT}
    assert commands[-1] == Close()
    record = job.record()
    assert record["deadline_exceeded"] and record["final"]
    assert [w["answer"] for w in record["workers"]] == ["result", "timeout", "timeout"]
    assert job.result("w2", "A", OUTPUT_A, 101.5) == []  # late: the job is closed


def test_the_deadline_after_the_verdict_only_closes_the_job() -> None:
    job = new_job()
    job.result("w1", "A", OUTPUT_A, 100.1)
    job.result("w2", "A", OUTPUT_A, 100.2)
    commands = job.deadline_reached(101.0)
    assert not of(commands, AnswerCaller) and not of(commands, Credit)
    assert commands[:2] == [SendCancel(("w3",)), Release("w3")]
    assert scores(commands)["w3"] is JobOutcome.TIMEOUT
    assert not job.record()["deadline_exceeded"]


def test_no_consensus_redispatches_to_a_fresh_worker_which_can_decide() -> None:
    job = new_job(redispatch_max=1)
    job.result("w1", "A", OUTPUT_A, 100.1)
    job.result("w2", "B", OUTPUT_B, 100.2)
    commands = job.result("w3", "C", OUTPUT_C, 100.3)
    assert commands == [Release("w3"), AskReplicas(1, frozenset({"w1", "w2", "w3"}))]
    assert job.state is State.REDISPATCHING
    assert job.replicas_granted(("w4",), 100.4) == [SendJob(("w4",), 600)]
    commands = job.result("w4", "B", OUTPUT_B, 100.5)
    (answer,) = of(commands, AnswerCaller)
    assert answer.verdict.agreeing == ("w2", "w4") and answer.output == OUTPUT_B
    assert of(commands, Credit) == [Credit((("w2", REWARD), ("w4", REWARD)))]
    assert [v.worker for v in of(commands, SendVerdict)] == ["w1", "w2", "w3", "w4"]
    assert scores(commands) == {
        "w2": JobOutcome.AGREED,
        "w4": JobOutcome.AGREED,
        "w1": JobOutcome.DISAGREED,
        "w3": JobOutcome.DISAGREED,
    }
    assert job.record()["replicas"] == 4


def test_redispatches_stop_at_the_cap_and_disagreement_without_a_winner_is_not_scored() -> None:
    job = new_job(redispatch_max=1)
    job.result("w1", "A", OUTPUT_A, 100.1)
    job.result("w2", "B", OUTPUT_B, 100.2)
    job.result("w3", "C", OUTPUT_C, 100.3)
    job.replicas_granted(("w4",), 100.4)
    commands = job.result("w4", "D", {"d": 4}, 100.5)
    assert not of(commands, AskReplicas)
    (answer,) = of(commands, AnswerCaller)
    assert answer.verdict.outcome is Outcome.NO_CONSENSUS and not answer.deadline_exceeded
    assert all(not v.agreed and v.credit == 0 for v in of(commands, SendVerdict))
    assert scores(commands) == {}
    assert job.closed


def test_no_fresh_worker_for_a_redispatch_ends_the_job_without_consensus() -> None:
    job = new_job(("w1", "w2"), redispatch_max=2)
    job.result("w1", "A", OUTPUT_A, 100.1)
    assert of(job.result("w2", "B", OUTPUT_B, 100.2), AskReplicas)
    commands = job.replicas_granted((), 100.3)
    (answer,) = of(commands, AnswerCaller)
    assert answer.verdict.outcome is Outcome.NO_CONSENSUS
    assert commands[-1] == Close()


def test_a_session_lost_mid_job_counts_as_a_timeout_and_the_others_decide() -> None:
    job = new_job()
    assert job.session_gone("w2", "disconnected") == [Release("w2")]
    job.result("w1", "A", OUTPUT_A, 100.1)
    commands = job.result("w3", "A", OUTPUT_A, 100.2)
    (answer,) = of(commands, AnswerCaller)
    assert answer.verdict.agreeing == ("w1", "w3")
    assert [v.worker for v in of(commands, SendVerdict)] == ["w1", "w3"]  # not the one that left
    assert scores(commands)["w2"] is JobOutcome.TIMEOUT
    row = job.record()["workers"][1]
    assert (row["answer"], row["reason"], row["latency_ms"]) == ("timeout", "disconnected", None)


def test_duplicate_answers_are_ignored_and_conflicting_ones_are_violations() -> None:
    job = new_job()
    job.result("w1", "A", OUTPUT_A, 100.1)
    assert job.result("w1", "A", OUTPUT_A, 100.2) == []
    assert job.result("w1", "B", OUTPUT_B, 100.3) == [
        Violation("w1", "a different second answer to job job1")
    ]
    assert job.result("stranger", "A", OUTPUT_A, 100.4) == []
    assert job.round.verdict().pending == ("w2", "w3")


def test_a_job_credits_nobody_below_the_credit_policy() -> None:
    too_few = new_job(("w1", "w2"), policy=PAID)  # 2 distinct miners, 3 needed
    too_few.result("w1", "A", OUTPUT_A, 100.1)
    commands = too_few.result("w2", "A", OUTPUT_A, 100.2)
    assert not of(commands, Credit)
    assert of(commands, SendVerdict) == [SendVerdict("w1", True, 0), SendVerdict("w2", True, 0)]
    assert too_few.record()["creditable"] is False and too_few.record()["verdict"] == "agreed"

    lone = new_job(threshold=1, policy=PAID)  # a client's threshold of 1: one agreeing miner is not enough
    lone.result("w1", "A", OUTPUT_A, 100.1)
    lone.result("w2", "B", OUTPUT_B, 100.2)
    commands = lone.result("w3", "C", OUTPUT_C, 100.3)
    assert of(commands, AnswerCaller)[0].verdict.agreeing == ("w1",)
    assert not of(commands, Credit) and lone.record()["creditable"] is False

    unpaid = new_job(policy=CreditPolicy(reward=0, min_replicas=3, min_agreeing=2))
    unpaid.result("w1", "A", OUTPUT_A, 100.1)
    assert not of(unpaid.result("w2", "A", OUTPUT_A, 100.2), Credit)


def test_rejections_the_job_caused_do_not_lower_scores() -> None:
    job = new_job()
    job.reject("w1", "bad_input", 100.1)
    job.reject("w2", "bad_input", 100.2)
    commands = job.reject("w3", "busy", 100.3)
    assert scores(commands) == {"w3": JobOutcome.REJECTED}  # most said bad input: the job's fault

    job = new_job()
    job.reject("w1", "bad_input", 100.1)
    job.result("w2", "A", OUTPUT_A, 100.2)
    commands = job.result("w3", "A", OUTPUT_A, 100.3)
    assert scores(commands)["w1"] is JobOutcome.REJECTED  # a lone bad_input is the miner's

    job = new_job()
    job.reject("w1", "unsupported_model", 100.1)
    job.invalid("w2", "NaN", 100.2)
    commands = job.result("w3", "A", OUTPUT_A, 100.3)
    assert scores(commands) == {"w2": JobOutcome.INVALID}


def test_a_job_starts_once() -> None:
    job = new_job()
    with pytest.raises(ValueError, match="already started"):
        job.start(100.0)


PURE = ("jobs.py", "consensus.py", "selection.py", "scoring.py", "pool.py")
IMPURE = {"asyncio", "aiohttp", "time", "datetime", "random", "socket", "sqlite3"}


@pytest.mark.parametrize("module", PURE)
def test_the_pure_modules_import_no_io_clock_or_randomness(module: str) -> None:
    path = Path(__file__).parents[2] / "src" / "krewe" / "orchestrator" / module
    imported = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module.split(".")[0])
    allowed = {"random"} if module == "selection.py" else set()  # the type of the generator passed in
    assert not imported & IMPURE - allowed, f"{module} imports {sorted(imported & IMPURE - allowed)}"


def test_a_worker_whose_registration_lapsed_is_never_credited_again() -> None:
    job = new_job()
    job.result("w1", "A", OUTPUT_A, 100.1)
    assert job.worker_deregistered("w1") == []
    commands = job.result("w2", "A", OUTPUT_A, 100.2)
    assert of(commands, Credit) == [Credit((("w2", REWARD),))]
    assert SendVerdict("w1", True, 0) in commands
