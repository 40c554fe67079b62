"""A miner with several orchestrator URLs: it moves to the next when its orchestrator goes away, and
stays where it is when the connection ends for a reason every orchestrator would share. The
orchestrators are real aiohttp WebSocket servers on 127.0.0.1 that speak the login of protocol 2."""

import re
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from aiohttp import web

from krewe.miner.agent import challenge_is_for, instance_gone
from krewe.miner.config import MinerSettings
from krewe.protocol.messages import CloseCode, Error, Welcome, encode
from krewe.settings import SettingsError, load_settings
from tests.service.conftest import until
from tests.service.test_miner_agent import ScriptedBackend, ScriptedOrchestrator, agent_for, running

Script = Callable[[ScriptedOrchestrator, web.WebSocketResponse], Awaitable[None]]


class Instance:
    """A scripted orchestrator that the test starts and stops, on the same port each time; stopping
    drops its connections without a close frame, as when its process is killed."""

    def __init__(self, script: Script) -> None:
        self.orchestrator = ScriptedOrchestrator(script)
        self.runner: web.AppRunner | None = None
        self.open: list[web.Request] = []  # Request is not hashable

    @property
    def url(self) -> str:
        return self.orchestrator.url

    @property
    def logins(self) -> int:
        return len(self.orchestrator.signers)

    async def connect(self, request: web.Request) -> web.WebSocketResponse:
        self.open.append(request)
        try:
            return await self.orchestrator.connect(request)
        finally:
            self.open.remove(request)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/v1/workers/connect", self.connect)
        self.runner = web.AppRunner(app, shutdown_timeout=5)
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", self.orchestrator.port).start()

    async def stop(self) -> None:
        for request in self.open:
            if request.transport is not None:
                request.transport.close()
        if self.runner is not None:
            await self.runner.cleanup()
            self.runner = None


@pytest.fixture
async def instances() -> AsyncIterator[Callable[[Script], Instance]]:
    made: list[Instance] = []

    def make(script: Script) -> Instance:
        made.append(Instance(script))
        return made[-1]

    yield make
    for instance in made:
        await instance.stop()


