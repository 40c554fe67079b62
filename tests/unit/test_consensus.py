"""Consensus: a table of event sequences and their verdicts, then properties over random rounds."""

import itertools
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from krewe.orchestrator.consensus import Ack, Outcome, Round

W = ("w1", "w2", "w3")


def play(
    events: list[tuple[str, ...]], workers: tuple[str, ...] = W, threshold: int = 2
) -> tuple[Round, list[Ack]]:
    round_ = Round(workers, threshold=threshold)
    acks = []
    for event in events:
        kind, *args = event
        if kind == "expire":
            round_.expire()
        else:
            acks.append(getattr(round_, kind)(*args))
    return round_, acks


# (events, is_final at the end, outcome, digest, agreeing, disagreeing, unresolved, invalid, rejected, silent)
CASES: list[tuple[str, list[tuple[str, ...]], bool, Outcome, str | None, dict[str, tuple[str, ...]]]] = [
    (
        "unanimous",
        [("result", "w1", "A"), ("result", "w2", "A"), ("result", "w3", "A")],
        True,
        Outcome.AGREED,
        "A",
        {"agreeing": W},
    ),
    (
        "two agree: final before the third answers",
        [("result", "w1", "A"), ("result", "w2", "A")],
        True,
        Outcome.AGREED,
        "A",
        {"agreeing": ("w1", "w2")},
    ),
    (
        "liar last",
        [("result", "w1", "A"), ("result", "w2", "A"), ("result", "w3", "B")],
        True,
        Outcome.AGREED,
        "A",
        {"agreeing": ("w1", "w2"), "disagreeing": ("w3",)},
    ),
    (
        "liar first",
        [("result", "w3", "B"), ("result", "w1", "A"), ("result", "w2", "A")],
        True,
        Outcome.AGREED,
        "A",
        {"agreeing": ("w1", "w2"), "disagreeing": ("w3",)},
    ),
    (
        "split: one outstanding can still decide",
        [("result", "w1", "A"), ("result", "w2", "B")],
        False,
        Outcome.NO_CONSENSUS,
        None,
        {"unresolved": ("w1", "w2")},
    ),
    (
        "three-way split",
        [("result", "w1", "A"), ("result", "w2", "B"), ("result", "w3", "C")],
        True,
        Outcome.NO_CONSENSUS,
        None,
        {"unresolved": ("w1", "w2", "w3")},
    ),
    (
        "invalid never votes",
        [("invalid", "w1"), ("result", "w2", "A"), ("result", "w3", "A")],
        True,
        Outcome.AGREED,
        "A",
        {"agreeing": ("w2", "w3"), "invalid": ("w1",)},
    ),
    (
        "two invalid: no group can reach 2",
        [("invalid", "w1"), ("invalid", "w2")],
        True,
        Outcome.NO_CONSENSUS,
        None,
        {"invalid": ("w1", "w2")},
    ),
    (
        "reject and timeout",
        [("reject", "w1", "busy"), ("timeout", "w2"), ("result", "w3", "A")],
        True,
        Outcome.NO_CONSENSUS,
        None,
        {"rejected": ("w1",), "silent": ("w2",), "unresolved": ("w3",)},
    ),
    (
        "deadline after one answer",
        [("result", "w1", "A"), ("expire",)],
        True,
        Outcome.NO_CONSENSUS,
        None,
        {"unresolved": ("w1",), "silent": ("w2", "w3")},
    ),
    (
        "deadline after agreement keeps the silent one",
        [("result", "w1", "A"), ("result", "w2", "A"), ("expire",)],
        True,
        Outcome.AGREED,
        "A",
        {"agreeing": ("w1", "w2"), "silent": ("w3",)},
    ),
    ("nothing yet", [], False, Outcome.NO_CONSENSUS, None, {}),
]


