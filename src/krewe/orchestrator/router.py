"""JobRouter: carries out what each job's life cycle (`jobs.Job`) decides.

    submit -> validate -> select replicas -> Job.start -> commands
    session events (result, reject, invalid, gone) and the deadline timer -> Job -> commands

The decisions are all in `jobs.py`; this loop only feeds a job its events and does what comes
back: send frames, pick replicas for a redispatch, answer the caller, credit the ledger, score,
write the record. Commands run at once, in order, but for those behind a credit: frames and the
caller's answer join the job's queue of I/O, which is worked through in order, and a credit holds
the queue until the ledger says it is durable (a callback on its future, not a task per job). So
neither the caller nor a miner hears of a credit before it is durable, and a straggler's verdict
usually waits in the queue behind the winners' credit. Frames never wait: a session's channel
writes them to the miner's socket at once, or, for a miner another instance holds, queues them in
order for Redis (`pool.Channel`).

A credit is never dropped: a write that fails is retried with backoff, and while the ledger cannot
be written the router refuses new jobs (`503 ledger_unavailable`).
"""

import asyncio
import collections
import functools
import logging
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

from krewe.orchestrator import jobs
from krewe.orchestrator.bookkeeper import LedgerService
from krewe.orchestrator.config import MAX_REPLICAS, OrchestratorSettings
from krewe.orchestrator.consensus import Outcome, Verdict
from krewe.orchestrator.jobs import Command, CreditPolicy, Job
from krewe.orchestrator.ledger import Credit
from krewe.orchestrator.metrics import Metrics
from krewe.orchestrator.pool import Session, SessionPool
from krewe.orchestrator.records import JobStore
from krewe.orchestrator.score_store import ScoreStore
from krewe.orchestrator.scoring import update_score
from krewe.protocol import messages
from krewe.protocol.canonical import CanonicalError, digest, parse_strict
from krewe.protocol.messages import TASKS, Reject, Result
from krewe.protocol.siwe import format_time

__all__ = ["Decision", "JobError", "JobRouter"]

log = logging.getLogger(__name__)

CREDIT_RETRY_FIRST_S = 0.05
CREDIT_RETRY_MAX_S = 5.0


class JobIds:
    """Unguessable job ids without a system call per job: the millisecond the job was made (12 hex
    digits), then 96 random bits. Ids made later sort later, so the stores that key their rows by
    job id (the ledger's credits, the job records) add each row next to the last one: with random
    ids, each job's credits landed on a page of their own, which every commit rewrote."""

    def __init__(self, per_refill: int = 4096) -> None:
        self._per_refill = per_refill
        self._pool: list[str] = []

    def next(self, made: datetime) -> str:
        if not self._pool:
            entropy = secrets.token_bytes(12 * self._per_refill).hex()
            self._pool = [entropy[i : i + 24] for i in range(0, len(entropy), 24)]
        return f"{int(made.timestamp() * 1000):012x}{self._pool.pop()}"


