"""The job life cycle, from acceptance to its record, as a pure state machine.

Everything that decides what happens to a job lives here, and nothing else does: no asyncio, no
sockets, no clock, no random numbers. Like h11's connection, a `Job` takes events and returns
commands; the router feeds it what the sockets and timers report and carries out what it says.

States and transitions (an event not listed for a state changes nothing):

    state          event                              next state      commands
    -------------  ---------------------------------  --------------  ------------------------------
    (new)          start                              COLLECTING      SendJob
    COLLECTING     answer, verdict not yet final      COLLECTING      Release
    COLLECTING     answer, final, agreed              DECIDED         Release, Credit, AnswerCaller,
                                                                      SendVerdict...
    COLLECTING     answer, final, no consensus,       REDISPATCHING   Release, AskReplicas
                   redispatches left
    COLLECTING     answer, final, no consensus,       DECIDED         Release, AnswerCaller,
                   none left                                          SendVerdict...
    REDISPATCHING  replicas_granted (some)            COLLECTING      SendJob
    REDISPATCHING  replicas_granted (none)            DECIDED         AnswerCaller, SendVerdict...
    REDISPATCHING  answer (a straggler)               REDISPATCHING   Release
    DECIDED        answer (a straggler)               DECIDED         Release, [Credit], SendVerdict
    any open       deadline                           CLOSED          SendCancel, Release,
                                                                      [AnswerCaller]
    DECIDED        last outstanding answer            CLOSED          (as for that answer)
    any open       worker_deregistered                (same)          (none; it is never credited)
    on CLOSED                                                         Score, Close

An "answer" is a valid result (by digest), an invalid result, a reject, or the worker's session
going away. Only the first answer of an assigned worker counts (see `consensus.Round`); a second,
different result is reported as a `Violation` of its sender. A job in REDISPATCHING has a final
no-consensus verdict among its current workers and waits for the router to grant fresh ones.

Money: the agreeing miners are credited as soon as the verdict is final, and a straggler that
joins the winning group when it arrives. Commands come in the order they must be carried out: the
caller's answer and each miner's `verdict` frame follow the `Credit` they report. A job
credits only when `CreditPolicy` allows: a reward for its model, at least `min_replicas` distinct
miners asked, at least `min_agreeing` of them agreeing. Scores are given when the job closes;
rejections the job itself caused (`unsupported_model`, or `bad_input` from most of its miners) and
disagreement without a winner never lower a score.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from krewe.orchestrator.consensus import Ack, Outcome, Round, Verdict
from krewe.orchestrator.scoring import JobOutcome

__all__ = [
    "AnswerCaller",
    "AskReplicas",
    "Close",
    "Command",
    "Credit",
    "CreditPolicy",
    "Job",
    "Release",
    "Score",
    "SendCancel",
    "SendJob",
    "SendVerdict",
    "State",
    "Violation",
]


class State(Enum):
    NEW = "new"
    COLLECTING = "collecting"
    REDISPATCHING = "redispatching"
    DECIDED = "decided"
    CLOSED = "closed"


# Commands.


@dataclass(frozen=True, slots=True)
class SendJob:
    workers: tuple[str, ...]
    deadline_ms: int  # what the miners have left, from now


@dataclass(frozen=True, slots=True)
class SendCancel:
    workers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class SendVerdict:
    worker: str
    agreed: bool
    credit: int


@dataclass(frozen=True, slots=True)
class Release:
    """The worker no longer works on this job: its slot is free."""

    worker: str


@dataclass(frozen=True, slots=True)
class AskReplicas:
    """Grant `count` fresh workers for a redispatch, none of `exclude`; answer with replicas_granted."""

    count: int
    exclude: frozenset[str]


@dataclass(frozen=True, slots=True)
class AnswerCaller:
    """Answer the caller. The record is the job's as of the verdict: every worker it lists as agreeing
    (of a creditable job) is credited by the `Credit` before this command, not a straggler after it."""

    verdict: Verdict
    output: Any  # the agreed output, or None
    deadline_exceeded: bool
    record: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Credit:
    """Credit these workers durably, before the `SendVerdict` commands that follow."""

    amounts: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class Violation:
    worker: str
    reason: str


@dataclass(frozen=True, slots=True)
class Score:
    """Each worker's outcome, with its measured latency in ms (None when it never answered)."""

    outcomes: tuple[tuple[str, JobOutcome, float | None], ...]


@dataclass(frozen=True, slots=True)
class Close:
    """The job is over: write its record and forget it."""


Command = (
    SendJob
    | SendCancel
    | SendVerdict
    | Release
    | AskReplicas
    | AnswerCaller
    | Credit
    | Violation
    | Score
    | Close
)


@dataclass(frozen=True, slots=True)
class CreditPolicy:
    reward: int  # wei per agreeing miner; 0: the model earns nothing
    min_replicas: int
    min_agreeing: int


