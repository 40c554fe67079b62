"""Consensus: which answer to a job wins, decided from answers in arrival order.

Everything that decides a job's verdict lives here, and nothing else does: no I/O, no clock,
no sockets. A `Round` knows the workers assigned to a job and the threshold, and takes events
in the order the orchestrator saw them:

    result(worker, digest)   a valid answer, by the SHA-256 of its canonical JSON
    invalid(worker)          an answer that has no canonical form (never a vote)
    reject(worker, reason)   the worker declined the job
    timeout(worker)          the worker went silent (disconnected, or the deadline passed)
    expire()                 the deadline passed: every worker still outstanding is silent

Each event returns an `Ack` saying what it did. Only assigned workers count, once each:

    first answer of an assigned worker ............ COUNTED
    the same answer again ......................... DUPLICATE  (acknowledged, ignored)
    a different answer after the first ............ VIOLATION  (ignored, reported)
    an answer after the worker timed out .......... LATE       (ignored)
    any answer from a worker not assigned ......... NOT_ASSIGNED (ignored, reported)

The rule (PROTOCOL.md §3): valid results are grouped by digest; the winner is the largest group
with at least `threshold` members, and between groups of equal size the one whose first result
arrived first. No such group: `no_consensus`.

`is_final` is exact: it is true exactly when no way the outstanding workers could still answer
(joining any group, forming new groups, or not voting) would change the winning digest. The
worst case for the current leader is every outstanding answer going to one challenger, so it
suffices to check each existing group and one new group against the leader.
"""

from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum

__all__ = ["Ack", "Outcome", "Round", "Verdict"]


class Ack(Enum):
    COUNTED = "counted"
    DUPLICATE = "duplicate"
    VIOLATION = "violation"
    LATE = "late"
    NOT_ASSIGNED = "not_assigned"


class Outcome(Enum):
    AGREED = "agreed"
    NO_CONSENSUS = "no_consensus"


class _Kind(Enum):
    RESULT = "result"
    INVALID = "invalid"
    REJECT = "reject"
    TIMEOUT = "timeout"


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: _Kind
    detail: str = ""  # the digest of a result, the reason of a reject


@dataclass(frozen=True, slots=True)
class Verdict:
    """Where a round stands. Worker tuples are in arrival order; `pending` in assignment order."""

    outcome: Outcome
    digest: str | None
    agreeing: tuple[str, ...]
    disagreeing: tuple[str, ...]
    unresolved: tuple[str, ...]  # valid results when no group won: not penalised
    invalid: tuple[str, ...]
    rejected: tuple[str, ...]
    silent: tuple[str, ...]
    pending: tuple[str, ...]


