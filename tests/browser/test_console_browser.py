"""The web console in headless Chromium against a real stack (Triton, HAProxy, SQLite, the API).

An operator logs in, sees ``mlp`` and its versions, starts a canary from the
page while clients send requests through the proxy, watches the weights move,
aborts it and finds it in the audit log; a viewer sees no action button and
the API refuses the action when it is forged. Each page is photographed at a
fixed size (see conftest for where the pictures go).
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from conftest import Console, Page
from rollout_load import Load
from selenium.webdriver.common.by import By

from controlplane.domain.auth import Role
from controlplane.domain.rollouts import RolloutState
from controlplane.registry import token_store

pytestmark = pytest.mark.integration


def _weight(page: Page, pool: str) -> int | None:
    weight = page.driver.execute_script(
        "const chip = document.querySelector(`[data-testid='live-weights'] [data-pool='${arguments[0]}']`);"
        "return chip ? chip.dataset.weight : null",
        pool,
    )
    return None if weight is None else int(weight)


def _rollout_id(page: Page) -> int:
    page.until(lambda: page.driver.execute_script("return location.hash").startswith("#/rollouts/"))
    return int(page.driver.execute_script("return location.hash").rsplit("/", 1)[1])


def test_an_operator_logs_in_and_sees_the_model_its_versions_and_their_differences(page: Page) -> None:
    page.login("operator")
    assert "operator" in page.find("who").text and "admin" in page.find("who").text
    row = page.find("model-row")
    assert row.get_attribute("data-model") == "mlp"
    page.until(lambda: page.find("production").text.startswith("v1"), what="production v1 shown")
    page.until(lambda: "ok" in page.find("health").text, what="health ok")
    page.screenshot("models")

    page.find("model-link").click()
    page.until(lambda: len(page.all("version-row")) == 2, what="two versions listed")
    versions = [r.get_attribute("data-version") for r in page.all("version-row")]
    assert versions == ["2", "1"]
    page.all("version-open")[0].click()
    detail = page.find("version-detail")
    page.until(lambda: "INPUT0" in detail.text, what="interface shown")
    assert re.search(r"\b[0-9a-f]{64}\b", detail.text), "the full digest"
    assert "accuracy" in page.find("versions").text
    assert "Start a rollout" in detail.text
    diff = page.find("compare")
    page.until(lambda: "model.onnx" in diff.text, what="manifest difference shown")
    page.screenshot("model")
    assert page.console_errors() == []


def test_a_canary_started_from_the_console_shows_moving_weights_then_its_abort_and_audit(
    page: Page, console: Console
) -> None:
    engine = console.services.engine
    page.login("operator")
    with Load(console.grpc_url, console.outputs, threads=2) as load:
        page.go("#/traffic")
        page.until(lambda: page.find("pool-row").is_displayed())
        blue_rate = '[data-pool="blue"] [data-testid="pool-rps"]'
        page.until(
            lambda: (
                float(page.driver.find_element(By.CSS_SELECTOR, blue_rate).get_attribute("data-value") or 0)
                > 0
            ),
            what="blue's request rate",
        )
        time.sleep(4)  # a few points in the charts
        page.screenshot("traffic")

        page.go("#/rollouts")
        for field, value in (
            ("model", "mlp"),
            ("version", "2"),
            ("steps", "30, 60, 100"),
            ("stepSeconds", "8"),
            ("bakeSeconds", "0"),
            ("minRequests", "5"),
        ):
            box = page.find(f"start-{field}")
            box.clear()
            box.send_keys(value)
        page.confirm("start")
        rollout_id = _rollout_id(page)
        # The page polls the API: the canary's first step shows as weight on green.
        page.until(lambda: (_weight(page, "green") or 0) > 0, timeout=60, what="green gets weight")
        assert _weight(page, "blue") == 100 - (_weight(page, "green") or 0)
        # The first step's analysis lands in the timeline and the events; the second step starts.
        page.until(lambda: (_weight(page, "green") or 0) >= 60, timeout=60, what="the second step")
        page.until(lambda: "passed" in page.find("rollout-events").text, what="the first step's verdict")
        page.screenshot("rollout")

        page.confirm("abort")
        page.until(
            lambda: page.find("rollout-state").text in ("rolled back", "failed"), timeout=60, what="aborted"
        )
        page.until(lambda: _weight(page, "green") == 0, what="weight back on blue")
        done = engine.wait(rollout_id, 30)
    assert done.state is RolloutState.ROLLED_BACK, done.reason
    assert load.failures == []

    page.go("#/audit")
    page.find("filter-action").send_keys("rollout.*")
    page.find("filter-apply").click()
    page.until(
        lambda: any(action == "rollout.abort" for action, _text in page.rows("audit-row", "data-action")),
        what="the abort request in the audit log",
    )
    rows = page.rows("audit-row", "data-action")
    actions = {action for action, _text in rows}
    assert all(a.startswith("rollout.") for a in actions), actions
    assert {"rollout.create", "rollout.transition"} <= actions
    abort = next(text for action, text in rows if action == "rollout.abort")
    assert "operator" in abort
    page.screenshot("audit")
    assert page.console_errors() == []


def test_a_viewer_sees_no_action_button_and_a_forged_action_is_refused(page: Page, console: Console) -> None:
    last = max(r.id for r in console.services.engine.list())
    page.login("watcher")
    assert "viewer" in page.find("who").text
    page.go("#/rollouts")
    page.find("rollouts")
    assert page.all("start-form") == []
    page.go(f"#/rollouts/{last}")
    page.find("rollout-events")
    assert page.all("actions") == [] and page.all("abort") == [] and page.all("promote") == []
    page.go("#/models/mlp")
    page.find("versions")
    assert page.all("rollback") == []
    page.all("version-open")[0].click()
    page.find("version-detail")
    assert page.all("start-form") == []

    # What a viewer could still try: the calls the buttons would make, sent from the page by hand.
    forged = page.driver.execute_async_script(
        """
        const done = arguments[arguments.length - 1];
        const headers = {Authorization: `Bearer ${sessionStorage.getItem("controlplane.token")}`,
                         "Content-Type": "application/json"};
        const send = (path, body) => fetch(path, {method: "POST", headers, body: JSON.stringify(body)})
            .then(async (r) => ({status: r.status, body: await r.json()}));
        Promise.all([
            send("/v1/rollouts", {model: "mlp", version: 2, strategy: "bluegreen"}),
            send("/v1/models/mlp/rollback", {}),
        ]).then(done);
        """
    )
    assert [f["status"] for f in forged] == [403, 403]
    assert all(f["body"]["error"]["code"] == "forbidden" for f in forged), forged
    assert console.services.router.weights() == {"blue": 100, "green": 0}


def test_markup_in_a_label_is_shown_as_text_and_never_runs(page: Page, console: Console) -> None:
    payload = '<img src=x onerror="window.__pwned=1"><script>window.__pwned=2</script>'
    changed = httpx.patch(
        f"{console.url}/v1/models/mlp/versions/2/metadata",
        json={"labels": {"note": payload}},
        headers={"Authorization": f"Bearer {console.tokens['operator']}"},
    )
    assert changed.status_code == 200, changed.text
    page.login("operator")
    page.go("#/models/mlp")
    page.find("versions")
    page.all("version-open")[0].click()
    detail = page.find("version-detail")
    page.until(lambda: "note=" in detail.text, what="the label shown")
    assert payload in detail.text
    assert detail.find_elements(By.TAG_NAME, "img") == []
    assert page.driver.execute_script("return window.__pwned === undefined")


def test_a_first_load_is_small_fast_and_all_from_the_control_plane(page: Page, console: Console) -> None:
    page.login("operator")  # the token is now in this tab's session storage
    page.driver.execute_cdp_cmd("Network.enable", {})
    page.driver.execute_cdp_cmd("Network.setCacheDisabled", {"cacheDisabled": True})
    page.driver.get(f"{console.url}/ui/#/models")
    page.find("model-row")
    ready_ms = page.driver.execute_script("return performance.now()")
    timing = page.driver.execute_script(
        """
        const nav = performance.getEntriesByType("navigation")[0];
        const resources = performance.getEntriesByType("resource");
        return {
          dom_interactive: nav.domInteractive, loaded: nav.loadEventEnd,
          transferred: nav.transferSize + resources.reduce((s, r) => s + r.transferSize, 0),
          decoded: nav.decodedBodySize + resources.reduce((s, r) => s + r.decodedBodySize, 0),
          urls: resources.map((r) => r.name),
        };
        """
    )
    foreign = [u for u in timing["urls"] if not u.startswith(console.url)]
    assert foreign == []
    assert timing["transferred"] > 0
    print(
        f"\nconsole first load: {timing['transferred'] / 1024:.1f} KiB transferred"
        f" ({timing['decoded'] / 1024:.1f} KiB decoded, {len(timing['urls'])} requests after the page);"
        f" DOM interactive {timing['dom_interactive']:.0f} ms, load {timing['loaded']:.0f} ms,"
        f" models table shown {ready_ms:.0f} ms after navigation"
    )


def test_a_revoked_token_signs_the_console_out_and_a_wrong_one_never_signs_in(
    page: Page, console: Console
) -> None:
    with console.services.db.transaction() as session:
        console.tokens["leaver"], _info = token_store.create_token(
            session, name="leaver", role=Role.DEPLOYER, created_by="tests"
        )
    page.login("leaver")
    with console.services.db.transaction() as session:
        token_store.revoke_token(session, name="leaver", revoked_by="tests")
    page.go("#/rollouts")
    notice = page.find("login-form")
    page.until(lambda: "Signed out" in notice.text, what="the sign-out notice")
    assert page.driver.execute_script("return sessionStorage.getItem('controlplane.token')") is None

    page.find("token").send_keys("cp_not-a-token")
    page.find("login").click()
    assert "unknown or revoked" in page.find("error").text
    assert page.all("who") == []
