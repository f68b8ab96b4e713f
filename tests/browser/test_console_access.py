"""The console is usable from the keyboard and passes axe-core's WCAG 2 A/AA checks on every page.

axe-core comes from the npm registry (pinned, checked: ``scripts/bootstrap
--browser``) and is run inside each page as Chromium shows it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from conftest import Console, Page
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.keys import Keys

pytestmark = pytest.mark.integration

AXE = Path(
    os.environ.get(
        "CONTROLPLANE_AXE", Path(__file__).resolve().parents[2] / ".venv/share/axe-core/axe.min.js"
    )
)
PAGES = {
    "models": ("#/models", "model-row"),
    "model": ("#/models/mlp", "version-row"),
    "traffic": ("#/traffic", "pool-row"),
    "rollouts": ("#/rollouts", "start-form"),
    "audit": ("#/audit", "audit-row"),
}


def _axe_violations(page: Page) -> list[dict[str, object]]:
    if not AXE.is_file():
        pytest.fail(f"{AXE} missing: run scripts/bootstrap --browser")
    page.driver.execute_script(AXE.read_text(encoding="utf-8"))
    result = page.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        axe.run(document, {runOnly: {type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"]}})
           .then((r) => done({passed: r.passes.length, violations: r.violations.map((v) => ({
               id: v.id, impact: v.impact, help: v.help,
               nodes: v.nodes.slice(0, 3).map((n) => n.target.join(" "))}))}))
           .catch((e) => done({passed: 0, violations: [{id: "axe-error", help: String(e)}]}));
        """
    )
    # A checker that checked nothing would pass every page.
    assert result["passed"] >= 10, result
    return list(result["violations"])


@pytest.mark.parametrize("name", list(PAGES))
def test_every_page_passes_the_wcag_a_and_aa_checks(page: Page, name: str) -> None:
    route, shown = PAGES[name]
    page.login("operator")
    page.go(route)
    page.find(shown)
    violations = _axe_violations(page)
    assert violations == [], json.dumps(violations, indent=2)


def test_the_login_page_passes_the_wcag_a_and_aa_checks(page: Page) -> None:
    page.open()
    page.find("login-form")
    violations = _axe_violations(page)
    assert violations == [], json.dumps(violations, indent=2)


def test_signing_in_and_moving_between_pages_works_from_the_keyboard_alone(
    page: Page, console: Console
) -> None:
    page.open()
    page.find("login-form")
    keys = ActionChains(page.driver)
    keys.send_keys(Keys.TAB).perform()  # the first stop is the token field
    active = page.driver.switch_to.active_element
    assert active.get_attribute("id") == "token"
    keys.send_keys(console.tokens["operator"], Keys.ENTER).perform()
    page.find("who")

    # From the top of the page: skip link, then the navigation links in order.
    page.driver.execute_script("document.activeElement.blur(); window.scrollTo(0, 0)")
    labels = []
    for _ in range(5):
        ActionChains(page.driver).send_keys(Keys.TAB).perform()
        labels.append(page.driver.switch_to.active_element.text)
    assert labels == ["Skip to content", "Models", "Traffic", "Rollouts", "Audit"]
    ActionChains(page.driver).send_keys(Keys.ENTER).perform()
    page.find("audit-filters")
    assert page.driver.execute_script("return location.hash") == "#/audit"


def test_a_confirmation_dialog_opens_on_cancel_and_escape_closes_it_untouched(
    page: Page, console: Console
) -> None:
    rollouts_before = len(console.services.engine.list())
    page.login("operator")
    page.go("#/models/mlp")
    page.find("rollback").click()
    dialog = page.find("rollback-dialog")
    assert dialog.get_attribute("open") is not None
    # Focus starts on Cancel, so an Enter pressed by habit does nothing harmful.
    assert page.driver.switch_to.active_element.text == "Cancel"
    ActionChains(page.driver).send_keys(Keys.ESCAPE).perform()
    page.until(lambda: page.find("rollback-dialog").get_attribute("open") is None, what="dialog closed")
    assert len(console.services.engine.list()) == rollouts_before
