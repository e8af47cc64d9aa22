"""Fixtures of the browser tier: one server, one Chromium and one page server per module."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.browser.driver import Browser, Page, PageServer, missing_requirements
from tests.e2e.conftest import assert_clean_exit
from tests.e2e.harness import ServerProcess, make_token, start_server


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/browser/" in str(item.fspath):
            item.add_marker(pytest.mark.browser)
            item.add_marker(pytest.mark.sdk)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("server"))
    yield proc
    assert_clean_exit(proc)


@pytest.fixture(scope="module")
def page_server() -> Iterator[PageServer]:
    pages = PageServer()
    yield pages
    pages.close()


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    # The tier needs what tests/run.sh installs; missing parts are a failure, not a skip.
    problem = missing_requirements()
    assert problem is None, problem
    directory = tmp_path_factory.mktemp("browser")
    chromium = Browser(directory, directory / "browser.log")
    yield chromium
    chromium.close()


class Pages:
    """Opens named pages joined to a room, and closes them after the test."""

    def __init__(self, browser: Browser, page_server: PageServer, server: ServerProcess):
        self.browser = browser
        self.page_server = page_server
        self.server = server
        self.opened: list[Page] = []

    async def open(self, name: str) -> Page:
        page = await self.browser.open(name, self.page_server.url)
        self.opened.append(page)
        return page

    async def join(self, identity: str, room: str, **options: object) -> Page:
        page = await self.open(identity)
        token = make_token(identity, room)
        page.joined = await page.lk("connect", self.server.ws_url, token, options)
        return page


@pytest.fixture
async def pages(
    browser: Browser, page_server: PageServer, server: ServerProcess
) -> AsyncIterator[Pages]:
    opened = Pages(browser, page_server, server)
    try:
        yield opened
    finally:
        for page in opened.opened:
            try:
                await page.lk("disconnect", within_s=10)
            finally:
                await page.close()
