"""The operator's dashboard as a person sees it: loaded, clicked through, on a desk and a phone."""

import base64
from pathlib import Path
from typing import Any

import aiohttp
from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from tests.service.conftest import Harness, until
from tests.service.test_jobs import CHAT, post

TIMEOUT_MS = 15_000


async def get_json(harness: Harness, path: str, **headers: str) -> Any:
    async with aiohttp.ClientSession() as http, http.get(harness.url + path, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def busy_network(harness: Harness) -> None:
    """Four miners, one of them lying; jobs agreed and not; a paid settlement and pending credits."""
    await harness.connected("honest", "honest", "honest", "liar")
    for round_ in range(2):
        for _ in range(4):
            status, body = await post(harness, "/v1/chat/completions", CHAT)
            assert status == 200, body
        await until(lambda: harness.orchestrator.router.idle, what="the jobs to finish")
        if round_ == 0:
            await harness.orchestrator.settle()


class Watched:
    """A page with every console error and uncaught exception it meets."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.errors.append(message.text)


async def open_dashboard(context: BrowserContext, harness: Harness) -> Watched:
    watched = Watched(await context.new_page())
    watched.page.set_default_timeout(TIMEOUT_MS)
    await watched.page.goto(harness.url + "/")
    return watched


async def screenshot(page: Page, path: Path) -> None:
    await page.screenshot(path=path, full_page=True)
    print(f"screenshot: {path}")


async def test_the_dashboard_shows_the_network_its_jobs_and_statements(
    harness: Harness, browser: Browser, tmp_path: Path
) -> None:
    await busy_network(harness)
    workers = [row["worker"] for row in (await get_json(harness, "/v1/workers"))["data"]]
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    watched = await open_dashboard(context, harness)
    page = watched.page
    rows = page.locator("#miners-table tbody tr")
    await expect(rows).to_have_count(len(workers))
    listed = await rows.evaluate_all("rows => rows.map(row => row.dataset.worker)")
    assert sorted(listed) == sorted(workers)
    # the charts draw: verdict bars, and the latency lines once the sampler has seen the jobs
    await expect(page.locator("#chart-verdicts svg rect.bar-agreed").first).to_be_visible()
    await expect(page.locator("#chart-latency svg path.line-p99_ms")).to_have_count(1)
    await expect(page.locator("#chart-miners svg path.line-miners")).to_have_count(1)
    await expect(page.locator("#settlements-table .pill.paid")).to_have_count(1)
    await expect(page.locator("#chain")).to_contain_text("reachable")
    await expect(page.locator("#jobs-table tbody tr")).to_have_count(8)  # every job, up to ten
    await screenshot(page, tmp_path / "dashboard.png")

    # sorting by a column reorders the miners
    async def credited_column() -> list[int]:
        titles = await rows.evaluate_all("rows => rows.map(row => row.children[6].firstElementChild.title)")
        return [int(title.split()[0]) for title in titles]

    await page.locator("th[data-sort=credited]").click()  # largest first
    amounts = await credited_column()
    assert amounts == sorted(amounts, reverse=True) and amounts[0] > amounts[-1] == 0  # the liar earned 0
    await page.locator("th[data-sort=credited]").click()
    assert await credited_column() == sorted(amounts)

    # a job's link opens its audit record: who answered what, who was credited
    first_job = page.locator("#jobs-table a.job-link").first
    job_id = (await first_job.get_attribute("href") or "").removeprefix("#/jobs/")
    await first_job.click()
    await expect(page.locator("#job-title")).to_have_text(job_id)
    record = await get_json(harness, f"/v1/jobs/{job_id}")
    answers = page.locator("#answers-table tbody tr")
    await expect(answers).to_have_count(len(record["workers"]))
    for row in record["workers"]:
        await expect(page.locator(f'#answers-table a[href="#/miners/{row["worker"]}"]')).to_have_count(1)
    await expect(page.locator("#answers-table .pill.agreed")).to_have_count(len(record["agreeing"]))
    await screenshot(page, tmp_path / "job.png")

    # a miner's link opens its statement, whose totals are the ledger's
    await page.goto(harness.url + "/#/")
    honest = next(worker for worker in workers if worker == workers[0])
    await page.locator(f'#miners-table tr[data-worker="{honest}"] a').click()
    await expect(page.locator("#miner-title")).to_have_text(honest)
    statement = await get_json(harness, f"/v1/workers/{honest}/statement")
    ledger = await get_json(harness, "/v1/ledger")
    assert statement["pending"] == ledger["pending_by_worker"].get(honest, "0")
    assert sum(int(c["amount"]) for c in statement["credits"]) == int(statement["credited"])
    assert sum(int(p["amount"]) for p in statement["payouts"]) == int(statement["paid"])
    assert statement["next_cursor"] is None
    await expect(page.locator("#statement-credited span")).to_have_attribute(
        "title", f"{statement['credited']} wei"
    )
    await expect(page.locator("#statement-paid span")).to_have_attribute("title", f"{statement['paid']} wei")
    await expect(page.locator("#credits-table tbody tr")).to_have_count(len(statement["credits"]))
    await expect(page.locator("#payouts-table tbody tr")).to_have_count(len(statement["payouts"]))
    await screenshot(page, tmp_path / "statement.png")
    assert watched.errors == []
    await context.close()


async def test_the_dashboard_fits_a_phone(harness: Harness, browser: Browser, tmp_path: Path) -> None:
    await busy_network(harness)
    context = await browser.new_context(
        viewport={"width": 390, "height": 844}, is_mobile=True, has_touch=True
    )
    watched = await open_dashboard(context, harness)
    page = watched.page
    await expect(page.locator("#miners-table tbody tr")).to_have_count(4)
    await expect(page.locator("#chart-verdicts svg")).to_be_visible()
    overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the phone"
    await screenshot(page, tmp_path / "phone.png")
    assert watched.errors == []
    await context.close()


async def test_with_operator_keys_the_browser_logs_in_with_basic_authentication(
    make_harness: Any, browser: Browser
) -> None:
    harness = await make_harness(api_keys=["client"], admin_api_keys=["operator"])
    await harness.connected("honest", "honest", "honest")
    status, body = await post(
        harness,
        "/v1/jobs",
        {"model": "test-model", "task": "chat", "input": CHAT},
        Authorization="Bearer client",
    )
    assert status == 200, body
    context = await browser.new_context(http_credentials={"username": "operator", "password": "operator"})
    watched = await open_dashboard(context, harness)
    page = watched.page
    await expect(page.locator("#miners-table tbody tr")).to_have_count(3)
    await expect(page.locator("#live")).to_have_text("live")
    await page.locator("#jobs-table a.job-link").first.click()
    await expect(page.locator("#answers-table tbody tr")).to_have_count(3)
    token = base64.b64encode(b"operator:operator").decode()
    assert (await get_json(harness, "/v1/ledger", Authorization=f"Basic {token}"))["credited"] != "0"
    assert watched.errors == []
    await context.close()