@dataclass(slots=True)
class _Answer:
    kind: str  # result | invalid | rejected | timeout
    digest: str | None = None
    reason: str | None = None
    latency_ms: float | None = None


@dataclass(eq=False)
class Job:
    id: str
    model: str
    task: str
    input: dict[str, Any]
    created_at: str  # RFC 3339, for the record
    started: float  # seconds on the caller's clock
    deadline: float
    round: Round
    redispatch_left: int
    policy: CreditPolicy
    engine: str | None = None  # the engine class every replica comes from; None: any
    state: State = State.NEW
    deadline_exceeded: bool = False
    sent_at: dict[str, float] = field(default_factory=dict)
    answers: dict[str, _Answer] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)  # digest -> the first output with it
    credits: dict[str, int] = field(default_factory=dict)
    told: set[str] = field(default_factory=set)  # workers sent their verdict frame
    disqualified: set[str] = field(default_factory=set)  # workers no longer registered: never credited

    @classmethod
    def create(
        cls,
        job_id: str,
        model: str,
        task: str,
        job_input: dict[str, Any],
        *,
        workers: tuple[str, ...],
        threshold: int,
        timeout_ms: int,
        redispatch_max: int,
        policy: CreditPolicy,
        now: float,
        created_at: str,
        engine: str | None = None,
    ) -> "Job":
        return cls(
            id=job_id,
            model=model,
            task=task,
            input=job_input,
            created_at=created_at,
            started=now,
            deadline=now + timeout_ms / 1000,
            round=Round(workers, threshold=threshold),
            redispatch_left=redispatch_max,
            policy=policy,
            engine=engine,
        )

    @property
    def closed(self) -> bool:
        return self.state is State.CLOSED

    @property
    def creditable(self) -> bool:
        """Whether this job may credit anyone (decided only at the verdict; False before it)."""
        verdict = self.round.verdict()
        return (
            self.policy.reward > 0
            and verdict.outcome is Outcome.AGREED
            and self.round.replicas >= self.policy.min_replicas
            and len(verdict.agreeing) >= self.policy.min_agreeing
        )

    # Events.

    def start(self, now: float) -> list[Command]:
        if self.state is not State.NEW:
            raise ValueError(f"job {self.id} has already started")
        self.state = State.COLLECTING
        return [self._send(self.round.workers, now)]

    def result(self, worker: str, digest: str, output: Any, now: float) -> list[Command]:
        if self.closed:
            return []
        ack = self.round.result(worker, digest)
        if ack is Ack.COUNTED:
            self.outputs.setdefault(digest, output)
        return self._answered(worker, ack, _Answer("result", digest=digest), now)

    def invalid(self, worker: str, reason: str, now: float) -> list[Command]:
        if self.closed:
            return []
        return self._answered(worker, self.round.invalid(worker), _Answer("invalid", reason=reason), now)

    def reject(self, worker: str, reason: str, now: float) -> list[Command]:
        if self.closed:
            return []
        ack = self.round.reject(worker, reason)
        return self._answered(worker, ack, _Answer("rejected", reason=reason), now)

    def session_gone(self, worker: str, reason: str) -> list[Command]:
        if self.closed:
            return []
        ack = self.round.timeout(worker)
        return self._answered(worker, ack, _Answer("timeout", reason=reason), None)

    def worker_deregistered(self, worker: str) -> list[Command]:
        """The worker stopped being an active worker on chain: this job credits it nothing more."""
        if not self.closed:
            self.disqualified.add(worker)
        return []

    def replicas_granted(self, workers: tuple[str, ...], now: float) -> list[Command]:
        if self.state is not State.REDISPATCHING:
            return []
        if not workers:
            return self._decide() + self._close_if_done()
        self.redispatch_left -= 1
        self.round.assign(workers)
        self.state = State.COLLECTING
        return [self._send(workers, now)]

    def deadline_reached(self, now: float) -> list[Command]:
        if self.closed:
            return []
        silent = self.round.verdict().pending
        self.round.expire()
        commands: list[Command] = []
        if silent:
            commands.append(SendCancel(silent))
        for worker in silent:
            self.answers[worker] = _Answer("timeout", reason="deadline")
            commands.append(Release(worker))
        if self.state is not State.DECIDED:
            self.deadline_exceeded = True
            commands += self._decide()
        return commands + self._close()

    # Transitions.

    def _send(self, workers: tuple[str, ...], now: float) -> SendJob:
        for worker in workers:
            self.sent_at[worker] = now
        return SendJob(workers, max(1, round((self.deadline - now) * 1000)))

    def _answered(self, worker: str, ack: Ack, answer: _Answer, now: float | None) -> list[Command]:
        if ack is Ack.VIOLATION:
            return [Violation(worker, f"a different second answer to job {self.id}")]
        if ack is not Ack.COUNTED:
            return []
        if now is not None and worker in self.sent_at:
            answer.latency_ms = (now - self.sent_at[worker]) * 1000
        self.answers[worker] = answer
        commands: list[Command] = [Release(worker)]
        if self.state is State.COLLECTING and self.round.is_final:
            verdict = self.round.verdict()
            if verdict.outcome is Outcome.NO_CONSENSUS and self.redispatch_left > 0:
                self.state = State.REDISPATCHING
                return [*commands, AskReplicas(1, frozenset(self.round.workers))]
            commands += self._decide()
        elif self.state is State.DECIDED and answer.kind != "timeout":
            commands += self._tell([worker])
        return commands + self._close_if_done()

    def _decide(self) -> list[Command]:
        """The verdict is final: credit the winners, then answer the caller and tell who answered."""
        self.state = State.DECIDED
        verdict = self.round.verdict()
        told = [worker for worker, answer in self.answers.items() if answer.kind != "timeout"]
        output = self.outputs.get(verdict.digest or "")
        commands = self._tell(told)
        credits = [command for command in commands if isinstance(command, Credit)]
        verdicts = [command for command in commands if not isinstance(command, Credit)]
        return [*credits, AnswerCaller(verdict, output, self.deadline_exceeded, self.record()), *verdicts]

    def _tell(self, workers: list[str]) -> list[Command]:
        """Credit those of `workers` who agreed (if the job is creditable), then send their verdicts."""
        verdict = self.round.verdict()
        agreeing = set(verdict.agreeing)
        fresh = [worker for worker in workers if worker not in self.told]
        self.told.update(fresh)
        commands: list[Command] = []
        if self.creditable:
            paid = agreeing - self.disqualified
            amounts = tuple((w, self.policy.reward) for w in fresh if w in paid)
            if amounts:
                self.credits.update(amounts)
                commands.append(Credit(amounts))
        commands += [SendVerdict(w, w in agreeing, self.credits.get(w, 0)) for w in fresh]
        return commands

    def _close_if_done(self) -> list[Command]:
        if self.state is State.DECIDED and self.round.outstanding == 0:
            return self._close()
        return []

    def _close(self) -> list[Command]:
        self.state = State.CLOSED
        return [Score(self._outcomes()), Close()]

    def _outcomes(self) -> tuple[tuple[str, JobOutcome, float | None], ...]:
        verdict = self.round.verdict()
        outcomes: dict[str, JobOutcome] = {}
        if verdict.outcome is Outcome.AGREED:
            outcomes |= dict.fromkeys(verdict.agreeing, JobOutcome.AGREED)
            outcomes |= dict.fromkeys(verdict.disagreeing, JobOutcome.DISAGREED)
        outcomes |= dict.fromkeys(verdict.invalid, JobOutcome.INVALID)
        outcomes |= dict.fromkeys(self._rejections_to_score(), JobOutcome.REJECTED)
        outcomes |= dict.fromkeys(verdict.silent, JobOutcome.TIMEOUT)
        return tuple(
            (worker, outcome, self.answers[worker].latency_ms if worker in self.answers else None)
            for worker, outcome in outcomes.items()
        )

    def _rejections_to_score(self) -> list[str]:
        """Rejections the miner is answerable for; not those the job itself caused."""
        reasons = {w: a.reason for w, a in self.answers.items() if a.kind == "rejected"}
        bad_input = sum(1 for reason in reasons.values() if reason == "bad_input")
        job_at_fault = bad_input * 2 > self.round.replicas
        return [
            worker
            for worker, reason in reasons.items()
            if reason != "unsupported_model" and not (reason == "bad_input" and job_at_fault)
        ]

    # The record.

    def record(self) -> dict[str, Any]:
        verdict = self.round.verdict()
        return {
            "job_id": self.id,
            "model": self.model,
            "task": self.task,
            "engine": self.engine,
            "created_at": self.created_at,
            "final": self.closed,
            "verdict": verdict.outcome.value,
            "digest": verdict.digest,
            "threshold": self.round.threshold,
            "replicas": self.round.replicas,
            "agreeing": list(verdict.agreeing),
            "creditable": self.creditable,
            "deadline_exceeded": self.deadline_exceeded,
            "workers": [self._answer_row(worker) for worker in self.round.workers],
            "credits": {worker: str(amount) for worker, amount in self.credits.items()},
            "output": self.outputs.get(verdict.digest or ""),
        }

    def _answer_row(self, worker: str) -> dict[str, Any]:
        answer = self.answers.get(worker)
        if answer is None:
            return {"worker": worker, "answer": "pending"}
        latency = None if answer.latency_ms is None else round(answer.latency_ms, 3)
        return {
            "worker": worker,
            "answer": answer.kind,
            "digest": answer.digest,
            "reason": answer.reason,
            "latency_ms": latency,
        }
