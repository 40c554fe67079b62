"""The session pool: every logged-in miner as selection and the router see it. Pure.

One owner for each piece of a session's state: what it serves (models, tasks, engine classes),
its capacity and the jobs it is working on, and the peer scores of every worker ever seen (kept
after a session ends, so a reconnect does not wash a score clean). The WebSocket endpoint adds and
removes sessions; the router assigns and releases jobs; nothing here does I/O or reads a clock.

A session carries a `Channel`, the endpoint's handle for sending it frames; the pool never uses it.
"""

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from krewe.orchestrator.scoring import PeerScore, ScoringConfig
from krewe.protocol.messages import ModelOffer

__all__ = ["Channel", "Session", "SessionPool"]


class Channel(Protocol):
    async def send(self, frame: str) -> bool:
        """Send one text frame; False if the connection is already gone."""
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
    rank: float = 0.0  # the peer score's rank, kept current by SessionPool.set_score
    violations: int = 0
    jobs: set[str] = field(default_factory=set)  # the jobs it is working on
    serves: frozenset[tuple[str, str]] = frozenset()  # (model, task) pairs, derived from offers

    def __post_init__(self) -> None:
        self.serves = _pairs(self.offers)

    @property
    def worker(self) -> str:
        return self.address

    @property
    def in_flight(self) -> int:
        return len(self.jobs)

    def engine(self, model: str) -> str:
        """The engine class declared for `model` ("" when the miner named none)."""
        return next((offer.engine for offer in self.offers if offer.id == model), "")


class SessionPool:
    def __init__(
        self, scoring: ScoringConfig | None = None, scores: Mapping[str, PeerScore] | None = None
    ) -> None:
        self.scoring = scoring or ScoringConfig()
        self._sessions: dict[str, Session] = {}
        self._serving: collections.Counter[tuple[str, str]] = collections.Counter()
        self._scores: dict[str, PeerScore] = dict(scores or {})  # as stored before a restart

    @property
    def sessions(self) -> Mapping[str, Session]:
        return self._sessions

    @property
    def scores(self) -> Mapping[str, PeerScore]:
        return self._scores

    def add(self, session: Session) -> Session | None:
        """Add a logged-in session; returns the session of the same address it supersedes, if any."""
        previous = self._sessions.get(session.address)
        if previous is not None:
            self.remove(previous)
        session.rank = self.score(session.address).rank(self.scoring)
        self._sessions[session.address] = session
        self._serving.update(session.serves)
        return previous

    def remove(self, session: Session) -> bool:
        """Remove a session if it is the current one for its address; False if it was not."""
        if self._sessions.get(session.address) is not session:
            return False
        del self._sessions[session.address]
        self._serving.subtract(session.serves)
        return True

    def update_offers(self, session: Session, offers: Iterable[ModelOffer], max_concurrency: int) -> None:
        current = self._sessions.get(session.address) is session
        if current:
            self._serving.subtract(session.serves)
        session.offers = tuple(offers)
        session.serves = _pairs(session.offers)
        session.max_concurrency = max_concurrency
        if current:
            self._serving.update(session.serves)

    def current(self, address: str, session_id: str) -> Session | None:
        """The session with this id, if it is still the current one of its address."""
        session = self._sessions.get(address)
        return session if session is not None and session.id == session_id else None

    # What connected miners serve.

    def models(self) -> dict[str, list[str]]:
        """Every model some connected miner serves, with the tasks served for it."""
        tasks: dict[str, list[str]] = {}
        for (model, task), count in sorted(self._serving.items()):
            if count > 0:
                tasks.setdefault(model, []).append(task)
        return tasks

    def tasks_for(self, model: str) -> list[str]:
        return self.models().get(model, [])

    def serves(self, model: str, task: str) -> bool:
        return self._serving[(model, task)] > 0

    def candidates(self) -> Iterable[Session]:
        return self._sessions.values()

    # Jobs in flight.

    def assign(self, session: Session, job_id: str) -> None:
        session.jobs.add(job_id)

    def release(self, session: Session, job_id: str) -> None:
        session.jobs.discard(job_id)

    # Peer scores.

    def score(self, worker: str) -> PeerScore:
        return self._scores.get(worker) or PeerScore.new(self.scoring)

    def set_score(self, worker: str, score: PeerScore) -> None:
        self._scores[worker] = score
        session = self._sessions.get(worker)
        if session is not None:
            session.rank = score.rank(self.scoring)


def _pairs(offers: Iterable[ModelOffer]) -> frozenset[tuple[str, str]]:
    return frozenset((offer.id, task) for offer in offers for task in offer.tasks)
