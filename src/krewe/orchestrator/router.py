"""JobRouter: one job's life, from a client's request to credits.

    submit -> select replicas -> send `job` to each -> answers feed a consensus Round
           -> the caller is answered as soon as the verdict is final
           -> collection goes on until every replica answered or the deadline passed
           -> credits (durable) -> scores -> `verdict` to each miner that answered -> record

A job that ends without consensus is sent to one more miner, not already in it, up to
`redispatch_max` times; the new answer joins the same round. At the deadline, every miner still
silent counts as a timeout and is sent `cancel`.

Events from sessions (`on_result`, ...) are plain callbacks on the event loop: they update the
round and never block. Only an assigned session's answers count; anything else is ignored.
"""

import asyncio
import logging
import random
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.config import OrchestratorSettings
from krewe.orchestrator.consensus import Ack, Outcome, Round, Verdict
from krewe.orchestrator.ledger import Credit
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.records import JobStore
from krewe.orchestrator.scoring import JobOutcome, update_score
from krewe.orchestrator.selection import select_replicas
from krewe.orchestrator.workers import Session, WorkerManager
from krewe.protocol.canonical import CanonicalError, digest, parse_strict
from krewe.protocol.login import rfc3339
from krewe.protocol.messages import TASKS, Reject, Result, encode

__all__ = ["Decision", "JobError", "JobRouter"]

log = logging.getLogger(__name__)

MAX_REPLICAS = 16


class JobIds:
    """Unguessable job ids (96 random bits) without a system call per job."""

    def __init__(self, per_refill: int = 4096) -> None:
        self._per_refill = per_refill
        self._pool: list[str] = []

    def next(self) -> str:
        if not self._pool:
            entropy = secrets.token_bytes(12 * self._per_refill).hex()
            self._pool = [entropy[i : i + 24] for i in range(0, len(entropy), 24)]
        return self._pool.pop()


