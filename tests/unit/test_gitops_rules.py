"""Rules of watched model folders: rollout.yaml, what is packed, what changed, which refs are followed."""

from __future__ import annotations

import pytest

from controlplane.api.rollouts import RolloutIn
from controlplane.domain.analysis import OnNoData
from controlplane.domain.gitops import (
    RolloutPolicy,
    changed_folders,
    check_branch,
    is_commit_id,
    is_packed,
    parse_rollout_policy,
)
from controlplane.domain.rollouts import Strategy
from controlplane.errors import InvalidInput
from controlplane.gitops.policy_file import load_policy

FILE = "mlp/rollout.yaml"


def _refusal(data: object) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        parse_rollout_policy(data, file=FILE, model="mlp")
    assert caught.value.code == "invalid_rollout_policy"
    assert caught.value.message.startswith(f"{FILE}: ")
    assert caught.value.details["file"] == FILE
    return caught.value


def test_a_policy_file_holds_the_settings_of_a_rollout_request() -> None:
    text = b"""
strategy: bluegreen
step_seconds: 0
bake_seconds: 5
allow_breaking: true
gates:
  min_requests: 0
  max_error_rate: 0.01
  on_no_data: promote
"""
    policy = load_policy(text, file=FILE, model="mlp")
    assert policy.strategy is Strategy.BLUEGREEN
    assert policy.steps is None
    assert (policy.step_seconds, policy.bake_seconds) == (0.0, 5.0)
    assert policy.gates.min_requests == 0
    assert policy.gates.max_error_rate == 0.01
    assert policy.gates.on_no_data is OnNoData.PROMOTE
    assert policy.gates.allow_breaking is True
    spec = policy.spec("mlp", 7)
    assert (spec.model, spec.version, spec.steps) == ("mlp", 7, (100,))


def test_an_empty_policy_file_takes_the_defaults_of_the_api() -> None:
    policy = load_policy(b"", file=FILE, model="mlp")
    defaults = RolloutIn(model="mlp", version=1)
    assert policy.strategy.value == defaults.strategy
    assert policy.step_seconds == defaults.step_seconds
    assert policy.bake_seconds == defaults.bake_seconds
    assert policy.spec("mlp", 1).steps == (10, 50, 100)


def test_the_request_a_policy_makes_is_one_the_api_accepts_unchanged() -> None:
    policy = parse_rollout_policy(
        {"strategy": "canary", "steps": [20, 100], "gates": {"max_p99_ms": 50}, "allow_breaking": True},
        file=FILE,
        model="mlp",
    )
    body = policy.as_request("mlp", 3)
    accepted = RolloutIn.model_validate(body).model_dump(mode="json")
    assert {key: accepted[key] for key in body if key != "gates"} == {
        k: v for k, v in body.items() if k != "gates"
    }
    assert {key: accepted["gates"][key] for key in body["gates"]} == body["gates"]
    assert body["allow_breaking"] is True
    assert "allow_breaking" not in body["gates"]
    assert body["steps"] == [20, 100]


def test_model_and_version_are_refused_because_the_folder_and_the_push_give_them() -> None:
    error = _refusal({"model": "other", "version": 3})
    assert "'model' is not set here" in error.message
    assert "'version' is not set here" in error.message


