"""The console's pure functions, run as Chromium runs them (the modules imported into the page).

These are the rules the pages rest on: what differs between two versions,
how traffic points line up into chart columns, what a rollout's timeline
holds, what the start form sends, which live audit events a filter keeps.
"""

from __future__ import annotations

from typing import Any

import pytest
from conftest import Page

pytestmark = pytest.mark.integration


def _run(page: Page, module: str, body: str) -> Any:
    """Import ``/ui/js/<module>`` in the page as ``m`` and return what ``body`` returns."""
    page.open()
    page.find("login-form")
    return page.driver.execute_async_script(
        f"""
        const done = arguments[arguments.length - 1];
        import("/ui/js/{module}").then(async (m) => {{ {body} }})
            .then(done, (e) => done({{error: String(e)}}));
        """
    )


def test_two_manifests_differ_by_added_removed_and_changed_files_only(page: Page) -> None:
    rows = _run(
        page,
        "diff.js",
        """return m.diffManifests(
            [{path: "config.pbtxt", size: 10, sha256: "a"}, {path: "1/model.onnx", size: 100, sha256: "b"},
             {path: "old.txt", size: 1, sha256: "c"}],
            [{path: "config.pbtxt", size: 10, sha256: "a"}, {path: "1/model.onnx", size: 120, sha256: "d"},
             {path: "labels.txt", size: 2, sha256: "e"}]).map((r) => [r.path, r.change]);""",
    )
    assert rows == [["1/model.onnx", "changed"], ["labels.txt", "added"], ["old.txt", "removed"]]


def test_two_interfaces_differ_by_tensor_and_by_batch_size(page: Page) -> None:
    texts = _run(
        page,
        "diff.js",
        """const t = (name, dims, type = "FP32") => ({name, data_type: type, dims});
        return m.diffInterfaces(
            {backend: "onnxruntime", max_batch_size: 64, inputs: [t("INPUT0", [16])],
             outputs: [t("OUTPUT0", [4])]},
            {backend: "onnxruntime", max_batch_size: 32, inputs: [t("INPUT0", [16], "FP16")],
             outputs: [t("OUTPUT0", [4]), t("SCORES", [4])]}).map((d) => d.change + ": " + d.text);""",
    )
    assert texts == [
        "changed: max batch size 64 → 32",
        "changed: input changed: INPUT0 FP32 [16] → INPUT0 FP16 [16]",
        "added: output added: SCORES FP32 [4]",
    ]


def test_traffic_points_of_one_sampling_round_share_a_row_and_a_missing_pool_is_a_gap(page: Page) -> None:
    columns = _run(
        page,
        "traffic.js",
        """const p = (at, pool, v) => ({at, pool, requests_per_second: v});
        const points = [p(1, "blue", 10), p(1, "green", 0), p(2, "blue", 12), p(3, "blue", 11),
                        p(3, "green", 4)];
        return m.columns(points, ["blue", "green"], "requests_per_second");""",
    )
    assert columns == [[1, 2, 3], [10, 12, 11], [0, None, 4]]


def test_a_rollout_timeline_holds_weights_per_event_and_measurements_per_analysed_step(page: Page) -> None:
    line = _run(
        page,
        "rollout.js",
        """const at = (s) => new Date(s * 1000).toISOString();
        return m.timeline({
            active: true, source_pool: "blue", target_pool: "green", live_weights: {blue: 50, green: 50},
            events: [
              {at: at(100), weights: {}, measurements: {}},
              {at: at(101), weights: {blue: 90, green: 10}, measurements: {}},
              {at: at(111), weights: {blue: 90, green: 10},
               measurements: {requests: 40, error_rate: 0.025, p99_ms: 7.5, passed: false}},
              {at: at(112), weights: {blue: 50, green: 50}, measurements: {}},
            ]}, 120);""",
    )
    assert line["pools"] == ["blue", "green"]
    assert line["span"] == [100, 120]
    assert line["weights"] == [[101, 111, 112, 120], [90, 90, 50, 50], [10, 10, 50, 50]]
    assert line["errors"] == [[111], [0.025]]
    assert line["p99"] == [[111], [7.5]]


def test_the_start_form_sends_percent_gates_as_fractions_and_refuses_steps_outside_0_to_100(
    page: Page,
) -> None:
    answer = _run(
        page,
        "start.js",
        """const form = {model: " mlp ", version: "challenger", strategy: "canary", steps: "10, 50 100",
                      stepSeconds: "5", bakeSeconds: "", maxErrorPercent: "2.5", maxP99Ms: "",
                      minRequests: "20"};
        let refused = null;
        try { m.rolloutRequest({...form, steps: "10, 150"}); } catch (e) { refused = e.message; }
        const numbered = m.rolloutRequest({...form, version: "2"}).version;
        return {body: m.rolloutRequest(form), numbered, refused};""",
    )
    assert answer["body"] == {
        "model": "mlp",
        "version": "challenger",
        "strategy": "canary",
        "steps": [10, 50, 100],
        "step_seconds": 5,
        "bake_seconds": 60,
        "gates": {"min_requests": 20, "max_error_rate": 0.025},
    }
    assert answer["numbered"] == 2
    assert "between 0 and 100" in answer["refused"]


def test_a_live_audit_event_is_kept_only_when_it_matches_the_filters_as_the_api_would(page: Page) -> None:
    kept = _run(
        page,
        "audit.js",
        """const e = (actor, action, target) => ({actor, action, target});
        const events = [e("ops", "rollout.abort", "mlp/2"), e("ops", "push", "mlp/3"),
                        e("ci", "rollout.create", "mlp/2"), e("ops", "rollout.transition", "mlpx/1"),
                        e("ops", "pool.release", "green/mlp"), e("ops", "alias.set", "mlp@challenger")];
        const filters = {model: "mlp", actor: "ops", action: "rollout.*"};
        return [events.filter((x) => m.matches(x, filters)).map((x) => x.action),
                events.filter((x) => m.matches(x, {model: "mlp", actor: "", action: ""})).length];""",
    )
    assert kept == [["rollout.abort"], 5]