class JobError(Exception):
    """A job that cannot run or ended without an answer; `status` and `code` are for HTTP."""

    def __init__(self, status: int, code: str, message: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.record = record  # the job's record, when the job ran


@dataclass(eq=False)
class _Job:
    id: str
    model: str
    task: str
    input: dict[str, Any]
    created_at: datetime
    started: float
    deadline: float
    round: Round
    redispatch_left: int
    decided: "asyncio.Future[Verdict]"
    sessions: dict[str, Session] = field(default_factory=dict)
    sent_at: dict[str, float] = field(default_factory=dict)
    answers: dict[str, dict[str, Any]] = field(default_factory=dict)
    outputs: dict[str, Any] = field(default_factory=dict)
    timer: asyncio.TimerHandle | None = None
    expired: bool = False
    undecided_at_deadline: bool = False
    finished: bool = False


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    output: Any  # the agreed output, or None
    record: dict[str, Any]


class JobRouter:
    def __init__(
        self,
        settings: OrchestratorSettings,
        workers: WorkerManager,
        ledger: LedgerService,
        records: JobStore,
        metrics: Metrics,
        *,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self._workers = workers
        self._ledger = ledger
        self._records = records
        self._metrics = metrics
        self._rng = rng
        self._clock = clock
        self.jobs: dict[str, _Job] = {}
        self._ids = JobIds()
        self._tasks: set[asyncio.Task[None]] = set()
        workers.events = self

    async def submit(
        self,
        model: str,
        task: str,
        job_input: dict[str, Any],
        *,
        replicas: int | None = None,
        threshold: int | None = None,
        timeout_ms: int | None = None,
    ) -> Decision:
        """Run a job; returns as soon as its verdict is final. Raises JobError."""
        settings = self.settings
        replicas = settings.replicas if replicas is None else replicas
        threshold = settings.threshold if threshold is None else threshold
        timeout_ms = settings.job_timeout_ms if timeout_ms is None else timeout_ms
        if task not in TASKS:
            raise JobError(400, "invalid_task", f"task must be one of {', '.join(TASKS)}, not {task!r}")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise JobError(
                400, "invalid_replicas", f"replicas must be between 1 and {MAX_REPLICAS}, not {replicas}"
            )
        if not 1 <= threshold <= replicas:
            raise JobError(400, "invalid_threshold", f"threshold must be between 1 and replicas ({replicas})")
        if not 1 <= timeout_ms <= settings.max_job_timeout_ms:
            limit = settings.max_job_timeout_ms
            raise JobError(
                400, "invalid_timeout", f"timeout_ms must be between 1 and {limit}, not {timeout_ms}"
            )
        if not self._workers.serves(model):
            raise JobError(404, "model_not_found", f"no connected miner serves the model {model!r}")
        selection = select_replicas(
            self._workers.candidates(), model, replicas, rng=self._rng, tail=min(settings.tail, replicas)
        )
        if len(selection.workers) < threshold:
            found = len(selection.workers)
            message = f"{found} miner(s) with free capacity serve {model!r}; {threshold} needed"
            raise JobError(503, "no_eligible_workers", message)
        now = self._clock()
        loop = asyncio.get_running_loop()
        job = _Job(
            id=self._ids.next(),
            model=model,
            task=task,
            input=job_input,
            created_at=datetime.now(UTC),
            started=now,
            deadline=now + timeout_ms / 1000,
            round=Round(selection.workers, threshold=threshold),
            redispatch_left=settings.redispatch_max,
            decided=loop.create_future(),
        )
        self.jobs[job.id] = job
        job.timer = loop.call_later(timeout_ms / 1000, self._expire, job)
        await self._dispatch(job, selection.workers)
        verdict = await asyncio.shield(job.decided)
        self._metrics.job_latency.observe(self._clock() - job.started)
        decision = Decision(
            verdict, job.outputs.get(verdict.digest or ""), self._record(job, verdict, credits={})
        )
        if verdict.outcome is Outcome.AGREED:
            return decision
        if job.undecided_at_deadline:
            message = f"no verdict within {timeout_ms} ms (job {job.id})"
            raise JobError(504, "deadline_exceeded", message, decision.record)
        raise JobError(502, "no_consensus", f"the miners did not agree (job {job.id})", decision.record)

    async def _dispatch(self, job: _Job, workers: tuple[str, ...]) -> None:
        remaining_ms = max(1, int((job.deadline - self._clock()) * 1000))
        frame = encode(
            {
                "type": "job",
                "job_id": job.id,
                "model": job.model,
                "task": job.task,
                "input": job.input,
                "deadline_ms": remaining_ms,
            }
        )
        for worker in workers:
            session = self._workers.sessions.get(worker)
            if session is None:
                self._answer(job, worker, JobOutcome.TIMEOUT, job.round.timeout(worker))
                continue
            session.in_flight += 1
            session.jobs.add(job.id)
            job.sessions[worker] = session
            job.sent_at[worker] = self._clock()
            # one after another: a send rarely waits (only when the socket's buffer is full), and a
            # task per send would cost more than it saves
            if not await session.send(frame) and not job.finished:
                self._answer(job, worker, JobOutcome.TIMEOUT, job.round.timeout(worker))
        self._advance(job)

    # Events from sessions.

    def on_result(self, session: Session, message: Result) -> None:
        job = self._job_of(session, message.job_id)
        if job is None:
            return
        try:
            output = parse_strict(bytes(message.output), max_bytes=self.settings.max_frame_bytes)
            output_digest = digest(output)
        except CanonicalError as error:
            log.info("invalid output from %s for job %s: %s", session.address, job.id, error)
            self._answer(
                job, session.address, JobOutcome.INVALID, job.round.invalid(session.address), str(error)
            )
            return
        ack = job.round.result(session.address, output_digest)
        if ack is Ack.COUNTED:
            job.outputs.setdefault(output_digest, output)
        self._answer(job, session.address, None, ack, digest=output_digest)

    def on_invalid(self, session: Session, job_id: str) -> None:
        job = self._job_of(session, job_id)
        if job is not None:
            ack = job.round.invalid(session.address)
            self._answer(job, session.address, JobOutcome.INVALID, ack, "output is not valid JSON")

    def on_reject(self, session: Session, message: Reject) -> None:
        job = self._job_of(session, message.job_id)
        if job is not None:
            ack = job.round.reject(session.address, message.reason)
            self._answer(job, session.address, JobOutcome.REJECTED, ack, message.reason)

    def on_session_closed(self, session: Session) -> None:
        for job_id in list(session.jobs):
            job = self._job_of(session, job_id)
            if job is not None:
                ack = job.round.timeout(session.address)
                self._answer(job, session.address, JobOutcome.TIMEOUT, ack, "disconnected")

    def _job_of(self, session: Session, job_id: str) -> _Job | None:
        """The open job this session was assigned, or None (unknown, closed, or someone else's)."""
        job = self.jobs.get(job_id)
        if job is None or job.sessions.get(session.address) is not session:
            return None
        return job

    def _answer(
        self,
        job: _Job,
        worker: str,
        outcome: JobOutcome | None,
        ack: Ack,
        reason: str = "",
        *,
        digest: str = "",
    ) -> None:
        """Note a worker's answer (outcome None: a valid result) and move the job on."""
        self._note(job, worker, outcome, ack, reason, digest=digest)
        self._advance(job)

    def _note(
        self, job: _Job, worker: str, outcome: JobOutcome | None, ack: Ack, reason: str, *, digest: str = ""
    ) -> None:
        session = job.sessions.get(worker)
        if ack is Ack.VIOLATION and session is not None:
            self._spawn(self._workers.violation(session, f"a different second answer to job {job.id}"))
            return
        if ack is not Ack.COUNTED:
            return
        if session is not None and job.id in session.jobs:
            session.in_flight -= 1
            session.jobs.discard(job.id)
        latency_ms = None
        if outcome is not JobOutcome.TIMEOUT and worker in job.sent_at:
            latency_ms = (self._clock() - job.sent_at[worker]) * 1000
            self._metrics.answer_latency.observe(latency_ms / 1000)
        kind = "result" if outcome is None else outcome.value
        job.answers[worker] = {
            "worker": worker,
            "answer": kind,
            "digest": digest or None,
            "reason": reason or None,
            "latency_ms": None if latency_ms is None else round(latency_ms, 3),
        }

    def _advance(self, job: _Job) -> None:
        """Decide, re-dispatch, or finish, as far as the round allows."""
        if job.finished:
            return
        round_ = job.round
        if not job.decided.done() and round_.is_final:
            verdict = round_.verdict()
            if verdict.outcome is Outcome.NO_CONSENSUS and job.redispatch_left > 0 and not round_.closed:
                fresh = select_replicas(
                    self._workers.candidates(),
                    job.model,
                    1,
                    rng=self._rng,
                    tail=0,
                    exclude=set(round_.workers),
                )
                if fresh.workers:
                    job.redispatch_left -= 1
                    round_.assign(fresh.workers)
                    self._spawn(self._dispatch(job, fresh.workers))
                    return
            job.decided.set_result(verdict)
        if job.decided.done() and round_.outstanding == 0:
            job.finished = True
            self._spawn(self._finish(job))

    def _expire(self, job: _Job) -> None:
        if job.finished:
            return
        job.expired = True
        silent = [worker for worker in job.round.workers if worker in job.round.verdict().pending]
        job.round.expire()
        for worker in silent:
            session = job.sessions.get(worker)
            if session is not None:
                self._spawn(session.send(encode({"type": "cancel", "job_id": job.id})))
            self._note(job, worker, JobOutcome.TIMEOUT, Ack.COUNTED, "deadline")
        if not job.decided.done():
            job.undecided_at_deadline = True
            job.decided.set_result(job.round.verdict())
        self._advance(job)

    async def _finish(self, job: _Job) -> None:
        """Credit the winners (durably, before telling anyone), score everyone, tell the miners."""
        if job.timer is not None:
            job.timer.cancel()
        self.jobs.pop(job.id, None)
        verdict = job.round.verdict()
        reward = self.settings.reward_for(job.model)
        credits: dict[str, int] = {}
        if verdict.outcome is Outcome.AGREED and reward > 0:
            try:
                await self._ledger.credit_many(
                    [Credit(job.id, worker, reward) for worker in verdict.agreeing]
                )
                credits = dict.fromkeys(verdict.agreeing, reward)
            except Exception:
                log.exception("crediting job %s failed; its winners were not credited", job.id)
        self._score(job, verdict)
        for worker, answer in job.answers.items():
            session = job.sessions.get(worker)
            if session is not None and answer["answer"] != JobOutcome.TIMEOUT.value:
                agreed = worker in verdict.agreeing
                await session.send(
                    encode(
                        {
                            "type": "verdict",
                            "job_id": job.id,
                            "agreed": agreed,
                            "credit": str(credits.get(worker, 0)),
                        }
                    )
                )
        self._metrics.jobs.labels(verdict.outcome.value).inc()
        self._records.put(self._record(job, verdict, credits))

    def _score(self, job: _Job, verdict: Verdict) -> None:
        outcomes: dict[str, JobOutcome] = {}
        if verdict.outcome is Outcome.AGREED:
            outcomes |= dict.fromkeys(verdict.agreeing, JobOutcome.AGREED)
            outcomes |= dict.fromkeys(verdict.disagreeing, JobOutcome.DISAGREED)
        outcomes |= dict.fromkeys(verdict.invalid, JobOutcome.INVALID)
        outcomes |= dict.fromkeys(verdict.rejected, JobOutcome.REJECTED)
        outcomes |= dict.fromkeys(verdict.silent, JobOutcome.TIMEOUT)
        config = self._workers.scoring
        for worker, outcome in outcomes.items():
            latency = job.answers.get(worker, {}).get("latency_ms")
            after = update_score(self._workers.score(worker), outcome, latency, config)
            self._workers.set_score(worker, after)
            self._metrics.scores.observe(after.quality)

    def _record(self, job: _Job, verdict: Verdict, credits: dict[str, int]) -> dict[str, Any]:
        return {
            "job_id": job.id,
            "model": job.model,
            "task": job.task,
            "created_at": rfc3339(job.created_at),
            "final": job.finished,
            "verdict": verdict.outcome.value,
            "digest": verdict.digest,
            "threshold": job.round.threshold,
            "replicas": job.round.replicas,
            "agreeing": list(verdict.agreeing),
            "deadline_exceeded": job.expired,
            "workers": [job.answers.get(w, {"worker": w, "answer": "pending"}) for w in job.round.workers],
            "credits": {worker: str(amount) for worker, amount in credits.items()},
            "output": job.outputs.get(verdict.digest or ""),
        }

    def _spawn(self, work: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @property
    def idle(self) -> bool:
        """No job open and no job's bookkeeping (credits, scores, record) still running."""
        return not self.jobs and not self._tasks

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for in-flight jobs and their bookkeeping to finish."""
        deadline = self._clock() + timeout_s
        while not self.idle and self._clock() < deadline:
            pending: list[asyncio.Future[Any]] = [*self._tasks]
            pending += [job.decided for job in self.jobs.values() if not job.decided.done()]
            if pending:
                await asyncio.wait(pending, timeout=max(0.0, deadline - self._clock()))
            else:
                await asyncio.sleep(0.01)