@pytest.mark.parametrize(
    ("events", "final", "outcome", "digest", "groups"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_case(
    events: list[tuple[str, ...]],
    final: bool,
    outcome: Outcome,
    digest: str | None,
    groups: dict[str, tuple[str, ...]],
) -> None:
    round_, _ = play(events)
    verdict = round_.verdict()
    assert round_.is_final is final
    assert (verdict.outcome, verdict.digest) == (outcome, digest)
    for name in ("agreeing", "disagreeing", "unresolved", "invalid", "rejected", "silent"):
        assert getattr(verdict, name) == groups.get(name, ()), name
    answered = {
        w
        for name in ("agreeing", "disagreeing", "unresolved", "invalid", "rejected", "silent")
        for w in getattr(verdict, name)
    }
    assert set(verdict.pending) == set(W) - answered


# (events, the acks they return)
ACK_CASES = [
    ("identical duplicate", [("result", "w1", "A"), ("result", "w1", "A")], [Ack.COUNTED, Ack.DUPLICATE]),
    ("different second result", [("result", "w1", "A"), ("result", "w1", "B")], [Ack.COUNTED, Ack.VIOLATION]),
    ("result after reject", [("reject", "w1", "busy"), ("result", "w1", "A")], [Ack.COUNTED, Ack.VIOLATION]),
    ("repeated reject", [("reject", "w1", "busy"), ("reject", "w1", "busy")], [Ack.COUNTED, Ack.DUPLICATE]),
    ("invalid then valid", [("invalid", "w1"), ("result", "w1", "A")], [Ack.COUNTED, Ack.VIOLATION]),
    (
        "not assigned",
        [("result", "w9", "A"), ("reject", "w9", "busy"), ("timeout", "w9")],
        [Ack.NOT_ASSIGNED] * 3,
    ),
    ("result after timeout", [("timeout", "w1"), ("result", "w1", "A")], [Ack.COUNTED, Ack.LATE]),
    (
        "timeout after answer keeps the answer",
        [("result", "w1", "A"), ("timeout", "w1")],
        [Ack.COUNTED, Ack.LATE],
    ),
    ("result after deadline", [("expire",), ("result", "w1", "A")], [Ack.LATE]),
]


@pytest.mark.parametrize(("events", "acks"), [case[1:] for case in ACK_CASES], ids=[c[0] for c in ACK_CASES])
def test_ack(events: list[tuple[str, ...]], acks: list[Ack]) -> None:
    _, got = play(events)
    assert got == acks


def test_violation_and_foreign_results_do_not_change_the_vote() -> None:
    round_, _ = play(
        [
            ("result", "w1", "A"),
            ("result", "w1", "B"),
            ("result", "w9", "B"),
            ("result", "w2", "B"),
            ("result", "w3", "A"),
        ]
    )
    verdict = round_.verdict()
    assert (verdict.digest, verdict.agreeing, verdict.disagreeing) == ("A", ("w1", "w3"), ("w2",))


def test_tie_goes_to_the_group_whose_first_result_came_first() -> None:
    workers = ("a", "b", "c", "d")
    round_, _ = play(
        [("result", "a", "X"), ("result", "b", "Y"), ("result", "c", "Y"), ("result", "d", "X")], workers
    )
    assert round_.verdict().digest == "X"
    round_, _ = play(
        [("result", "b", "Y"), ("result", "a", "X"), ("result", "c", "Y"), ("result", "d", "X")], workers
    )
    assert round_.verdict().digest == "Y"


def test_tie_with_low_threshold_is_not_final_while_an_earlier_group_can_catch_up() -> None:
    workers = ("a", "b", "c", "d", "e")
    round_, _ = play([("result", "a", "X"), ("result", "b", "Y"), ("result", "c", "Y")], workers, threshold=2)
    assert round_.verdict().digest == "Y"
    assert not round_.is_final  # two more X answers would win; one more X would tie and X came first
    round_.result("d", "Y")
    assert round_.is_final  # Y has 3; X can reach at most 2


def test_redispatch_adds_fresh_workers_to_the_round() -> None:
    round_, _ = play([("result", "w1", "A"), ("result", "w2", "B"), ("result", "w3", "C")])
    assert round_.is_final and round_.verdict().outcome is Outcome.NO_CONSENSUS
    round_.assign(["w4"])
    assert not round_.is_final
    assert round_.result("w4", "B") is Ack.COUNTED
    verdict = round_.verdict()
    assert (verdict.digest, verdict.agreeing, verdict.disagreeing) == ("B", ("w2", "w4"), ("w1", "w3"))
    with pytest.raises(ValueError, match="already assigned"):
        round_.assign(["w1"])


def test_bad_rounds_are_refused() -> None:
    with pytest.raises(ValueError, match="threshold"):
        Round(W, threshold=0)
    with pytest.raises(ValueError, match="twice"):
        Round(["a", "a"], threshold=1)
    round_, _ = play([("expire",)])
    with pytest.raises(ValueError, match="closed"):
        round_.assign(["w4"])


# Properties over random rounds.


@dataclass(frozen=True)
class Scenario:
    replicas: int
    threshold: int
    events: list[tuple[str, int, Any]]  # (kind, worker index, digest or reason)


@st.composite
def scenarios(draw: st.DrawFn, max_replicas: int = 7) -> Scenario:
    replicas = draw(st.integers(1, max_replicas))
    threshold = draw(st.integers(1, replicas))
    order = draw(st.permutations(range(replicas)))
    answered = draw(st.integers(0, replicas))
    answer = st.one_of(
        st.tuples(st.just("result"), st.sampled_from("ABCD")),
        st.tuples(st.just("invalid"), st.just(None)),
        st.tuples(st.just("reject"), st.just("busy")),
        st.tuples(st.just("timeout"), st.just(None)),
    )
    events = [(kind, worker, detail) for worker in order[:answered] for kind, detail in [draw(answer)]]
    return Scenario(replicas, threshold, events)


def apply(round_: Round, kind: str, worker: str, detail: Any) -> None:
    if kind == "result":
        round_.result(worker, detail)
    elif kind == "reject":
        round_.reject(worker, detail)
    else:
        getattr(round_, kind)(worker)


def names(replicas: int) -> list[str]:
    return [f"w{i}" for i in range(replicas)]


@settings(max_examples=500, deadline=None)
@given(scenarios())
def test_no_group_below_threshold_wins(scenario: Scenario) -> None:
    round_ = Round(names(scenario.replicas), threshold=scenario.threshold)
    for kind, worker, detail in scenario.events:
        apply(round_, kind, f"w{worker}", detail)
        verdict = round_.verdict()
        if verdict.outcome is Outcome.AGREED:
            assert len(verdict.agreeing) >= scenario.threshold


@settings(max_examples=500, deadline=None)
@given(scenarios(), st.data())
def test_honest_majority_at_threshold_wins_against_any_lies(scenario: Scenario, data: st.DataObject) -> None:
    replicas, threshold = scenario.replicas, scenario.threshold
    honest = data.draw(st.sets(st.integers(0, replicas - 1), min_size=threshold, max_size=replicas))
    if len(honest) <= replicas - len(honest):
        return  # colluding liars as many as the honest could tie or win; the rule promises nothing
    round_ = Round(names(replicas), threshold=threshold)
    order = data.draw(st.permutations(range(replicas)))
    for worker in order:
        if worker in honest:
            round_.result(f"w{worker}", "TRUTH")
        else:
            lie = data.draw(st.sampled_from(["result", "invalid", "reject", "timeout", "violation"]))
            if lie == "result":
                round_.result(f"w{worker}", data.draw(st.sampled_from(["L1", "L2", "L3"])))
            elif lie == "violation":
                round_.result(f"w{worker}", "L1")
                round_.result(f"w{worker}", "TRUTH")
            else:
                apply(round_, lie, f"w{worker}", "busy")
    assert round_.verdict().digest == "TRUTH"


@settings(max_examples=500, deadline=None)
@given(scenarios(), st.data())
def test_an_early_final_verdict_equals_the_verdict_after_all_answers(
    scenario: Scenario, data: st.DataObject
) -> None:
    round_ = Round(names(scenario.replicas), threshold=scenario.threshold)
    early = None
    for kind, worker, detail in scenario.events:
        apply(round_, kind, f"w{worker}", detail)
        if early is None and round_.is_final:
            early = round_.verdict()
    silent_ones = [w for w in names(scenario.replicas) if w in round_.verdict().pending]
    for worker in silent_ones:
        kind, detail = data.draw(
            st.sampled_from(
                [("result", "A"), ("result", "B"), ("result", "E"), ("invalid", None), ("timeout", None)]
            )
        )
        apply(round_, kind, worker, detail)
        if early is None and round_.is_final:
            early = round_.verdict()
    assert round_.is_final
    final = round_.verdict()
    assert early is not None
    assert (early.outcome, early.digest) == (final.outcome, final.digest)
    assert set(early.agreeing) <= set(final.agreeing)


@settings(max_examples=300, deadline=None)
@given(scenarios(max_replicas=5))
def test_is_final_is_exact(scenario: Scenario) -> None:
    """is_final is true exactly when no completion of the outstanding answers changes the winner."""
    round_ = Round(names(scenario.replicas), threshold=scenario.threshold)
    for kind, worker, detail in scenario.events:
        apply(round_, kind, f"w{worker}", detail)
    now = round_.verdict()
    outstanding = list(now.pending)
    # Every way the outstanding workers could answer: a digest already seen, a new one (up to one per
    # outstanding worker), or no vote at all.
    seen = sorted({detail for kind, _, detail in scenario.events if kind == "result"})
    choices = [*seen, *(f"new{i}" for i in range(len(outstanding))), None]
    winners = set()
    for completion in itertools.product(choices, repeat=len(outstanding)):
        copy = Round(names(scenario.replicas), threshold=scenario.threshold)
        for kind, worker, detail in scenario.events:
            apply(copy, kind, f"w{worker}", detail)
        for worker, choice in zip(outstanding, completion, strict=True):
            if choice is None:
                copy.timeout(worker)
            else:
                copy.result(worker, choice)
        winners.add(copy.verdict().digest)
    assert round_.is_final is (winners == {now.digest})
