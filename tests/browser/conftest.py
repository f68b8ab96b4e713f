"""A real stack for the console's browser tests, and headless Chromium to drive it.

The stack is the one ``controlplane up`` runs: two tritonservers (blue, green)
behind HAProxy, a SQLite registry, the REST API and the console served by
uvicorn on a loopback port. ``mlp`` versions 1 and 2 are pushed and version 1
serves. Chromium and ChromeDriver are Debian's (``scripts/bootstrap --browser``).

Screenshots are written under the test's temporary folder; with
``CONTROLPLANE_UPDATE_SCREENSHOTS=1`` they replace the ones in ``docs/console/``.
"""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from rollout_load import FIXED_INPUT
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait
from triton_helpers import load_examples_module

from controlplane.api.app import create_app
from controlplane.api.auth import Authenticator
from controlplane.api.server import server_config
from controlplane.artifacts.archive import pack_directory
from controlplane.domain.auth import Role
from controlplane.domain.models import VersionMetadata
from controlplane.registry import token_store
from controlplane.runtime.ports import free_ports
from controlplane.runtime.wiring import Services, api_services, local_services
from controlplane.settings import Settings

CHROMIUM = Path(os.environ.get("CONTROLPLANE_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("CONTROLPLANE_CHROMEDRIVER", "/usr/bin/chromedriver"))
WINDOW = (1280, 800)
DOCS_SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "console"

examples = load_examples_module()


@dataclass
class Console:
    """The running stack: its URLs, services, tokens by name and reference outputs of v1 and v2."""

    url: str
    grpc_url: str
    services: Services
    tokens: dict[str, str]
    outputs: dict[str, np.ndarray]
    shots: Path


def _serve(app: object, settings: Settings) -> tuple[uvicorn.Server, threading.Thread]:
    server = uvicorn.Server(server_config(app, settings))  # type: ignore[arg-type]
    thread = threading.Thread(target=server.run, name="console-api", daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the API did not start")
        time.sleep(0.02)
    return server, thread


@pytest.fixture(scope="session")
def console(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Console]:
    root = tmp_path_factory.mktemp("console")
    api_port, grpc_port, http_port = free_ports(3)
    settings = Settings(state_dir=root / "state", api_port=api_port, grpc_port=grpc_port, http_port=http_port)
    with local_services(settings, pool_names=("blue", "green")) as (_stack, services):
        folders = {f"v{seed}": examples.build_mlp(root / f"v{seed}", seed=seed) for seed in (1, 2)}
        for name, folder in folders.items():
            archive = pack_directory(folder, root / f"{name}.tar.gz")
            services.registry.push(
                model="mlp",
                archive=archive,
                metadata=VersionMetadata(
                    metrics={"accuracy": 0.91 if name == "v1" else 0.93}, api_version="1.0"
                ),
            )
        services.deployer.deploy("mlp", 1)
        services.reconciler.run_once()
        tokens: dict[str, str] = {}
        with services.db.transaction() as session:
            for name, role in (("operator", Role.ADMIN), ("watcher", Role.VIEWER)):
                tokens[name], _info = token_store.create_token(
                    session, name=name, role=role, created_by="tests"
                )
        app = create_app(
            api_services(services),
            max_upload_bytes=settings.max_upload_bytes,
            auth=Authenticator(services.db, required=True),
        )
        server, thread = _serve(app, settings)
        outputs = {
            name: examples.reference_outputs(folder, {"INPUT0": FIXED_INPUT})["OUTPUT0"]
            for name, folder in folders.items()
        }
        shots = root / "screenshots"
        shots.mkdir()
        try:
            yield Console(
                f"http://127.0.0.1:{api_port}", f"127.0.0.1:{grpc_port}", services, tokens, outputs, shots
            )
        finally:
            server.should_exit = True
            thread.join(10)
            if os.environ.get("CONTROLPLANE_UPDATE_SCREENSHOTS") == "1":
                DOCS_SCREENSHOTS.mkdir(parents=True, exist_ok=True)
                for shot in shots.glob("*.png"):
                    shutil.copy2(shot, DOCS_SCREENSHOTS / shot.name)


def _driver(profile: Path) -> WebDriver:
    missing = [str(p) for p in (CHROMIUM, CHROMEDRIVER) if not p.exists()]
    if missing:
        pytest.fail(
            f"{', '.join(missing)} missing: run scripts/bootstrap --browser (chromium, chromium-driver)"
        )
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in (
        "--headless=new",
        "--no-sandbox",  # root in a container: Chromium's sandbox needs user namespaces it may not get
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--force-device-scale-factor=1",
        "--hide-scrollbars",
        f"--window-size={WINDOW[0]},{WINDOW[1]}",
        f"--user-data-dir={profile}",
        "--lang=en-GB",
    ):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(options=options, service=Service(executable_path=str(CHROMEDRIVER)))


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[WebDriver]:
    driver = _driver(tmp_path / "profile")
    driver.set_window_size(WINDOW[0], WINDOW[1] + 200)
    # The viewport itself, not the window around it: every screenshot is exactly this size.
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": WINDOW[0], "height": WINDOW[1], "deviceScaleFactor": 1, "mobile": False},
    )
    try:
        yield driver
    finally:
        driver.quit()


class Page:
    """The console in one browser: log in, go to a page, wait for what it shows, take screenshots."""

    def __init__(self, driver: WebDriver, console: Console) -> None:
        self.driver = driver
        self.console = console

    def open(self, route: str = "") -> None:
        self.driver.get(f"{self.console.url}/ui/{route}")

    def login(self, token_name: str) -> None:
        self.open()
        self.find("token").send_keys(self.console.tokens[token_name])
        self.find("login").click()
        self.wait_for("who")

    def go(self, route: str) -> None:
        self.driver.execute_script("location.hash = arguments[0]", route)

    def find(self, testid: str) -> WebElement:
        return self.wait_for(testid)

    def all(self, testid: str) -> list[WebElement]:
        return self.driver.find_elements(By.CSS_SELECTOR, f'[data-testid="{testid}"]')

    def wait_for(self, testid: str, timeout: float = 20) -> WebElement:
        selector = f'[data-testid="{testid}"]'
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda d: next(iter(d.find_elements(By.CSS_SELECTOR, selector)), None),
            f"no element {selector} on {self.driver.current_url}",
        )

    def until(self, predicate, timeout: float = 30, what: str = "") -> object:  # type: ignore[no-untyped-def]
        # The pages re-render as they poll: an element read a moment ago may be gone; look again.
        return WebDriverWait(
            self.driver, timeout, poll_frequency=0.1, ignored_exceptions=(StaleElementReferenceException,)
        ).until(lambda _d: predicate(), what)

    def rows(self, testid: str, attribute: str) -> list[tuple[str, str]]:
        """Each ``testid`` element's ``attribute`` and text, read in one go (no stale element between)."""
        return [
            (str(a), str(t))
            for a, t in self.driver.execute_script(
                "return [...document.querySelectorAll(`[data-testid='${arguments[0]}']`)]"
                ".map((e) => [e.getAttribute(arguments[1]), e.innerText])",
                testid,
                attribute,
            )
        ]

    def confirm(self, testid: str) -> None:
        """Press the button, then the dialog's confirming button."""
        self.find(testid).click()
        self.wait_for(f"{testid}-confirm").click()

    def screenshot(self, name: str) -> Path:
        path = self.console.shots / f"{name}.png"
        self.driver.save_screenshot(str(path))
        return path

    def console_errors(self) -> list[str]:
        """Script errors the page logged (not a 404 of an optional resource: Chromium logs those too)."""
        return [
            e["message"]
            for e in self.driver.get_log("browser")
            if e["level"] == "SEVERE" and "Failed to load resource" not in e["message"]
        ]


@pytest.fixture
def page(browser: WebDriver, console: Console) -> Page:
    return Page(browser, console)