class Round:
    """The consensus state of one job. Not thread-safe; one owner feeds it events."""

    def __init__(self, workers: Iterable[str], *, threshold: int) -> None:
        if threshold < 1:
            raise ValueError(f"threshold must be at least 1, not {threshold}")
        self.threshold = threshold
        self._assigned: dict[str, None] = {}
        self._answers: dict[str, _Answer] = {}
        # digest -> members in arrival order; dict order is the order of each group's first result.
        self._groups: dict[str, list[str]] = {}
        self._closed = False
        self._verdict: Verdict | None = None  # verdict() until the next event changes the round
        self.assign(workers)

    @property
    def workers(self) -> tuple[str, ...]:
        return tuple(self._assigned)

    @property
    def replicas(self) -> int:
        return len(self._assigned)

    @property
    def outstanding(self) -> int:
        return len(self._assigned) - len(self._answers)

    @property
    def closed(self) -> bool:
        return self._closed

    def assign(self, workers: Iterable[str]) -> None:
        """Add fresh workers to the round (first dispatch, or a re-dispatch after no consensus)."""
        if self._closed:
            raise ValueError("the round is closed")
        fresh = list(workers)
        for worker in fresh:
            if worker in self._assigned:
                raise ValueError(f"worker {worker} is already assigned to this round")
        if len(set(fresh)) != len(fresh):
            raise ValueError("a worker cannot be assigned twice")
        self._assigned.update(dict.fromkeys(fresh))
        self._verdict = None

    def result(self, worker: str, digest: str) -> Ack:
        return self._record(worker, _Answer(_Kind.RESULT, digest))

    def invalid(self, worker: str) -> Ack:
        return self._record(worker, _Answer(_Kind.INVALID))

    def reject(self, worker: str, reason: str) -> Ack:
        return self._record(worker, _Answer(_Kind.REJECT, reason))

    def timeout(self, worker: str) -> Ack:
        """The worker went silent. A worker that already answered keeps its answer (LATE)."""
        if worker not in self._assigned:
            return Ack.NOT_ASSIGNED
        if worker in self._answers:
            return Ack.LATE
        self._answers[worker] = _Answer(_Kind.TIMEOUT)
        self._verdict = None
        return Ack.COUNTED

    def expire(self) -> None:
        """The deadline passed: every outstanding worker is silent, and the round is closed."""
        for worker in self._assigned:
            if worker not in self._answers:
                self._answers[worker] = _Answer(_Kind.TIMEOUT)
        self._closed = True
        self._verdict = None

    def _record(self, worker: str, answer: _Answer) -> Ack:
        if worker not in self._assigned:
            return Ack.NOT_ASSIGNED
        previous = self._answers.get(worker)
        if previous is None:
            self._answers[worker] = answer
            if answer.kind is _Kind.RESULT:
                self._groups.setdefault(answer.detail, []).append(worker)
            self._verdict = None
            return Ack.COUNTED
        if previous.kind is _Kind.TIMEOUT:
            return Ack.LATE
        if previous == answer:
            return Ack.DUPLICATE
        return Ack.VIOLATION

    def _leader(self) -> str | None:
        """The digest that wins if no further answer arrives, or None."""
        best: str | None = None
        best_size = self.threshold - 1
        for digest, members in self._groups.items():  # in first-arrival order: ties keep the earliest
            if len(members) > best_size:
                best, best_size = digest, len(members)
        return best

    @property
    def is_final(self) -> bool:
        """True when the winning digest (or no_consensus) can no longer change."""
        left = self.outstanding
        if left == 0:
            return True
        leader = self._leader()
        if leader is None:
            largest = max((len(members) for members in self._groups.values()), default=0)
            return largest + left < self.threshold
        leader_size = len(self._groups[leader])
        if left > leader_size:  # a group not yet seen could outnumber the leader
            return False
        leader_seen = False
        for digest, members in self._groups.items():
            if digest == leader:
                leader_seen = True
                continue
            reach = len(members) + left
            if reach > leader_size or (reach == leader_size and not leader_seen):
                return False
        return True

    def verdict(self) -> Verdict:
        if self._verdict is None:
            self._verdict = self._tally()
        return self._verdict

    def _tally(self) -> Verdict:
        leader = self._leader()
        agreeing = tuple(self._groups[leader]) if leader is not None else ()
        results, invalid, rejected, silent = [], [], [], []
        for worker, answer in self._answers.items():
            if answer.kind is _Kind.RESULT:
                if answer.detail != leader:
                    results.append(worker)
            elif answer.kind is _Kind.INVALID:
                invalid.append(worker)
            elif answer.kind is _Kind.REJECT:
                rejected.append(worker)
            else:
                silent.append(worker)
        pending = tuple(worker for worker in self._assigned if worker not in self._answers)
        return Verdict(
            outcome=Outcome.AGREED if leader is not None else Outcome.NO_CONSENSUS,
            digest=leader,
            agreeing=agreeing,
            disagreeing=tuple(results) if leader is not None else (),
            unresolved=() if leader is not None else tuple(results),
            invalid=tuple(invalid),
            rejected=tuple(rejected),
            silent=tuple(silent),
            pending=pending,
        )