class JobError(Exception):
    """A job that cannot run or ended without an answer; `status` and `code` are for HTTP."""

    def __init__(self, status: int, code: str, message: str, record: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.record = record  # the job's record, when the job ran


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    output: Any  # the agreed output, or None
    record: dict[str, Any]


@dataclass(eq=False)
class _Running:
    """A job with the I/O handles the router keeps for it."""

    job: Job
    caller: "asyncio.Future[jobs.AnswerCaller]"
    closed: "asyncio.Future[None]"
    sessions: dict[str, Session] = field(default_factory=dict)  # the session each worker was sent
    timer: asyncio.TimerHandle | None = None
    io: collections.deque[Command] = field(default_factory=collections.deque)  # to do, in order
    doing_io: bool = False  # `io` is being worked through, or waits for a credit to be written
    credit_retry_s: float = 0.0  # the backoff before the next try of a credit that failed; 0: none failed
    # an output's bytes, parsed and digested once: honest replicas send the very same bytes
    digests: dict[bytes, tuple[Any, str]] = field(default_factory=dict)


class JobRouter:
    def __init__(
        self,
        settings: OrchestratorSettings,
        pool: SessionPool,
        ledger: LedgerService,
        records: JobStore,
        scores: ScoreStore,
        *,
        metrics: Metrics,
        rng: random.Random,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_first_job: Callable[[], None] = lambda: None,
    ) -> None:
        self.settings = settings
        self._on_first_job = on_first_job  # called when a job opens while none is open
        self._pool = pool
        self._ledger = ledger
        self._records = records
        self._scores = scores
        self._metrics = metrics
        self._rng = rng
        self._clock = clock
        self._wall_clock = wall_clock
        self._running: dict[str, _Running] = {}
        self._ids = JobIds()
        self._writing: set[_Running] = set()  # jobs whose I/O waits for a credit to be written
        self._written: list[asyncio.Future[None]] = []  # `drain`s waiting for `_writing` to empty
        self._unwritable_credits = 0  # credits waiting for the ledger to accept them again

    @property
    def ledger_writable(self) -> bool:
        return self._unwritable_credits == 0

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
        self._check(model, task, replicas, threshold, timeout_ms)
        engine = self._engine_class(model, task, replicas, threshold)
        selection = self._pool.ranking.select(
            model, task, replicas, rng=self._rng, tail=min(settings.tail, replicas), engine=engine
        )
        now, made = self._clock(), self._wall_clock()
        job = Job.create(
            self._ids.next(made),
            model,
            task,
            job_input,
            workers=selection.workers,
            threshold=threshold,
            timeout_ms=timeout_ms,
            redispatch_max=settings.redispatch_max,
            policy=CreditPolicy(
                reward=settings.reward_for(model),
                min_replicas=settings.min_credit_replicas or settings.replicas,
                min_agreeing=settings.min_credit_threshold or settings.threshold,
            ),
            now=now,
            created_at=format_time(made),
            engine=engine,
        )
        loop = asyncio.get_running_loop()
        running = _Running(job, loop.create_future(), loop.create_future())
        self._running[job.id] = running
        if len(self._running) == 1:
            self._on_first_job()
        running.timer = loop.call_later(timeout_ms / 1000, self._deadline, running)
        self._carry_out(running, job.start(now))
        # the job runs on whatever becomes of this request: a cancelled wait cancels only this future
        answer = await running.caller
        self._metrics.job_latency.observe(self._clock() - job.started)
        decision = Decision(answer.verdict, answer.output, answer.record)
        if answer.verdict.outcome is Outcome.AGREED:
            return decision
        if answer.deadline_exceeded:
            message = f"no verdict within {timeout_ms} ms (job {job.id})"
            raise JobError(504, "deadline_exceeded", message, decision.record)
        raise JobError(502, "no_consensus", f"the miners did not agree (job {job.id})", decision.record)

    def _engine_class(self, model: str, task: str, replicas: int, threshold: int) -> str | None:
        """The engine class the job's replicas come from (None: any, when `homogeneous` is off).
        Raises 503 when not even `threshold` miners with free capacity can take the job."""
        ranking = self._pool.ranking
        found = min(ranking.available(model, task), replicas)
        if found < threshold:
            message = f"{found} miner(s) with free capacity serve {model!r} for {task}; {threshold} needed"
            raise JobError(503, "no_eligible_workers", message)
        if not self.settings.homogeneous:
            return None
        engine = ranking.choose_engine_class(model, task, replicas, needed=threshold, rng=self._rng)
        if engine is None:
            message = (
                f"{found} miners with free capacity serve {model!r} for {task}, but no engine class has "
                f"{threshold} of them; answers agree only within one class"
            )
            raise JobError(503, "no_engine_class", message)
        return engine

    def _check(self, model: str, task: str, replicas: int, threshold: int, timeout_ms: int) -> None:
        if not self.ledger_writable:
            message = "the reward ledger cannot be written now; no job is taken until it can"
            raise JobError(503, "ledger_unavailable", message)
        if task not in TASKS:
            raise JobError(400, "invalid_task", f"task must be one of {', '.join(TASKS)}, not {task!r}")
        if not 1 <= replicas <= MAX_REPLICAS:
            raise JobError(
                400, "invalid_replicas", f"replicas must be between 1 and {MAX_REPLICAS}, not {replicas}"
            )
        if not 1 <= threshold <= replicas:
            raise JobError(400, "invalid_threshold", f"threshold must be between 1 and replicas ({replicas})")
        if not 1 <= timeout_ms <= self.settings.max_job_timeout_ms:
            limit = self.settings.max_job_timeout_ms
            raise JobError(
                400, "invalid_timeout", f"timeout_ms must be between 1 and {limit}, not {timeout_ms}"
            )
        served = self._pool.tasks_for(model)
        if not served:
            raise JobError(404, "model_not_found", f"no connected miner serves the model {model!r}")
        if task not in served:
            message = f"the model {model!r} is served for {', '.join(served)}, not {task}"
            raise JobError(400, "unsupported_task", message)

    # Events from sessions. Each returns a protocol violation to hold against the sender, or None.

    def on_result(self, session: Session, message: Result) -> str | None:
        running = self._running_for(session, message.job_id)
        if running is None:
            return None
        job, now = running.job, self._clock()
        raw = bytes(message.output)
        known = running.digests.get(raw)
        if known is None:
            try:
                output = parse_strict(raw, max_bytes=self.settings.max_frame_bytes)
                known = (output, digest(output))
            except CanonicalError as error:
                log.info("invalid output from %s for job %s: %s", session.address, job.id, error)
                return self._carry_out(running, job.invalid(session.address, str(error), now))
            if len(running.digests) < job.round.replicas:  # bounded: a miner may send many outputs
                running.digests[raw] = known
        output, output_digest = known
        return self._carry_out(running, job.result(session.address, output_digest, output, now))

    def on_invalid(self, session: Session, job_id: str) -> str | None:
        running = self._running_for(session, job_id)
        if running is None:
            return None
        reason = "output is not valid JSON"
        return self._carry_out(running, running.job.invalid(session.address, reason, self._clock()))

    def on_reject(self, session: Session, message: Reject) -> str | None:
        running = self._running_for(session, message.job_id)
        if running is None:
            return None
        return self._carry_out(running, running.job.reject(session.address, message.reason, self._clock()))

    def on_session_closed(self, session: Session) -> None:
        for job_id in list(session.jobs):
            running = self._running_for(session, job_id)
            if running is not None:
                self._carry_out(running, running.job.session_gone(session.address, "disconnected"))

    def on_deregistered(self, worker: str) -> None:
        """The worker's registration lapsed: no open job credits it any more."""
        for running in self._running.values():
            if worker in running.sessions:
                running.job.worker_deregistered(worker)

    def _running_for(self, session: Session, job_id: str) -> _Running | None:
        """The open job this session was sent, or None (unknown, closed, or someone else's)."""
        running = self._running.get(job_id)
        if running is None or running.sessions.get(session.address) is not session:
            return None
        return running

    def _deadline(self, running: _Running) -> None:
        self._carry_out(running, running.job.deadline_reached(self._clock()))

    # Carrying out commands.

    def _carry_out(self, running: _Running, commands: list[Command]) -> str | None:
        """Do what the job said; returns the last violation it reported, if any."""
        violation = None
        io: list[Command] = []  # in order; a credit holds back every command queued after it
        queue = list(commands)
        while queue:
            command = queue.pop(0)
            match command:
                case jobs.SendJob(workers):
                    queue += self._assign(running, workers)
                    io.append(command)
                case jobs.SendCancel() | jobs.SendVerdict() | jobs.Credit():
                    io.append(command)
                case jobs.AnswerCaller() if any(isinstance(earlier, jobs.Credit) for earlier in io):
                    io.append(command)
                case jobs.Release(worker):
                    session = running.sessions.get(worker)
                    if session is not None:
                        self._pool.release(session, running.job.id)
                case jobs.AskReplicas(count, exclude):
                    queue += self._redispatch(running, count, exclude)
                case jobs.AnswerCaller():
                    if not running.caller.done():
                        running.caller.set_result(command)
                case jobs.Violation(_, reason):
                    violation = reason
                case jobs.Score(outcomes):
                    self._score(outcomes)
                case jobs.Close():
                    self._close(running)
        if io:
            running.io += io
            if not running.doing_io:
                running.doing_io = True
                self._work_through_io(running)
        return violation

    def _assign(self, running: _Running, workers: tuple[str, ...]) -> list[Command]:
        """Hold a slot on each worker's session now, before any await, so capacity stays exact."""
        commands: list[Command] = []
        for worker in workers:
            session = self._pool.sessions.get(worker)
            if session is None:
                commands += running.job.session_gone(worker, "disconnected")
            else:
                running.sessions[worker] = session
                self._pool.assign(session, running.job.id)
        return commands

    def _redispatch(self, running: _Running, count: int, exclude: frozenset[str]) -> list[Command]:
        job = running.job
        fresh = self._pool.ranking.select(
            job.model, job.task, count, rng=self._rng, tail=0, exclude=exclude, engine=job.engine
        )
        return job.replicas_granted(fresh.workers, self._clock())

    def _work_through_io(self, running: _Running) -> None:
        """Carry out the job's queued I/O in order, until it is done or waits for a credit. A
        command that fails unexpectedly is logged and the rest still run: a credit behind it too."""
        while running.io:
            command = running.io.popleft()
            try:
                if self._do(running, command):
                    return
            except Exception:
                log.exception("job %s: %s failed", running.job.id, type(command).__name__)
        running.doing_io = False
        self._writing.discard(running)
        if not self._writing:
            for waiter in self._written:
                if not waiter.done():
                    waiter.set_result(None)
            self._written.clear()

    def _do(self, running: _Running, command: Command) -> bool:
        """Carry out one command of the job's I/O; True when it is a credit, now being written."""
        job = running.job
        match command:
            case jobs.SendJob(workers, deadline_ms):
                task = cast("messages.Task", job.task)
                frame = messages.encode(messages.Job(job.id, job.model, task, job.input, deadline_ms))
                for worker in workers:
                    session = running.sessions.get(worker)
                    if session is not None and not session.channel.send(frame):
                        self._carry_out(running, job.session_gone(worker, "disconnected"))
            case jobs.SendCancel(workers):
                frame = messages.encode(messages.Cancel(job.id))
                for worker in workers:
                    session = running.sessions.get(worker)
                    if session is not None:
                        session.channel.send(frame)
            case jobs.SendVerdict(worker, agreed, credit):
                session = running.sessions.get(worker)
                if session is not None:
                    session.channel.send(messages.encode(messages.Verdict(job.id, agreed, str(credit))))
            case jobs.Credit(amounts):
                self._writing.add(running)
                self._credit(running, [Credit(job.id, worker, amount) for worker, amount in amounts])
                return True
            case jobs.AnswerCaller():
                if not running.caller.done():
                    running.caller.set_result(command)
        return False

    def _credit(self, running: _Running, credits: list[Credit]) -> None:
        """Credit durably, then go on with the job's I/O. A write that fails is tried again with
        backoff for as long as it takes: a credit is never dropped. A credit nobody waits for (the
        caller has its answer: a straggler's) may wait to share another commit."""
        written = self._ledger.credit_many(credits, hurry=not running.caller.done())
        written.add_done_callback(functools.partial(self._credited, running, credits))

    def _credited(
        self, running: _Running, credits: list[Credit], written: "asyncio.Future[list[bool]]"
    ) -> None:
        error = asyncio.CancelledError() if written.cancelled() else written.exception()
        if error is None:
            if running.credit_retry_s:
                running.credit_retry_s = 0.0
                self._unwritable_credits -= 1
            self._work_through_io(running)
            return
        delay = running.credit_retry_s or CREDIT_RETRY_FIRST_S
        if not running.credit_retry_s:
            self._unwritable_credits += 1
        running.credit_retry_s = min(delay * 2, CREDIT_RETRY_MAX_S)
        log.error("crediting job %s failed (%s); retrying in %.2f s", credits[0].job_id, error, delay)
        asyncio.get_running_loop().call_later(delay, self._credit, running, credits)

    def _score(self, outcomes: tuple[tuple[str, Any, float | None], ...]) -> None:
        for worker, outcome, latency_ms in outcomes:
            if latency_ms is not None:
                self._metrics.answer_latency.observe(latency_ms / 1000)
            after = update_score(self._pool.score(worker), outcome, latency_ms, self._pool.scoring)
            self._pool.set_score(worker, after)
            self._scores.put(worker, after)
            self._metrics.scores.observe(after.quality)

    def _close(self, running: _Running) -> None:
        job = running.job
        if running.timer is not None:
            running.timer.cancel()
        self._running.pop(job.id, None)
        running.closed.set_result(None)
        verdict = job.round.verdict().outcome.value
        self._metrics.jobs.labels(verdict).inc()
        self._metrics.count_engine_verdict(job.engine, verdict)
        self._records.put(job.record())

    @property
    def jobs(self) -> int:
        """Jobs open now."""
        return len(self._running)

    @property
    def idle(self) -> bool:
        """No job open and no job's credits still being written (frames for miners other instances
        hold may still wait in the network's queue)."""
        return not self._running and not self._writing

    async def drain(self, timeout_s: float) -> None:
        """Wait (bounded) for open jobs to close, then for every credit to be written."""
        closing = [running.closed for running in self._running.values()]
        if closing:
            await asyncio.wait(closing, timeout=timeout_s)
        if self._writing:
            written = asyncio.get_running_loop().create_future()
            self._written.append(written)
            await written
