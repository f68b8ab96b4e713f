"""The ``controlplane`` command.

``up`` and ``db`` act locally; the registry and deploy commands are clients
of the REST API of a running control plane (``--api`` or CONTROLPLANE_API_URL),
because the running stack owns the Triton pools. Every failure prints one
readable line on stderr and exits non-zero (1: refused, 2: unreachable).
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Annotated, Any, NoReturn

import httpx
import typer

app = typer.Typer(
    help="Triton Control Plane: model registry, safe ingest and deploys for Triton.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
db_app = typer.Typer(help="Database schema.", no_args_is_help=True)
app.add_typer(db_app, name="db")

ApiUrl = Annotated[
    str,
    typer.Option("--api", envvar="CONTROLPLANE_API_URL", help="REST API of the running control plane."),
]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print the API's JSON answer.")]
DEFAULT_API = "http://127.0.0.1:8000"


def fail(message: str, code: int = 1) -> NoReturn:
    """One line on stderr, then exit."""
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _request(method: str, api: str, path: str, **kwargs: Any) -> Any:
    token = os.environ.get("CONTROLPLANE_TOKEN")
    if token:
        kwargs["headers"] = {**kwargs.get("headers", {}), "Authorization": f"Bearer {token}"}
    try:
        with httpx.Client(base_url=api, timeout=httpx.Timeout(600.0, connect=5.0)) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        fail(f"cannot reach the control plane at {api}: {exc}", 2)
    try:
        body = response.json()
    except ValueError:
        body = None
    if response.status_code >= 400:
        error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        message = error.get("message") or response.text.strip() or response.reason_phrase
        fail(f"{message} ({error.get('code', response.status_code)})")
    return body


def _print_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=True))


ModelRef = Annotated[str, typer.Argument(help="Model name, or model@alias for the version an alias names.")]
OptionalVersion = Annotated[int | None, typer.Argument(help="Version number (not with model@alias).")]


def _version_ref(model: str, version: int | None) -> tuple[str, int | str]:
    """``mlp 2`` -> (mlp, 2); ``mlp@challenger`` -> (mlp, challenger); fails on both or neither."""
    name, sep, alias = model.partition("@")
    if sep:
        if version is not None:
            fail(f"give {model} or a version number, not both")
        if not name or not alias:
            fail(f"{model!r} is not of the form model@alias")
        return name, alias
    if version is None:
        fail(f"give a version number of {model}, or an alias as {model}@ALIAS")
    return name, version


def _resolved_version(api: str, model: str, version: int | None) -> tuple[str, int]:
    """The model and version number named by ``model [version]`` or ``model@alias`` (asked of the API)."""
    name, ref = _version_ref(model, version)
    if isinstance(ref, int):
        return name, ref
    return name, int(_request("GET", api, f"/v1/models/{name}/aliases/{ref}")["version"])


# -- the embedded stack ----------------------------------------------------------------


@app.command()
def up(
    state_dir: Annotated[
        Path | None, typer.Option(help="Where registry, artifacts and pools live [CONTROLPLANE_STATE_DIR].")
    ] = None,
    api_port: Annotated[int | None, typer.Option(help="REST API port [CONTROLPLANE_API_PORT].")] = None,
    grpc_port: Annotated[
        int | None, typer.Option(help="Triton gRPC through the proxy [CONTROLPLANE_GRPC_PORT].")
    ] = None,
    http_port: Annotated[
        int | None, typer.Option(help="Triton HTTP through the proxy [CONTROLPLANE_HTTP_PORT].")
    ] = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on [CONTROLPLANE_HOST].")] = None,
    database_url: Annotated[
        str | None, typer.Option(help="SQLAlchemy URL [CONTROLPLANE_DATABASE_URL]; default SQLite.")
    ] = None,
    log_format: Annotated[
        str | None,
        typer.Option(help="text, or json: a JSON object per line [CONTROLPLANE_LOG_FORMAT]."),
    ] = None,
    log_level: Annotated[
        str | None, typer.Option(help="debug, info, warning or error [CONTROLPLANE_LOG_LEVEL].")
    ] = None,
) -> None:
    """Start the embedded stack: Triton, HAProxy and the REST API, until Ctrl-C or SIGTERM."""
    from controlplane.runtime.embedded import run_embedded
    from controlplane.settings import Settings

    overrides: dict[str, Any] = {
        "state_dir": state_dir,
        "api_port": api_port,
        "grpc_port": grpc_port,
        "http_port": http_port,
        "host": host,
        "database_url": database_url,
        "log_format": log_format,
        "log_level": log_level,
    }
    try:
        settings = Settings(**{k: v for k, v in overrides.items() if v is not None})
    except ValueError as exc:
        fail(str(exc).replace("\n", " "))
    from controlplane.errors import ControlPlaneError

    try:
        run_embedded(settings)
    except ControlPlaneError as exc:
        fail(f"{exc.message} ({exc.code})")


# -- registry and deploys over the API --------------------------------------------------


@app.command()
def push(
    folder: Annotated[
        Path, typer.Argument(help="A Triton model folder: config.pbtxt and one version directory.")
    ],
    model: Annotated[str, typer.Option("--model", "-m", help="Model name in the registry.")],
    label: Annotated[list[str] | None, typer.Option(help="name=value, repeatable.")] = None,
    metric: Annotated[list[str] | None, typer.Option(help="name=number, repeatable.")] = None,
    api_version: Annotated[str | None, typer.Option(help="API version the model is compatible with.")] = None,
    signature: Annotated[
        Path | None,
        typer.Option(help="model-signing bundle of the folder (kept outside it), verified and recorded."),
    ] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Upload a model folder as a new version (and its signature) and print its number."""
    from controlplane.artifacts.archive import pack_directory
    from controlplane.errors import ControlPlaneError

    if not folder.is_dir():
        fail(f"{folder} is not a directory")
    params: list[tuple[str, str]] = [("label", x) for x in label or []] + [
        ("metric", x) for x in metric or []
    ]
    if api_version:
        params.append(("api_version", api_version))
    with tempfile.TemporaryDirectory(prefix="controlplane-push-") as tmp:
        archive = Path(tmp) / "model.tar.gz"
        try:
            pack_directory(folder, archive)
        except ControlPlaneError as exc:
            fail(exc.message)
        with open(archive, "rb") as body:
            result = _request(
                "POST",
                api,
                f"/v1/models/{model}/versions",
                params=params,
                content=body,
                headers={"content-type": "application/gzip"},
            )
    if signature is not None:
        if not signature.is_file():
            fail(f"signature file {signature} does not exist")
        signed = _request(
            "PUT",
            api,
            f"/v1/models/{model}/versions/{result['version']}/signature",
            content=signature.read_bytes(),
            headers={"content-type": "application/json"},
        )
        result["signing"] = signed
    if as_json:
        _print_json(result)
        return
    what = "pushed" if result["created"] else "already registered (same content):"
    typer.echo(f"{what} {result['model']} version {result['version']} sha256:{result['digest']}")
    if signature is not None:
        identity = result["signing"]["identity"]
        who = identity.get("key_id") or identity.get("cert_fingerprint") or identity.get("oidc_identity")
        typer.echo(f"signature verified ({result['signing']['method']}, signer {who})")


