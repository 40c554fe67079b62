"""The session pool: every logged-in miner as selection and the router see it. Pure.

One owner for each piece of a session's state: what it serves (models, tasks, engine classes),
its capacity and the jobs it is working on, and the peer scores of every worker ever seen (kept
after a session ends, so a reconnect does not wash a score clean). The WebSocket endpoint adds and
removes sessions; the router assigns and releases jobs; nothing here does I/O or reads a clock.

The pool keeps a `Ranking` (selection.py) of the current sessions in step with each of those
changes, so that the router's replica selection never sorts the miners per job.

A session carries a `Channel`, the endpoint's handle for sending it frames; the pool never uses it.

With several instances sharing one Redis (network.py), the pool also holds the miners connected to
the other instances as remote sessions: `remote` names the instance holding the connection, the
channel relays frames there, and `elsewhere` counts the jobs that instance last reported on the
miner beyond this instance's own, so that selection sees the miner's load across the network.
"""

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from krewe.orchestrator.scoring import PeerScore, ScoringConfig
from krewe.orchestrator.selection import Ranking
from krewe.protocol.messages import ModelOffer

__all__ = ["Channel", "Session", "SessionPool"]


class Channel(Protocol):
    def send(self, frame: str) -> bool:
        """Send one text frame now, after those sent before it, without waiting; False if the
        connection is already gone (or goes for this frame)."""
        ...

    async def close(self, close_code: int, code: str, message: str) -> None:
        """Send an error frame with `code` and `message`, then close with `close_code`."""
        ...


@dataclass(eq=False)
class Session:
    id: str
    address: str
    channel: Channel
    offers: tuple[ModelOffer, ...]
    max_concurrency: int
    agent: str
    connected_at: float
    last_seen: float
    violations: int = 0
    jobs: set[str] = field(default_factory=set)  # the jobs it is working on
    serves: frozenset[tuple[str, str]] = frozenset()  # (model, task) pairs, derived from offers
    remote: str = ""  # the instance holding the miner's connection; "" for this one
    elsewhere: int = 0  # jobs on it that other instances sent, as its holder last reported

    def __post_init__(self) -> None:
        self.serves = _pairs(self.offers)

    @property
    def worker(self) -> str:
        return self.address

    @property
    def in_flight(self) -> int:
        return len(self.jobs) + self.elsewhere

    def engine(self, model: str) -> str:
        """The engine class declared for `model` ("" when the miner named none)."""
        return next((offer.engine for offer in self.offers if offer.id == model), "")


class SessionPool:
    def __init__(
        self, scoring: ScoringConfig | None = None, scores: Mapping[str, PeerScore] | None = None
    ) -> None:
        self.scoring = scoring or ScoringConfig()
        self._sessions: dict[str, Session] = {}
        self._connected_here = 0  # sessions that are not remote
        self._serving: collections.Counter[tuple[str, str]] = collections.Counter()
        self._scores: dict[str, PeerScore] = dict(scores or {})  # as stored before a restart
        self._ranking = Ranking()
        self._models: dict[str, tuple[str, ...]] | None = None  # model -> tasks served

    @property
    def sessions(self) -> Mapping[str, Session]:
        return self._sessions

    @property
    def connected_here(self) -> int:
        """Sessions whose miner is connected to this instance."""
        return self._connected_here

    @property
    def scores(self) -> Mapping[str, PeerScore]:
        return self._scores

    @property
    def ranking(self) -> Ranking:
        """The current sessions as replica selection reads them (only the pool changes it)."""
        return self._ranking

    def add(self, session: Session) -> Session | None:
        """Add a logged-in session; returns the session of the same address it supersedes, if any."""
        previous = self._sessions.get(session.address)
        if previous is not None:
            self.remove(previous)
        self._sessions[session.address] = session
        if not session.remote:
            self._connected_here += 1
        self._serving.update(session.serves)
        self._models = None
        self._rank(session)
        return previous

    def remove(self, session: Session) -> bool:
        """Remove a session if it is the current one for its address; False if it was not."""
        if self._sessions.get(session.address) is not session:
            return False
        del self._sessions[session.address]
        if not session.remote:
            self._connected_here -= 1
        self._stop_serving(session.serves)
        self._models = None
        self._ranking.remove(session.address)
        return True

    def update_offers(self, session: Session, offers: Iterable[ModelOffer], max_concurrency: int) -> None:
        current = self._sessions.get(session.address) is session
        if current:
            self._stop_serving(session.serves)
        session.offers = tuple(offers)
        session.serves = _pairs(session.offers)
        session.max_concurrency = max_concurrency
        if current:
            self._serving.update(session.serves)
            self._models = None
            self._rank(session)

    def models(self) -> dict[str, list[str]]:
        """Every model some connected miner serves, with the tasks served for it."""
        return {model: list(tasks) for model, tasks in self._served().items()}

    def tasks_for(self, model: str) -> list[str]:
        return list(self._served().get(model, ()))

    def _served(self) -> dict[str, tuple[str, ...]]:
        if self._models is None:  # worked out again only after what is served changed
            tasks: dict[str, tuple[str, ...]] = {}
            for (model, task), count in sorted(self._serving.items()):
                if count > 0:
                    tasks[model] = (*tasks.get(model, ()), task)
            self._models = tasks
        return self._models

    def serves(self, model: str, task: str) -> bool:
        return self._serving[(model, task)] > 0

    # Jobs in flight.

    def assign(self, session: Session, job_id: str) -> None:
        session.jobs.add(job_id)
        self._load_changed(session)

    def release(self, session: Session, job_id: str) -> None:
        session.jobs.discard(job_id)
        self._load_changed(session)

    def set_elsewhere(self, session: Session, jobs: int) -> None:
        """A remote session's jobs from other instances, as its holder last reported them."""
        session.elsewhere = jobs
        self._load_changed(session)

    def _load_changed(self, session: Session) -> None:
        if self._sessions.get(session.address) is session:
            self._ranking.set_load(session.address, session.in_flight)

    # Peer scores.

    def score(self, worker: str) -> PeerScore:
        return self._scores.get(worker) or PeerScore.new(self.scoring)

    def set_score(self, worker: str, score: PeerScore) -> None:
        self._scores[worker] = score
        self._ranking.set_rank(worker, score.rank(self.scoring))

    def _rank(self, session: Session) -> None:
        serves = [(model, task, session.engine(model)) for model, task in session.serves]
        self._ranking.put(
            session.address,
            self.score(session.address).rank(self.scoring),
            serves,
            in_flight=session.in_flight,
            max_concurrency=session.max_concurrency,
        )

    def _stop_serving(self, pairs: frozenset[tuple[str, str]]) -> None:
        """Count these (model, task) pairs out, forgetting those nobody serves any more."""
        for pair in pairs:
            self._serving[pair] -= 1
            if self._serving[pair] <= 0:
                del self._serving[pair]


def _pairs(offers: Iterable[ModelOffer]) -> frozenset[tuple[str, str]]:
    return frozenset((offer.id, task) for offer in offers for task in offer.tasks)