async def stay_welcomed(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
    await orchestrator.welcome_then_record(ws, [])


def welcome_then_close(code: int) -> Script:
    async def script(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
        welcome = Welcome(
            worker=orchestrator.signers[-1], session="s1", heartbeat_s=10, max_frame_bytes=1 << 20
        )
        await ws.send_str(encode(welcome))
        await ws.close(code=code, message=b"the test ends the session")

    return script


async def refuse_login(orchestrator: ScriptedOrchestrator, ws: web.WebSocketResponse) -> None:
    await ws.send_str(encode(Error(code="auth_failed", message="the test refuses")))
    await ws.close(code=CloseCode.AUTH_FAILED)


async def test_the_agent_moves_to_the_second_when_the_first_stops_and_back_when_the_second_stops(
    instances: Callable[[Script], Instance],
) -> None:
    first, second = instances(stay_welcomed), instances(stay_welcomed)
    await first.start()
    await second.start()
    agent = agent_for([first.url, second.url], 0, ScriptedBackend())
    async with running(agent):
        await until(agent.connected.is_set, what="the login at the first")
        assert (first.logins, second.logins, agent.url) == (1, 0, first.url)
        await first.stop()
        # each login is checked against that orchestrator's own domain and URI
        await until(lambda: second.logins == 1 and agent.connected.is_set(), what="the login at the second")
        assert (agent.url, agent.stats.failovers) == (second.url, 1)
        await first.start()
        await second.stop()
        await until(
            lambda: first.logins == 2 and agent.connected.is_set(), what="the login at the first again"
        )
        assert (agent.url, agent.stats.failovers, agent.stats.sessions) == (first.url, 2, 3)
    assert first.orchestrator.signers == [agent.address] * 2 and second.orchestrator.signers == [
        agent.address
    ]


async def test_a_refused_connection_moves_on_and_the_list_wraps_around(
    instances: Callable[[Script], Instance],
) -> None:
    down, up = instances(stay_welcomed), instances(stay_welcomed)
    await up.start()
    agent = agent_for([up.url, down.url], 0, ScriptedBackend())
    async with running(agent):
        await until(agent.connected.is_set, what="the login at the first")
        await up.stop()
        await up.start()  # back before the agent tries the second, which refuses connections
        await until(lambda: up.logins == 2 and agent.connected.is_set(), what="the login after wrapping")
    assert agent.stats.failovers == 2 and down.logins == 0


@pytest.mark.parametrize("code", [CloseCode.GOING_AWAY, 1012])
async def test_going_away_and_service_restart_move_to_the_next(
    instances: Callable[[Script], Instance], code: int
) -> None:
    leaving, staying = instances(welcome_then_close(code)), instances(stay_welcomed)
    await leaving.start()
    await staying.start()
    agent = agent_for([leaving.url, staying.url], 0, ScriptedBackend())
    async with running(agent):
        await until(lambda: staying.logins == 1 and agent.connected.is_set(), what="the login at the second")
    assert (leaving.logins, agent.stats.failovers, agent.url) == (1, 1, staying.url)


@pytest.mark.parametrize(
    "script", [welcome_then_close(CloseCode.SUPERSEDED), refuse_login], ids=["superseded", "auth_failed"]
)
async def test_a_supersede_or_a_refused_login_reconnects_to_the_same_orchestrator(
    instances: Callable[[Script], Instance], script: Script
) -> None:
    same, other = instances(script), instances(stay_welcomed)
    await same.start()
    await other.start()
    agent = agent_for([same.url, other.url], 0, ScriptedBackend())
    async with running(agent):
        await until(lambda: same.logins >= 3, what="three logins at the same orchestrator")
    assert (other.logins, agent.stats.failovers, agent.url) == (0, 0, same.url)


async def test_a_challenge_for_another_orchestrator_is_not_signed(
    instances: Callable[[Script], Instance],
) -> None:
    impostor, genuine = instances(stay_welcomed), instances(stay_welcomed)
    # the impostor relays the genuine orchestrator's challenge, to get a login it could replay there
    impostor.orchestrator.challenge = genuine.orchestrator.challenge
    await impostor.start()
    await genuine.start()
    agent = agent_for([impostor.url, genuine.url], 0, ScriptedBackend())
    async with running(agent):
        await until(
            lambda: genuine.logins == 1 and agent.connected.is_set(), what="the login at the genuine one"
        )
    assert impostor.orchestrator.auths == [] and agent.stats.failovers == 1


def test_which_ends_mean_the_orchestrator_went_away() -> None:
    assert [instance_gone(code) for code in (None, 1001, 1006, 1012)] == [True] * 4
    assert [instance_gone(code) for code in (1000, 1011, 1013, 4000, 4401, 4403, 4409, 4429)] == [False] * 8


def test_a_challenge_is_for_the_url_whose_domain_and_uri_it_names() -> None:
    challenge = ScriptedOrchestrator(stay_welcomed).challenge
    url = challenge.uri
    assert challenge_is_for(challenge, url)
    assert not challenge_is_for(challenge, url.replace("127.0.0.1", "localhost"))
    assert not challenge_is_for(challenge, url.replace("ws://", "wss://"))
    assert not challenge_is_for(challenge, url + "/")


def test_the_urls_come_from_a_toml_list_or_a_comma_separated_variable(tmp_path: Path) -> None:
    urls = ["ws://127.0.0.1:8000/v1/workers/connect", "ws://127.0.0.1:8001/v1/workers/connect"]
    config = tmp_path / "miner.toml"
    config.write_text(f"orchestrator_url = {urls!r}\n".replace("'", '"'))
    assert load_settings(MinerSettings, file=config, environ={}).orchestrator_url == urls
    environ = {"KREWE_MINER_ORCHESTRATOR_URL": " , ".join(urls)}
    assert load_settings(MinerSettings, environ=environ, env_prefix="KREWE_MINER_").orchestrator_url == urls
    flags = {"orchestrator_url": ",".join(reversed(urls))}
    assert load_settings(MinerSettings, environ={}, flags=flags).orchestrator_url == urls[::-1]
    config.write_text(f'orchestrator_url = "{urls[1]}"\n')  # one URL, as before
    settings = load_settings(MinerSettings, file=config, environ={})
    assert settings.orchestrator_url == urls[1:]
    assert settings.api_url == "http://127.0.0.1:8001"


@pytest.mark.parametrize(
    ("urls", "message"),
    [
        ([], "orchestrator_url: at least one URL"),
        (
            ["ws://a/v1/workers/connect", "http://b"],
            "orchestrator_url: must start with ws:// or wss://, not 'http://b'",
        ),
        (["ws://a/v1/workers/connect"] * 2, "orchestrator_url: lists a URL twice"),
    ],
)
def test_bad_url_lists_are_refused(urls: list[str], message: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        MinerSettings(orchestrator_url=urls)