@app.command()
def deploy(
    model: ModelRef,
    version: OptionalVersion = None,
    pool: Annotated[str | None, typer.Option(help="Pool to serve on (default: the stack's pool).")] = None,
    allow_breaking: Annotated[
        bool,
        typer.Option(
            "--allow-breaking",
            help="Deploy an interface that breaks clients of production's version (needs a new major "
            "api_version).",
        ),
    ] = False,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Stage, load and smoke-test a version, then make it serve."""
    model, version = _resolved_version(api, model, version)
    params: dict[str, str] = {"pool": pool} if pool else {}
    if allow_breaking:
        params["allow_breaking"] = "true"
    result = _request("POST", api, f"/v1/models/{model}/versions/{version}/deploy", params=params)
    if result.get("status") == "pending":
        # Still waiting out an outage when the API answered: it goes on as a rollout; follow it.
        typer.echo(result["message"], err=True)
        rollout = _follow(api, result["rollout"])
        if rollout["state"] != "succeeded":
            fail(f"deploy of {model} version {version} {rollout['state']}: {rollout['reason']}")
        result = {"model": model, "version": version, "pool": rollout["target_pool"]}
    if as_json:
        _print_json(result)
        return
    typer.echo(f"{result['model']} version {result['version']} is serving on pool {result['pool']}")


@app.command()
def models(api: ApiUrl = DEFAULT_API, as_json: JsonFlag = False) -> None:
    """List models and where they serve."""
    result = _request("GET", api, "/v1/models")
    if as_json:
        _print_json(result)
        return
    if not result:
        typer.echo("no models")
    for m in result:
        serving = ", ".join(f"v{d['version']}@{d['pool']}" for d in m["deployments"]) or "not deployed"
        typer.echo(f"{m['name']:<24} latest v{m['latest_version']:<4} {serving}")


# The most versions the API answers in one page.
VERSION_PAGE = 1000


@app.command()
def versions(
    model: Annotated[str, typer.Argument(help="Model name.")],
    newest: Annotated[
        int | None, typer.Option("--newest", min=1, help="Only the newest N versions, newest first.")
    ] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """List a model's versions, oldest first (all of them, page by page), or only the newest N."""
    path = f"/v1/models/{model}/versions"
    result: list[dict[str, Any]] = []
    while newest is None or len(result) < newest:
        # Each page starts after the last version of the one before.
        params: dict[str, Any] = {"limit": VERSION_PAGE}
        if newest is not None:
            params.update(order="desc", limit=min(VERSION_PAGE, newest - len(result)))
        if result:
            params["after" if newest is None else "before"] = result[-1]["version"]
        page = _request("GET", api, path, params=params)
        result.extend(page)
        if len(page) < params["limit"]:
            break
    if as_json:
        _print_json(result)
        return
    for v in result:
        typer.echo(f"v{v['version']:<4} {v['state']:<10} {v['size_bytes']:>12} B  sha256:{v['digest'][:16]}…")


def _tensor_line(kind: str, t: dict[str, Any]) -> str:
    dims = ", ".join(str(d) for d in t["dims"])
    return f"{kind:<7} {t['name']} {t['data_type']} [{dims}]"


def _compatibility_lines(compat: dict[str, Any] | None) -> list[str]:
    """The version against production's: a verdict, then one line per difference."""
    if compat is None:
        return ["compatibility: no version serves production"]
    serving = compat["serving_version"]
    differences = compat["differences"]
    if not differences:
        verdict = "the same interface" if compat["compatible"] else "BREAKING"
    else:
        verdict = "compatible" if compat["compatible"] else "BREAKING"
    lines = [f"compatibility with v{serving} (serving): {verdict}"]
    for d in differences:
        kind = "breaking" if d["breaking"] else "ok"
        lines.append(f"  {kind:<8} {d['code']:<24} {d['detail']}")
    return lines


@app.command()
def show(
    model: ModelRef,
    version: OptionalVersion = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Print one version: state, digest, metadata, interface and its compatibility with production."""
    model, version = _resolved_version(api, model, version)
    v = _request("GET", api, f"/v1/models/{model}/versions/{version}")
    if as_json:
        _print_json(v)
        return
    meta = v["metadata"]
    sig = v["signature"]
    lines = [
        f"{v['model']} version {v['version']}: {v['state']}, {v['size_bytes']} B, sha256:{v['digest']}",
        f"api_version {meta['api_version'] or '-'}",
        "metrics " + (", ".join(f"{k}={x:g}" for k, x in sorted(meta["metrics"].items())) or "-"),
        "labels  " + (", ".join(f"{k}={x}" for k, x in sorted(meta["labels"].items())) or "-"),
        f"backend {sig['backend']}, max_batch_size {sig['max_batch_size']}",
        *(_tensor_line("input", t) for t in sig["inputs"]),
        *(_tensor_line("output", t) for t in sig["outputs"]),
        f"files   {len(v['manifest'])}",
        *_compatibility_lines(v.get("compatibility")),
    ]
    if v.get("last_error"):
        lines.append(f"last error: {v['last_error']}")
    typer.echo("\n".join(lines))


metrics_app = typer.Typer(help="Metrics and labels of a version, set after its push.", no_args_is_help=True)
app.add_typer(metrics_app, name="metrics")


@metrics_app.command("set")
def metrics_set(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    values: Annotated[
        list[str] | None, typer.Argument(help="name=number to set, or name= to remove, e.g. accuracy=0.93.")
    ] = None,
    label: Annotated[
        list[str] | None, typer.Option(help="name=value to set, or name= to remove; repeatable.")
    ] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Set (or remove) metrics and labels of a version; api_version stays what the push declared."""
    if not values and not label:
        fail("name at least one metric (name=number) or --label name=value")
    metrics: dict[str, float | None] = {}
    for item in values or []:
        name, sep, text = item.partition("=")
        if not sep or not name:
            fail(f"{item!r} is not of the form name=number")
        try:
            number = float(text) if text else None
        except ValueError:
            fail(f"metric {name!r}: {text!r} is not a number")
        if number is not None and not math.isfinite(number):
            fail(f"metric {name!r}: {text!r} is not a finite number")
        metrics[name] = number
    labels: dict[str, str | None] = {}
    for item in label or []:
        name, sep, text = item.partition("=")
        if not sep or not name:
            fail(f"label {item!r} is not of the form name=value")
        labels[name] = text or None
    body = {"metrics": metrics, "labels": labels}
    result = _request("PATCH", api, f"/v1/models/{model}/versions/{version}/metadata", json=body)
    if as_json:
        _print_json(result)
        return
    meta = result["metadata"]
    shown = ", ".join(f"{k}={x:g}" for k, x in sorted(meta["metrics"].items())) or "none"
    typer.echo(f"{model} version {version} metrics: {shown}")
    if labels:
        typer.echo("labels: " + (", ".join(f"{k}={x}" for k, x in sorted(meta["labels"].items())) or "none"))


# -- rollouts ------------------------------------------------------------------------------

rollout_app = typer.Typer(
    help="Move traffic to a version across the pools, step by step.", no_args_is_help=True
)
app.add_typer(rollout_app, name="rollout")
WatchFlag = Annotated[bool, typer.Option("--watch/--no-watch", help="Follow the rollout until it ends.")]


def _describe(r: dict[str, Any]) -> str:
    weights = r.get("live_weights") or {}
    shown = " / ".join(f"{pool} {weight}" for pool, weight in sorted(weights.items()))
    step = ""
    if r["state"] == "shifting" and r["step_index"] is not None:
        index, steps = r["step_index"], r["steps"]
        step = f" step {index + 1}/{len(steps)} ({steps[index]}% to {r['target_pool']})"
    if r["state"] == "pending_approval":
        step = f" (until {r.get('approval_expires_at') or '?'})"
    elif r.get("approved_by") and r["state"] not in ("rejected", "expired"):
        step += f" (approved by {r['approved_by']})"
    return f"rollout {r['id']} {r['model']} v{r['version']}: {r['state']}{step}  weights {shown or '?'}"


def _measurement_line(event: dict[str, Any]) -> str | None:
    """What a measurement event says, in a line or two: analysis windows, holds, warm-up."""
    m = event.get("measurements") or {}
    warmup = m.get("warmup")
    if "requests" not in m and isinstance(warmup, dict):
        replicas = warmup.get("replicas") or {}
        timings = "; ".join(
            f"{name}: first {t.get('first_ms', 0):.1f} ms, p50 {t.get('p50_ms', 0):.1f} ms,"
            f" last {t.get('last_ms', 0):.1f} ms, {t.get('total_ms', 0) / 1000:.2f} s in all"
            for name, t in replicas.items()
        )
        own = " (the model also runs its own model_warmup at load)" if warmup.get("model_warmup") else ""
        return f"  warm-up: {warmup.get('requests', 0)} requests per replica{own}" + (
            f"; {timings}" if timings else ""
        )
    if "requests" not in m:
        return None

    def counts(window: dict[str, Any]) -> str:
        p99 = window.get("p99_ms")
        latency = f", p99 {p99:.1f} ms" if isinstance(p99, int | float) else ""
        return f"{window.get('errors', 0)} errors of {window.get('requests', 0)} requests{latency}"

    baseline = m.get("baseline")
    against = f" (baseline {counts(baseline)})" if isinstance(baseline, dict) else ""
    move = m.get("move")
    if m.get("passed"):
        line = f"  analysis passed: {counts(m)}{against}"
    elif move in ("hold", "abort", "promote"):
        # The reason already says how long the step held and what it does next.
        line = f"  {event['reason']}{against}"
    else:
        line = f"  analysis BREACH: {counts(m)}{against}: {event['reason']}"
    notes = [n for n in m.get("notes") or [] if not str(n).startswith("insufficient traffic")]
    return line + "".join(f"\n    note: {n}" for n in notes)


def _follow(api: str, rollout_id: int, *, interval: float = 0.5) -> dict[str, Any]:
    """Print each change of the rollout until it ends; return its last state."""
    import time

    seen_events = 0
    last_line = ""
    while True:
        r = _request("GET", api, f"/v1/rollouts/{rollout_id}")
        for event in r["events"][seen_events:]:
            line = _measurement_line(event)
            if line:
                typer.echo(line)
        seen_events = len(r["events"])
        line = _describe(r)
        if line != last_line:
            typer.echo(line)
            last_line = line
        if not r["active"]:
            typer.echo(f"rollout {rollout_id} {r['state']}: {r['reason']}")
            return r
        # Approval may take hours: no need to ask twice a second meanwhile.
        time.sleep(max(interval, 2.0) if r["state"] == "pending_approval" else interval)


def _finish(api: str, result: dict[str, Any], watch: bool, as_json: bool) -> None:
    if result.get("state") == "pending_approval":
        typer.echo(
            f"rollout {result['id']} waits for approval until {result.get('approval_expires_at')}: another "
            f"principal with the approver role runs `controlplane rollout approve {result['id']}`",
            err=True,
        )
    if watch:
        result = _follow(api, result["id"])
    if as_json:
        _print_json(result)
    elif not watch:
        typer.echo(_describe(result))
    if watch and result["state"] != "succeeded":
        raise typer.Exit(1)


@rollout_app.command("start")
def rollout_start(
    model: ModelRef,
    version: Annotated[
        int | None, typer.Argument(help="Version to move traffic to (not with model@alias).")
    ] = None,
    strategy: Annotated[str, typer.Option(help="canary, bluegreen or inplace.")] = "canary",
    steps: Annotated[str | None, typer.Option(help="Percentages, e.g. 10,50,100.")] = None,
    step_seconds: Annotated[float, typer.Option(help="Analysis window per step.")] = 30.0,
    bake_seconds: Annotated[float, typer.Option(help="How long the old pool stays warm.")] = 60.0,
    max_error_rate: Annotated[float | None, typer.Option(help="Gate: fraction of failed requests.")] = None,
    max_p99_ms: Annotated[float | None, typer.Option(help="Gate: p99 latency in ms.")] = None,
    min_requests: Annotated[
        int, typer.Option(help="Requests the candidate must serve in a step before its gates count.")
    ] = 20,
    max_hold_seconds: Annotated[
        float, typer.Option(help="How long a step holds for --min-requests before --on-no-data applies.")
    ] = 300.0,
    on_no_data: Annotated[
        str, typer.Option(help="After the hold without enough traffic: abort, hold or promote.")
    ] = "abort",
    max_error_rate_increase: Annotated[
        float | None, typer.Option(help="Gate: candidate error rate minus the baseline pool's.")
    ] = None,
    max_p99_ratio: Annotated[
        float | None, typer.Option(help="Gate: candidate p99 over the baseline pool's.")
    ] = None,
    golden: Annotated[
        bool, typer.Option("--golden/--no-golden", help="Run the version's golden set before traffic.")
    ] = True,
    warmup_requests: Annotated[
        int, typer.Option(help="Inferences sent to each candidate replica before traffic.")
    ] = 10,
    metric: Annotated[
        str | None, typer.Option(help="A version metric that must not be worse than production's.")
    ] = None,
    metric_max_drop: Annotated[float, typer.Option(help="How much worse --metric may be.")] = 0.0,
    metric_lower_is_better: Annotated[
        bool, typer.Option("--metric-lower-is-better", help="--metric is a loss (lower is better).")
    ] = False,
    allow_breaking: Annotated[
        bool,
        typer.Option(
            "--allow-breaking",
            help="Roll out an interface that breaks clients (needs a new major api_version).",
        ),
    ] = False,
    watch: WatchFlag = True,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Start a rollout and follow it: exit 0 when it succeeded, 1 when it was rolled back or failed."""
    try:
        parsed_steps = [int(x) for x in steps.split(",")] if steps else None
    except ValueError:
        fail(f"--steps must be comma-separated integers, got {steps!r}")
    # An alias goes to the API as such: it resolves it at start and records which alias it was.
    model, ref = _version_ref(model, version)
    body = {
        "model": model,
        "version": ref,
        "strategy": strategy,
        "steps": parsed_steps,
        "step_seconds": step_seconds,
        "bake_seconds": bake_seconds,
        "gates": {
            "max_error_rate": max_error_rate,
            "max_p99_ms": max_p99_ms,
            "min_requests": min_requests,
            "max_hold_seconds": max_hold_seconds,
            "on_no_data": on_no_data,
            "max_error_rate_increase": max_error_rate_increase,
            "max_p99_ratio": max_p99_ratio,
            "golden": golden,
            "warmup_requests": warmup_requests,
            "metric": metric,
            "metric_max_drop": metric_max_drop,
            "metric_lower_is_better": metric_lower_is_better,
        },
        "allow_breaking": allow_breaking,
    }
    _finish(api, _request("POST", api, "/v1/rollouts", json=body), watch, as_json)


@rollout_app.command("status")
def rollout_status(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    watch: Annotated[bool, typer.Option("--watch/--no-watch")] = False,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Show a rollout (and follow it with --watch)."""
    _finish(api, _request("GET", api, f"/v1/rollouts/{rollout_id}"), watch, as_json)


@rollout_app.command("list")
def rollout_list(api: ApiUrl = DEFAULT_API, as_json: JsonFlag = False) -> None:
    """Recent rollouts, newest first."""
    result = _request("GET", api, "/v1/rollouts")
    if as_json:
        _print_json(result)
        return
    if not result:
        typer.echo("no rollouts")
    for r in result:
        typer.echo(
            f"{r['id']:>4}  {r['model']} v{r['version']:<4} {r['strategy']:<9} {r['state']:<12} {r['reason']}"
        )


@rollout_app.command("abort")
def rollout_abort(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    watch: WatchFlag = True,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Roll a running rollout back: traffic returns to the source pool."""
    result = _request("POST", api, f"/v1/rollouts/{rollout_id}/abort")
    if watch:
        result = _follow(api, rollout_id)
    if as_json:
        _print_json(result)


@rollout_app.command("promote")
def rollout_promote(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    watch: WatchFlag = True,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Skip the remaining steps of a running rollout."""
    _finish(api, _request("POST", api, f"/v1/rollouts/{rollout_id}/promote"), watch, as_json)


@rollout_app.command("approve")
def rollout_approve(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    watch: WatchFlag = True,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Approve a rollout waiting for approval (approver or admin; never your own request): it runs."""
    _finish(api, _request("POST", api, f"/v1/rollouts/{rollout_id}/approve"), watch, as_json)


@rollout_app.command("reject")
def rollout_reject(
    rollout_id: Annotated[int, typer.Argument(help="Rollout id.")],
    reason: Annotated[str, typer.Option(help="Why the request is refused (kept in the audit log).")],
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Refuse a rollout waiting for approval; it ends as rejected."""
    result = _request("POST", api, f"/v1/rollouts/{rollout_id}/reject", json={"reason": reason})
    if as_json:
        _print_json(result)
        return
    typer.echo(f"rollout {result['id']} {result['state']}: {result['reason']}")


@app.command()
def rollback(
    model: Annotated[str, typer.Argument(help="Model name.")],
    watch: WatchFlag = True,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Return a model to its previous production version (never waits for approval)."""
    _finish(api, _request("POST", api, f"/v1/models/{model}/rollback"), watch, as_json)


@app.command()
def tune(
    model: Annotated[str, typer.Argument(help="Model name.")],
    p99_ms: Annotated[float, typer.Option("--p99-ms", help="Latency objective: the best one's p99 in ms.")],
    version: Annotated[
        int | None, typer.Option(help="Version to tune (default: production's, else the latest).")
    ] = None,
    delays: Annotated[
        str | None, typer.Option(help="max_queue_delay_microseconds values to sweep, e.g. 0,500,2000.")
    ] = None,
    batch_sizes: Annotated[
        str | None, typer.Option("--batch-sizes", help="Preferred batch sizes to sweep, e.g. 4,8 (0: none).")
    ] = None,
    instances: Annotated[str | None, typer.Option(help="Instance counts to sweep, e.g. 1,2.")] = None,
    threads: Annotated[
        str | None,
        typer.Option(help="onnxruntime backend: intra-op threads to sweep, e.g. 1,2 (0: its own choice)."),
    ] = None,
    seconds: Annotated[float | None, typer.Option(help="Measured seconds per configuration.")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight while measuring.")] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Sweep dynamic batching on the idle pool; the best configuration under --p99-ms becomes a new version.

    Follows the run until it ends: a table and a chart of throughput against
    p99 per configuration, then the version written (exit 1 when none met the
    objective or the run failed).
    """
    import time

    from controlplane.domain.tuning import Trial
    from controlplane.tuning.report import chart, ratios, table

    def numbers(option: str, value: str) -> list[int]:
        try:
            return [int(part) for part in value.split(",") if part.strip()]
        except ValueError:
            fail(f"{option} takes comma-separated whole numbers, got {value!r}")

    body: dict[str, Any] = {"p99_ms": p99_ms}
    for key, option, given in (
        ("delays_us", "--delays", delays),
        ("preferred_batch_sizes", "--batch-sizes", batch_sizes),
        ("instance_counts", "--instances", instances),
        ("backend_threads", "--threads", threads),
    ):
        if given is not None:
            body[key] = numbers(option, given)
    for key, value in (("version", version), ("seconds_per_config", seconds), ("concurrency", concurrency)):
        if value is not None:
            body[key] = value
    run = _request("POST", api, f"/v1/models/{model}/tune", json=body)
    if not as_json:
        typer.echo(
            f"tuning {run['model']} v{run['version']} on pool {run['pool']} (run {run['id']}): the default "
            f"configuration, then {run['planned']} others, {run['settings']['seconds_per_config']:g} s each"
        )
    seen = 0
    while True:
        for data in run["trials"][seen:] if not as_json else []:
            measured = data.get("measurement")
            figures = (
                f"{measured['throughput_rps']:.1f} req/s, p99 {measured['p99_ms'] or 0:.2f} ms, "
                f"{measured['errors']} errors"
                if measured
                else f"not loaded: {data.get('failure')}"
            )
            typer.echo(f"  #{data['index']} {data['description']}: {figures}")
        seen = len(run["trials"])
        if run["state"] != "running":
            break
        time.sleep(1.0)
        run = _request("GET", api, f"/v1/tunings/{run['id']}")
    if as_json:
        _print_json(run)
        if run["state"] != "succeeded":
            raise typer.Exit(1)
        return
    trials = [Trial.from_dict(t) for t in run["trials"]]
    best = Trial.from_dict(run["best"]) if run["best"] else None
    typer.echo("")
    for line in table(trials, p99_ms=run["objective_p99_ms"], best=best):
        typer.echo(line)
    typer.echo("")
    for line in chart(trials, p99_ms=run["objective_p99_ms"], best=best):
        typer.echo(line)
    typer.echo("")
    if run["state"] != "succeeded" or best is None:
        error = run.get("error") or {}
        fail(f"{error.get('message', 'the tuning run failed')} ({error.get('code', run['state'])})")
    baseline = next((t for t in trials if t.baseline), None)
    typer.echo(f"best: #{best.index} {best.config.describe()}: {ratios(best, baseline)}")
    if not run["version_created"]:
        typer.echo(f"{run['model']}: {run['phase']}")
        return
    typer.echo(
        f"wrote {run['model']} version {run['new_version']} (tuned from v{run['version']}); "
        f"roll it out with `controlplane rollout start {run['model']} {run['new_version']}`"
    )


# -- pools ---------------------------------------------------------------------------------

pool_app = typer.Typer(help="Triton pools: what they serve, and recycling an idle one.", no_args_is_help=True)
app.add_typer(pool_app, name="pool")


def _mib(value: int | None) -> str:
    return "?" if value is None else f"{value / 2**20:.0f} MiB"


@pool_app.command("list")
def pool_list(api: ApiUrl = DEFAULT_API, as_json: JsonFlag = False) -> None:
    """Each pool: weight, release, readiness, loads since its Tritons started, memory, holder."""
    result = _request("GET", api, "/v1/pools")
    if as_json:
        _print_json(result)
        return
    for p in result:
        release = ", ".join(f"{m} v{v}" for m, v in sorted(p["release"].items())) or "nothing"
        state = "ready" if p["ready"] else "NOT READY"
        held = f"  held by {p['held_by']}" if p["held_by"] else ""
        typer.echo(
            f"{p['name']:<10} weight {p['weight']:>3}  {state:<9} {_mib(p['memory_bytes']):>9}  "
            f"{p['loads_since_recycle']} loads  {release}{held}"
        )


@pool_app.command("recycle")
def pool_recycle(
    pool: Annotated[str, typer.Argument(help="A pool without traffic.")],
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Restart an idle pool's Tritons (memory back); returns once its models are loaded and smoke-tested."""
    result = _request("POST", api, f"/v1/pools/{pool}/recycle")
    if as_json:
        _print_json(result)
        return
    typer.echo(
        f"pool {result['pool']} recycled in {result['seconds']:.1f} s; memory "
        f"{_mib(result['memory_before'])} -> {_mib(result['memory_after'])}; "
        f"{len(result['models'])} model(s) ready"
    )


# -- signature policy --------------------------------------------------------------------------

policy_app = typer.Typer(help="Signature and approval policy of a model.", no_args_is_help=True)
app.add_typer(policy_app, name="policy")


@policy_app.command("show")
def policy_show(model: Annotated[str, typer.Argument(help="Model name.")], api: ApiUrl = DEFAULT_API) -> None:
    """The model's own settings and the policy in force."""
    _print_json(_request("GET", api, f"/v1/models/{model}/policy"))


@policy_app.command("set")
def policy_set(
    model: Annotated[str, typer.Argument(help="Model name.")],
    require_signature: Annotated[
        bool | None, typer.Option("--require-signature/--no-require-signature", help="Unset: global policy.")
    ] = None,
    allow_signer: Annotated[
        list[str] | None,
        typer.Option(help="key:ID, cert:sha256:FP, san:VALUE or oidc:IDENTITY|ISSUER; repeatable."),
    ] = None,
    allow_code_backends: Annotated[
        bool | None,
        typer.Option(
            "--allow-code-backends/--no-allow-code-backends",
            help="Versions may use backends that run the folder's code (python). Unset: refused.",
        ),
    ] = None,
    code_backends_require_signature: Annotated[
        bool | None,
        typer.Option(
            "--code-backends-require-signature/--no-code-backends-require-signature",
            help="Such versions need a verified signature to deploy. Unset: required.",
        ),
    ] = None,
    require_approval: Annotated[
        bool,
        typer.Option(
            "--require-approval/--no-require-approval",
            help="Rollouts and deploys wait until another principal approves them (rollbacks never wait).",
        ),
    ] = False,
    approval_timeout: Annotated[
        int,
        typer.Option(help="Seconds a request may wait for approval before it expires (60..2592000)."),
    ] = 86400,
    api: ApiUrl = DEFAULT_API,
) -> None:
    """Set who must sign a model's versions, whether it may run code backends, whether it needs approval.

    Admin only. Replaces the model's whole policy: options left out follow the
    global policy (approval: not required).
    """
    body = {
        "require_signature": require_signature,
        "allowed_signers": allow_signer,
        "allow_code_backends": allow_code_backends,
        "code_backends_require_signature": code_backends_require_signature,
        "require_approval": require_approval,
        "approval_timeout_seconds": approval_timeout,
    }
    _print_json(_request("PUT", api, f"/v1/models/{model}/policy", json=body))


# -- database ------------------------------------------------------------------------------


def _database_url(database_url: str | None) -> str:
    from controlplane.settings import Settings

    return database_url or Settings().effective_database_url


DbUrl = Annotated[str | None, typer.Option(help="SQLAlchemy URL [CONTROLPLANE_DATABASE_URL].")]


@db_app.command("upgrade")
def db_upgrade(database_url: DbUrl = None, revision: str = "head") -> None:
    """Migrate the registry schema."""
    from controlplane.registry.db import Database

    db = Database(_database_url(database_url))
    db.upgrade(revision)
    typer.echo(f"database at revision {db.current_revision()}")
    db.dispose()


@db_app.command("current")
def db_current(database_url: DbUrl = None) -> None:
    """Print the schema revision of the database and whether it is current."""
    from controlplane.registry.db import Database

    db = Database(_database_url(database_url))
    current, head = db.current_revision(), db.head_revision()
    db.dispose()
    typer.echo(f"{current or 'empty'} (code needs {head})")
    if current != head:
        raise typer.Exit(1)


# -- API tokens (local: they act on the database, so the first admin token can be made) --------

token_app = typer.Typer(help="API tokens (act on the database directly).", no_args_is_help=True)
app.add_typer(token_app, name="token")
StateDir = Annotated[
    Path | None, typer.Option(help="State directory of the embedded stack [CONTROLPLANE_STATE_DIR].")
]


def _cli_actor() -> str:
    return f"cli:{os.environ.get('USER', 'unknown')}"


@contextmanager
def _token_session(database_url: str | None, state_dir: Path | None) -> Iterator[Any]:
    """A registry transaction for token commands; refusals become one line and exit 1."""
    from controlplane.errors import ControlPlaneError
    from controlplane.registry.db import Database
    from controlplane.settings import Settings

    settings = Settings(state_dir=state_dir) if state_dir else Settings()
    db = Database(database_url or settings.effective_database_url)
    try:
        db.check_schema()
        with db.transaction() as session:
            yield session
    except ControlPlaneError as exc:
        fail(f"{exc.message} ({exc.code})")
    finally:
        db.dispose()


@token_app.command("create")
def token_create(
    name: Annotated[str, typer.Argument(help="Who or what uses the token (shown in the audit log).")],
    role: Annotated[str, typer.Option(help="viewer, publisher, deployer, approver or admin.")] = "viewer",
    state_dir: StateDir = None,
    database_url: DbUrl = None,
) -> None:
    """Create a token and print it (once: only its hash is kept)."""
    from controlplane.domain.auth import Role
    from controlplane.registry import token_store

    try:
        chosen = Role(role)
    except ValueError:
        fail(f"role must be one of {', '.join(r.value for r in Role)}, got {role!r}")
    with _token_session(database_url, state_dir) as session:
        secret, _info = token_store.create_token(session, name=name, role=chosen, created_by=_cli_actor())
    typer.echo(secret)
    typer.echo(f"token {name!r} ({chosen}); export CONTROLPLANE_TOKEN=<it> for the CLI", err=True)


@token_app.command("revoke")
def token_revoke(
    name: Annotated[str, typer.Argument(help="Token name.")],
    state_dir: StateDir = None,
    database_url: DbUrl = None,
) -> None:
    """Revoke a token: it stops working at once."""
    from controlplane.registry import token_store

    with _token_session(database_url, state_dir) as session:
        token_store.revoke_token(session, name=name, revoked_by=_cli_actor())
    typer.echo(f"token {name!r} revoked")


@token_app.command("list")
def token_list(state_dir: StateDir = None, database_url: DbUrl = None) -> None:
    """Tokens with their roles (never the secrets)."""
    from controlplane.registry import token_store

    with _token_session(database_url, state_dir) as session:
        tokens = token_store.list_tokens(session)
    for t in tokens:
        status = "active" if t.active else f"revoked {t.revoked_at:%Y-%m-%d %H:%M}"
        typer.echo(f"{t.name:<24} {t.role:<10} {status}")


# -- garbage collection ----------------------------------------------------------------------


@app.command()
def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; change nothing.")
    ] = False,
    grace_seconds: Annotated[
        float | None,
        typer.Option(min=0, help="Keep blobs younger than this [CONTROLPLANE_GC_GRACE_SECONDS]."),
    ] = None,
    lock_timeout: Annotated[
        float, typer.Option(min=0, help="How long to wait for pushes that are storing blobs.")
    ] = 30.0,
    state_dir: StateDir = None,
    database_url: DbUrl = None,
) -> None:
    """Remove artifact blobs that no version and no pool folder references (acts on the state directory)."""
    from controlplane.artifacts.blobs import BlobStore
    from controlplane.collector import collect_garbage
    from controlplane.errors import ControlPlaneError
    from controlplane.registry.db import Database
    from controlplane.settings import Settings

    settings = Settings(state_dir=state_dir) if state_dir else Settings()
    db = Database(database_url or settings.effective_database_url)
    try:
        db.check_schema()
        result = collect_garbage(
            db,
            BlobStore(settings.artifacts_dir),
            linked_roots=(settings.pools_dir, settings.uploads_dir),
            grace_seconds=settings.gc_grace_seconds if grace_seconds is None else grace_seconds,
            dry_run=dry_run,
            lock_timeout=lock_timeout,
            actor=_cli_actor(),
        )
    except ControlPlaneError as exc:
        fail(f"{exc.message} ({exc.code})")
    except TimeoutError:
        fail("pushes kept the artifact store busy; try again")
    finally:
        db.dispose()
    for item in result.items:
        print(f"{item.size:>12}  {item.path}")
    verb = "would remove" if dry_run else "removed"
    print(f"{verb} {len(result.items)} blobs, {result.total_bytes} bytes")


# -- golden sets ------------------------------------------------------------------------------

golden_app = typer.Typer(
    help="Golden sets: inputs and expected outputs a version must reproduce before it gets traffic.",
    no_args_is_help=True,
)
app.add_typer(golden_app, name="golden")


def _golden_line(g: dict[str, Any]) -> str:
    outputs = ", ".join(
        f"{name} (atol {t['atol']:g}, rtol {t['rtol']:g})" for name, t in g["outputs"].items()
    )
    signed = ", signed" if g["signed"] else ""
    return (
        f"{g['model']} version {g['version']}: golden set of {g['rows']} rows ({g['format']}, {g['source']}"
        f"{signed}) sha256:{g['digest']}; outputs {outputs}"
    )


@golden_app.command("attach")
def golden_attach(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    file: Annotated[Path, typer.Argument(help="A golden set: .npz or .json.")],
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Attach a golden set to a version (replacing one attached before)."""
    if not file.is_file():
        fail(f"golden set file {file} does not exist")
    fmt = "npz" if file.suffix.lower() == ".npz" else "json" if file.suffix.lower() == ".json" else None
    if fmt is None:
        fail(f"{file.name}: a golden set file ends in .npz or .json")
    content_type = "application/json" if fmt == "json" else "application/octet-stream"
    result = _request(
        "PUT",
        api,
        f"/v1/models/{model}/versions/{version}/golden",
        params={"format": fmt},
        content=file.read_bytes(),
        headers={"content-type": content_type},
    )
    if as_json:
        _print_json(result)
        return
    typer.echo(_golden_line(result))


@golden_app.command("show")
def golden_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    version: Annotated[int, typer.Argument(help="Version number.")],
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Describe a version's golden set: rows, outputs with their tolerances, where it came from."""
    result = _request("GET", api, f"/v1/models/{model}/versions/{version}/golden")
    if as_json:
        _print_json(result)
        return
    typer.echo(_golden_line(result))


# -- aliases -----------------------------------------------------------------------------------

alias_app = typer.Typer(
    help="Aliases: named pointers to a model's versions (production moves when a rollout succeeds).",
    no_args_is_help=True,
)
app.add_typer(alias_app, name="alias")
AliasName = Annotated[
    str, typer.Argument(help="Alias name: 1-64 of a-z, 0-9, '_', '-', starting with a letter.")
]
Reason = Annotated[str, typer.Option(help="Why (kept in the alias's history).")]


def _when(iso: str) -> str:
    """An API timestamp (ISO 8601, UTC) to the second: ``2026-12-05 10:02:11``."""
    return iso[:19].replace("T", " ")


def _alias_line(a: dict[str, Any]) -> str:
    return f"{a['model']}@{a['alias']:<20} v{a['version']:<5} set by {a['actor']} at {_when(a['updated_at'])}"


def _alias_move_line(m: dict[str, Any]) -> str:
    before = "-" if m["previous"] is None else f"v{m['previous']}"
    after = "deleted" if m["version"] is None else f"v{m['version']}"
    rollout = f"  [rollout {m['rollout']}]" if m["rollout"] is not None else ""
    reason = f"  {m['reason']}" if m["reason"] else ""
    return f"{_when(m['at'])}  {before:>6} -> {after:<7} by {m['actor']}{reason}{rollout}"


@alias_app.command("set")
def alias_set(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasName,
    version: Annotated[int, typer.Argument(help="Version number it points to from now on.")],
    reason: Reason = "",
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Point an alias at a version (create or move it; deployer or admin)."""
    body = {"version": version, "reason": reason}
    result = _request("PUT", api, f"/v1/models/{model}/aliases/{alias}", json=body)
    if as_json:
        _print_json(result)
        return
    typer.echo(_alias_line(result))


@alias_app.command("list")
def alias_list(
    model: Annotated[str, typer.Argument(help="Model name.")],
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """The model's aliases and the versions they point to."""
    result = _request("GET", api, f"/v1/models/{model}/aliases")
    if as_json:
        _print_json(result)
        return
    if not result:
        typer.echo(f"{model} has no aliases")
    for a in result:
        typer.echo(_alias_line(a))


@alias_app.command("show")
def alias_show(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasName,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """The version an alias points to, with its state and digest."""
    result = _request("GET", api, f"/v1/models/{model}/aliases/{alias}")
    if as_json:
        _print_json(result)
        return
    v = result["version_summary"]
    typer.echo(_alias_line(result))
    typer.echo(f"v{v['version']}: {v['state']}, {v['size_bytes']} B, sha256:{v['digest']}")


@alias_app.command("delete")
def alias_delete(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasName,
    reason: Reason = "",
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Remove an alias (its history stays; deployer or admin)."""
    result = _request("DELETE", api, f"/v1/models/{model}/aliases/{alias}", params={"reason": reason})
    if as_json:
        _print_json(result)
        return
    typer.echo(f"{model}@{alias} deleted (it pointed to v{result['previous']})")


@alias_app.command("history")
def alias_history(
    model: Annotated[str, typer.Argument(help="Model name.")],
    alias: AliasName,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many of the latest moves.")] = 100,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Every move of an alias, oldest first: for production, which version was live when."""
    result = _request("GET", api, f"/v1/models/{model}/aliases/{alias}/history", params={"limit": limit})
    if as_json:
        _print_json(result)
        return
    for m in result:
        typer.echo(_alias_move_line(m))


# -- the audit log -------------------------------------------------------------------------------


def _event_line(e: dict[str, Any]) -> str:
    return f"{e['id']:>7}  {_when(e['at'])}  {e['actor']:<20} {e['action']:<22} {e['target']}  {e['outcome']}"


def _sse_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    """The ``data:`` of each server-sent event in ``lines`` (comments and other fields skipped)."""
    data: list[str] = []
    for line in lines:
        if line == "":
            if data:
                yield json.loads("\n".join(data))
            data = []
        elif line.startswith("data:"):
            data.append(line[5:].removeprefix(" "))


def _refusal(response: httpx.Response) -> str:
    """The API's error in one line: its message and code."""
    try:
        error = response.json().get("error", {})
    except ValueError:
        error = {}
    message = error.get("message") or response.reason_phrase
    return f"{message} ({error.get('code', response.status_code)})"


def _follow_events(api: str, after: int | None, count: int | None, as_json: bool) -> None:
    """Print events from the live stream until ``count`` were printed (or for ever); reconnect on a drop."""
    import time

    headers = {"Accept": "text/event-stream"}
    token = os.environ.get("CONTROLPLANE_TOKEN")
    if token:
        headers["Authorization"] = f"Bearer {token}"
    printed = 0
    timeout = httpx.Timeout(60.0, connect=5.0)  # the server sends a heartbeat every 15 s
    while True:
        params = {"after": str(after)} if after is not None else {}
        try:
            with (
                httpx.Client(base_url=api, timeout=timeout) as client,
                client.stream("GET", "/v1/events/stream", params=params, headers=headers) as response,
            ):
                if response.status_code >= 400:
                    response.read()
                    fail(_refusal(response))
                for event in _sse_events(response.iter_lines()):
                    typer.echo(json.dumps(event, sort_keys=True) if as_json else _event_line(event))
                    after = int(event["id"])
                    printed += 1
                    if count is not None and printed >= count:
                        return
        except httpx.HTTPError as exc:
            if after is None and printed == 0 and isinstance(exc, httpx.ConnectError):
                fail(f"cannot reach the control plane at {api}: {exc}", 2)
            typer.echo(f"event stream interrupted ({exc}); reconnecting", err=True)
        time.sleep(1.0)


@app.command()
def events(
    after: Annotated[
        int | None,
        typer.Option(min=0, help="Events after this id (default: from the first; --follow: from now)."),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000, help="How many events to list.")] = 100,
    follow: Annotated[
        bool, typer.Option("--follow", "-f", help="Keep printing events as they happen (Ctrl-C stops).")
    ] = False,
    count: Annotated[
        int | None, typer.Option(min=1, help="With --follow: stop after this many events.")
    ] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per event.")] = False,
    model: Annotated[
        str | None, typer.Option(help="Only events about this model (versions, aliases, pool releases).")
    ] = None,
    actor: Annotated[str | None, typer.Option(help="Only events by this actor.")] = None,
    action: Annotated[
        str | None, typer.Option(help="Only this action, or a prefix ending in .* (rollout.*).")
    ] = None,
) -> None:
    """Print the audit log: what was done, by whom, to what; --follow streams new events live."""
    filters = {"model": model, "actor": actor, "action": action}
    if follow:
        if any(value is not None for value in filters.values()):
            fail("--model, --actor and --action filter the listing, not --follow")
        with suppress(KeyboardInterrupt):
            _follow_events(api, after, count, as_json)
        return
    params: dict[str, str | int] = {"after": after or 0, "limit": limit}
    params.update({name: value for name, value in filters.items() if value is not None})
    result = _request("GET", api, "/v1/events", params=params)
    for e in result:
        typer.echo(json.dumps(e, sort_keys=True) if as_json else _event_line(e))


# -- GitOps: follow a folder (or git repository) of model folders ------------------------------


def _watch_summary(results: list[Any]) -> tuple[str, int]:
    """One line counting what a pass did, and the exit code of ``watch --once``."""
    counts: dict[str, int] = {}
    for result in results:
        key = result.outcome.value if result.outcome is not None else "deferred"
        counts[key] = counts.get(key, 0) + 1
    shown = ", ".join(f"{n} {what}" for what, n in sorted(counts.items())) or "nothing changed"
    if counts.get("rejected") or counts.get("rollout_refused"):
        return shown, 1
    return shown, 2 if counts.get("deferred") else 0


@app.command("watch")
def watch(
    path: Annotated[
        Path, typer.Argument(help="A folder of model folders (PATH/<model>/config.pbtxt), or a git repo.")
    ],
    git: Annotated[
        bool,
        typer.Option(
            "--git", help="Follow a branch's commits (automatic when PATH has .git); never the working copy."
        ),
    ] = False,
    branch: Annotated[str | None, typer.Option(help="git: the branch to follow (default: HEAD's).")] = None,
    interval: Annotated[float, typer.Option(min=0.1, max=86400, help="Seconds between two polls.")] = 10.0,
    once: Annotated[
        bool,
        typer.Option(
            "--once",
            help="One pass, then exit: 1 if a folder or rollout was refused, 2 if something must be retried.",
        ),
    ] = False,
    max_file_bytes: Annotated[
        int, typer.Option(min=1, help="Largest file of a model folder; a folder with one larger is refused.")
    ] = 4 * 1024**3,
    metrics_port: Annotated[
        int | None, typer.Option(min=1, max=65535, help="Serve Prometheus metrics on 127.0.0.1:PORT.")
    ] = None,
    api: ApiUrl = DEFAULT_API,
) -> None:
    """Follow PATH: push new or changed model folders as versions; roll them out as their rollout.yaml says.

    A folder without rollout.yaml is only registered. Refused folders are logged once per content.
    """
    import contextlib
    import threading

    from controlplane.domain.gitops import WatchLimits
    from controlplane.errors import ControlPlaneError
    from controlplane.gitops.transports import HttpTransport
    from controlplane.gitops.watcher import Watcher, open_source
    from controlplane.logs import configure_logging

    configure_logging("text", "INFO")
    try:
        source = open_source(path, git=git, branch=branch, limits=WatchLimits(max_file_bytes=max_file_bytes))
    except ControlPlaneError as exc:
        fail(f"{exc.message} ({exc.code})")
    transport = HttpTransport(api, token=os.environ.get("CONTROLPLANE_TOKEN"))
    try:
        watcher = Watcher(source, transport)
        if once:
            shown, code = _watch_summary(watcher.poll())
            typer.echo(f"{source.description}: {shown}")
            raise typer.Exit(code)
        if metrics_port is not None:
            from prometheus_client import start_http_server

            from controlplane.metrics import REGISTRY

            start_http_server(metrics_port, addr="127.0.0.1", registry=REGISTRY)
        # Ctrl-C ends the loop between two polls or in the middle of one; nothing half-done is left behind.
        with contextlib.suppress(KeyboardInterrupt):
            watcher.run(threading.Event(), interval=interval)
    finally:
        transport.close()


# -- webhooks ----------------------------------------------------------------------------------

webhook_app = typer.Typer(
    help="Webhooks: audit events POSTed, signed, to a URL (admin tokens only).", no_args_is_help=True
)
app.add_typer(webhook_app, name="webhook")
WebhookIdArg = Annotated[int, typer.Argument(help="Webhook id (`controlplane webhook list`).")]


def _webhook_line(w: dict[str, Any]) -> str:
    state = "enabled" if w["enabled"] else "DISABLED"
    models = ",".join(w["models"]) if w["models"] is not None else "all models"
    return (
        f"{w['id']:>4}  {state:<8}  {','.join(w['events'])}  ({models})  {w['pending']} pending  {w['url']}"
    )


@webhook_app.command("add")
def webhook_add(
    url: Annotated[str, typer.Argument(help="http(s) URL the events are POSTed to.")],
    event: Annotated[
        list[str] | None,
        typer.Option("--event", "-e", help="Action pattern: `push`, `rollout.*`, `*` (default); repeatable."),
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option("--model", "-m", help="Only events about this model; repeatable.")
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(envvar="CONTROLPLANE_WEBHOOK_SECRET", help="Signing secret; generated when left out."),
    ] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """Subscribe a URL; prints the signing secret, which is shown only this once."""
    body: dict[str, Any] = {"url": url, "events": event or ["*"], "models": model or None}
    if secret is not None:
        body["secret"] = secret
    result = _request("POST", api, "/v1/webhooks", json=body)
    if as_json:
        _print_json(result)
        return
    typer.echo(_webhook_line(result))
    typer.echo(f"secret {result['secret']}  (shown once: the receiver needs it to check signatures)")


@webhook_app.command("list")
def webhook_list(api: ApiUrl = DEFAULT_API, as_json: JsonFlag = False) -> None:
    """Every subscription: state, filter, events waiting, URL."""
    result = _request("GET", api, "/v1/webhooks")
    if as_json:
        _print_json(result)
        return
    if not result:
        typer.echo("no webhooks")
    for w in result:
        typer.echo(_webhook_line(w))


@webhook_app.command("show")
def webhook_show(webhook_id: WebhookIdArg, api: ApiUrl = DEFAULT_API, as_json: JsonFlag = False) -> None:
    """One subscription, with why it was disabled if it was."""
    result = _request("GET", api, f"/v1/webhooks/{webhook_id}")
    if as_json:
        _print_json(result)
        return
    typer.echo(_webhook_line(result))
    typer.echo(f"      created by {result['created_by']} at {result['created_at']}")
    typer.echo(f"      consecutive failures: {result['consecutive_failures']}")
    if result["disabled_reason"]:
        typer.echo(f"      disabled: {result['disabled_reason']}")


def _set_enabled(webhook_id: int, enabled: bool, api: str) -> None:
    result = _request("PATCH", api, f"/v1/webhooks/{webhook_id}", json={"enabled": enabled})
    typer.echo(_webhook_line(result))


@webhook_app.command("enable")
def webhook_enable(webhook_id: WebhookIdArg, api: ApiUrl = DEFAULT_API) -> None:
    """Enable a subscription again: failures cleared, the waiting events sent at once."""
    _set_enabled(webhook_id, True, api)


@webhook_app.command("disable")
def webhook_disable(webhook_id: WebhookIdArg, api: ApiUrl = DEFAULT_API) -> None:
    """Stop deliveries to a subscription (events that match meanwhile are not queued)."""
    _set_enabled(webhook_id, False, api)


@webhook_app.command("remove")
def webhook_remove(webhook_id: WebhookIdArg, api: ApiUrl = DEFAULT_API) -> None:
    """Delete a subscription with its undelivered events and delivery log."""
    _request("DELETE", api, f"/v1/webhooks/{webhook_id}")
    typer.echo(f"webhook {webhook_id} removed")


@webhook_app.command("deliveries")
def webhook_deliveries(
    webhook_id: WebhookIdArg,
    limit: Annotated[int, typer.Option(min=1, max=500, help="How many, newest first.")] = 20,
    before: Annotated[int | None, typer.Option(help="Only deliveries older than this delivery id.")] = None,
    api: ApiUrl = DEFAULT_API,
    as_json: JsonFlag = False,
) -> None:
    """The delivery log of a subscription, newest first: event, attempt, answer, time taken."""
    params: dict[str, Any] = {"limit": limit}
    if before is not None:
        params["before"] = before
    result = _request("GET", api, f"/v1/webhooks/{webhook_id}/deliveries", params=params)
    if as_json:
        _print_json(result)
        return
    if not result:
        typer.echo("no deliveries")
    for d in result:
        status = d["status_code"] if d["status_code"] is not None else "-"
        error = f"  {d['error']}" if d["error"] else ""
        typer.echo(
            f"{d['id']:>6}  {d['at']}  event {d['event_id']} attempt {d['attempt']}  {d['outcome']:<9} "
            f"{status}  {d['duration_ms']} ms{error}"
        )


def main() -> None:
    """Entry point of the ``controlplane`` script."""
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    app(prog_name="controlplane")


if __name__ == "__main__":
    main()