def test_unknown_settings_and_gates_are_named() -> None:
    error = _refusal({"stratgy": "canary", "gates": {"max_error": 0.1}})
    assert "unknown setting 'stratgy'" in error.message
    assert "unknown gate 'max_error'" in error.message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"strategy": "blue"}, "strategy must be one of bluegreen, canary, inplace"),
        ({"steps": "10,100"}, "steps must be a list of whole percentages"),
        ({"steps": [True, 100]}, "steps must be a list of whole percentages"),
        ({"step_seconds": "soon"}, "step_seconds must be a number of seconds"),
        ({"allow_breaking": "yes please"}, "allow_breaking must be true or false"),
        ({"gates": [1, 2]}, "gates must be a mapping"),
        (["strategy", "canary"], "the file must hold a mapping of settings, got list"),
    ],
)
def test_settings_of_the_wrong_type_are_refused(data: object, expected: str) -> None:
    assert expected in _refusal(data).message


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"steps": [50, 10, 100]}, "steps must strictly increase"),
        ({"steps": [10, 50]}, "the last step must be 100"),
        ({"strategy": "inplace", "steps": [50, 100]}, "the inplace strategy has no steps"),
        ({"step_seconds": 7200}, "step_seconds must be within 0..3600"),
        ({"gates": {"max_error_rate": 2}}, "max_error_rate must be a fraction between 0 and 1"),
        ({"gates": {"on_no_data": "shrug"}}, "on_no_data must be one of"),
    ],
)
def test_values_the_rollout_api_refuses_are_refused_by_the_same_rules(data: object, expected: str) -> None:
    error = _refusal(data)
    assert expected in error.message
    assert error.details["cause"] in ("invalid_rollout", "invalid_gates")


def test_gate_problems_are_all_named_at_once() -> None:
    error = _refusal({"gates": {"max_error_rate": 2, "min_requests": -1}})
    assert len(error.details["problems"]) == 2


def test_yaml_that_does_not_parse_names_the_file_and_the_line() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_policy(b"strategy: canary\nsteps: [10, 100\n", file=FILE, model="mlp")
    assert caught.value.code == "invalid_rollout_policy"
    assert caught.value.message.startswith(f"{FILE}: not valid YAML at line")


def test_yaml_tags_that_would_build_objects_are_refused() -> None:
    with pytest.raises(InvalidInput) as caught:
        load_policy(b"strategy: !!python/object/apply:os.system ['true']\n", file=FILE, model="mlp")
    assert "not valid YAML" in caught.value.message


def test_a_policy_file_that_is_not_utf8_is_refused() -> None:
    with pytest.raises(InvalidInput, match="not UTF-8 text"):
        load_policy(b"strategy: \xff\xfe", file=FILE, model="mlp")


def test_the_policy_file_and_dot_files_are_not_packed_but_the_model_files_are() -> None:
    assert is_packed("config.pbtxt")
    assert is_packed("1/model.onnx")
    assert is_packed("golden.npz")
    assert is_packed("1/rollout.yaml"), "only the folder's own policy file is the watcher's"
    assert not is_packed("rollout.yaml")
    assert not is_packed(".git/config")
    assert not is_packed("1/.model.onnx.swp")
    assert not is_packed(".hidden/model.onnx")


def test_changed_folders_are_the_new_ones_and_those_with_another_fingerprint() -> None:
    handled = {"a": "1", "b": "2", "gone": "3"}
    assert changed_folders(handled, {"a": "1", "b": "9", "c": "4"}) == ["b", "c"]
    assert changed_folders({}, {"z": "1", "y": "2"}) == ["y", "z"]
    assert changed_folders(handled, {"a": "1"}) == []


@pytest.mark.parametrize("name", ["main", "release/v2", "feature-x_1.0", "user+topic"])
def test_plain_branch_names_are_followed(name: str) -> None:
    assert check_branch(name) == name


@pytest.mark.parametrize(
    "name",
    [
        "--upload-pack=touch /tmp/x",
        "-b",
        "HEAD~1",
        "main^",
        "a..b",
        "main@{1}",
        "refs/heads/../x",
        "x.lock",
        "/abs",
        "trailing/",
        "with space",
        "new\nline",
        "",
    ],
)
def test_odd_refs_are_refused(name: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_branch(name)
    assert caught.value.code == "invalid_branch"


def test_only_full_hexadecimal_ids_are_commit_ids() -> None:
    assert is_commit_id("a" * 40)
    assert is_commit_id("0123456789abcdef" * 4)
    assert not is_commit_id("a" * 39)
    assert not is_commit_id("HEAD")
    assert not is_commit_id("A" * 40)


def test_a_default_policy_is_a_canary_with_the_api_defaults() -> None:
    assert RolloutPolicy().spec("mlp", 1).strategy is Strategy.CANARY
