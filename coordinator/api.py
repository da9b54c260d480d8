"""The operator API and dashboard (FastAPI): runs, rounds, partners, models, lineage, promotion, downloads.

The same conventions as the consent API (``consent/api.py``): bearer tokens stored hashed
(``coordinator/api_tokens.py``), checked before any handler — 401 when missing or unknown,
403 when the role may not; ``operator`` starts, stops and resumes runs and promotes models,
``viewer`` reads and downloads. Bodies are cut off at 64 KiB while streaming (413); every error
body is ``{"detail": "<what, naming the field>"}``; tokens in a URL are refused (400); the
access log names route templates, never paths. The dashboard (HTML pages, server-side SVG
charts) is served by the same app: a browser signs in once at ``/login`` and the token
travels in an HttpOnly, SameSite=Strict cookie.

``/docs`` is rendered here from the OpenAPI document (no Swagger UI: its JavaScript would
come from a CDN, and nothing may be fetched from the internet); ``/openapi.json`` is the
machine-readable contract.
"""

from __future__ import annotations

import html
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, HTMLResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import ConfigDict, Field, StrictStr, ValidationError
from sqlalchemy import Engine

from fedcrm.asgi import (
    ApiModel,
    add_error_handlers,
    add_middleware,
    authenticate,
    authorize,
    error_responses,
)
from fedcrm.coordinator import operator_runs
from fedcrm.coordinator import registry_index as reg
from fedcrm.coordinator.api_tokens import OperatorToken, OperatorTokenStore
from fedcrm.coordinator.run_config import RunConfig
from fedcrm.errors import (
    AuthorizationError,
    ConfigError,
    CoordinatorError,
    ModelIntegrityError,
    PromotionRefused,
    RegistryError,
    RegistryNotFound,
)
from fedcrm.logging import get_logger

__all__ = ["MAX_BODY_BYTES", "create_app"]

MAX_BODY_BYTES = 64 * 1024
COOKIE = "fedcrm_operator"
# A leading letter or digit: "." and ".." would be path segments, not ids.
RUN_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$"
MODEL_ID = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}:(final|round-[0-9]{1,6})$"
log = get_logger("fedcrm.coordinator.api")


# --- schemas ------------------------------------------------------------------------------


class RunSummary(ApiModel):
    """A run as the registry indexes it."""

    run_id: str
    status: str = Field(description="starting | running | completed | failed | killed")
    error: str | None
    task_name: str
    task_schema_sha256: str
    strategy: str
    aggregation: str
    architecture: str
    rounds_planned: int
    rounds_completed: int
    num_partners: int
    partners: list[str]
    started_at: datetime | None
    ended_at: datetime | None
    wall_s: float | None
    resumed_from: list[int]
    best_round: int | None = Field(description="Lowest federated validation loss")
    final_round: int | None = Field(description="The round the run's final model comes from")
    final_rule: str | None = Field(description="best | last (run config final_model)")
    stopped_early_after: int | None
    pid: int | None = Field(description="The process supervising the run, when the API started it")
    privacy: dict[str, Any]


class RunDetail(RunSummary):
    config: dict[str, Any]
    run_dir: str


class StartRun(ApiModel):
    """Start a run: on the simulation engine, partner config paths on this machine; on the deployment engine
    (a coordinator served with `--superlink`), how many partners join. And the run settings."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    partners: list[Annotated[StrictStr, Field(min_length=1, max_length=1000)]] | None = Field(
        None, min_length=2, max_length=100,
        description="Simulation engine: partner config files (read by the partners' apps)")
    num_partners: int | None = Field(
        None, ge=2, le=1000, description="Deployment engine: how many partner SuperNodes the run waits for")
    config: dict[str, Any] = Field(description="Run settings (the run config's [run] table: task, rounds, …)")


class Started(ApiModel):
    run_id: str
    pid: int
    status: str


class Signalled(ApiModel):
    run_id: str
    pid: int
    action: Literal["stop", "resume"]


class PartnerRound(ApiModel):
    partner: str
    fit_examples: int | None
    fit_loss: float | None
    eval_examples: int | None
    eval_loss: float | None
    roc_auc: float | None = Field(description="On the partner's local hold-out")
    pr_auc: float | None
    top_decile_lift: float | None
    consent_as_of: str | None
    dp_epsilon: float | None
    dp_delta: float | None
    dp_noise_multiplier: float | None


class Dropout(ApiModel):
    stage: str
    partner: str
    reason: str


class RoundOut(ApiModel):
    round: int
    completed: bool
    consent_as_of: str | None
    started_at: datetime | None
    ended_at: datetime | None
    duration_s: float | None
    fit_partners: list[str]
    evaluate_partners: list[str]
    secagg_stages: dict[str, list[str]]
    federated_loss: float | None = Field(description="Federated validation loss (partners' local hold-outs)")
    federated: dict[str, float] = Field(description="Example-weighted means over partners' local hold-outs")
    metric_source: str
    dropouts: list[Dropout]
    partners: list[PartnerRound]


class PartnerOut(ApiModel):
    partner: str
    runs: list[str]
    rounds_taken_part: int
    last_seen: datetime | None
    connected: bool = Field(description="Taking part in a running run and not dropped out of its latest round")
    dropouts: int


class PromotionOut(ApiModel):
    from_stage: str
    to_stage: str
    by: str
    at: datetime | None
    note: str | None


class ModelOut(ApiModel):
    model_id: str
    run_id: str
    label: str
    round: int | None
    file: str
    sha256: str
    stage: str
    task_name: str
    federated_loss: float | None
    federated: dict[str, float]
    metric_source: str


class ModelDetail(ModelOut):
    promotions: list[PromotionOut]


class Promote(ApiModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    to: Literal["staging", "production", "archived"]
    note: StrictStr | None = Field(None, max_length=1000)


class Lineage(ApiModel):
    """Which partners, rounds, consent-ledger heads, task schema and privacy budget a model comes from."""

    model: ModelDetail
    run: dict[str, Any]
    task: dict[str, str]
    partners: list[str]
    rounds: list[dict[str, Any]]
    ledger_heads: list[dict[str, Any]]
    all_ledger_heads: list[dict[str, Any]]
    privacy: dict[str, Any]
    metric_source: str


# --- auth ---------------------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="A token from `fedcrm coordinator token create`.")
_ERRORS = error_responses({404: "No such run or model", 503: "The registry or token file is unusable right now"})


def _role(*roles: str) -> Callable[..., OperatorToken]:
    def check(request: Request,
              credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> OperatorToken:
        return authorize(request, credentials, roles, log=log)

    return check


Operator = Depends(_role("operator"))
Viewer = Depends(_role("operator", "viewer"))


def _engine(request: Request) -> Engine:
    return request.app.state.engine  # type: ignore[no-any-return]


EngineDep = Annotated[Engine, Depends(_engine)]
RunId = Annotated[str, PathParam(pattern=RUN_ID, description="A run id")]
ModelId = Annotated[str, PathParam(pattern=MODEL_ID, description="'<run id>:final' or '<run id>:round-<k>'")]


def _refresh(request: Request, run_id: str | None = None) -> None:
    """Re-index runs still going, so what is served is what their directories say now."""
    engine = request.app.state.engine
    ids = [run_id] if run_id else [r["run_id"] for r in reg.list_runs(engine) if r["status"] in ("starting", "running")]
    for rid in ids:
        try:
            operator_runs.refresh(engine, rid)
        except RegistryNotFound:
            pass


# --- routers --------------------------------------------------------------------------------

runs = APIRouter(prefix="/runs", tags=["runs"], responses=_ERRORS)
partners = APIRouter(prefix="/partners", tags=["partners"], responses=_ERRORS)
models = APIRouter(prefix="/models", tags=["models"], responses=_ERRORS)


@runs.get("", dependencies=[Viewer])
def list_runs(request: Request, engine: EngineDep) -> list[RunSummary]:
    """Every run in the registry, newest first."""
    _refresh(request)
    return [RunSummary(**r) for r in reg.list_runs(engine)]


@runs.post("", status_code=202, dependencies=[Operator])
def start_run(request: Request, body: StartRun, engine: EngineDep) -> Started:
    """Start a run (`fedcrm coordinator run` as a child process, on the engine this coordinator serves)."""
    try:
        cfg = RunConfig.model_validate(body.config)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "config"
        raise ConfigError(f"config.{where}: {first.get('msg', 'invalid')}") from None
    if not Path(cfg.task).is_file():
        raise ConfigError(f"config.task: {cfg.task} is not a file on the coordinator")
    deployment = request.app.state.deployment
    if deployment is not None and (body.partners is not None or body.num_partners is None):
        raise ConfigError(f"num_partners: this coordinator runs on the deployment engine (SuperLink "
                          f"{deployment.superlink}): give how many partners join, not partner config files")
    if deployment is None and (body.partners is None or body.num_partners is not None):
        raise ConfigError("partners: this coordinator runs on the simulation engine: give the partner config "
                          "files (num_partners is for a coordinator served with --superlink)")
    paths = [Path(p) for p in body.partners or []]
    for i, p in enumerate(paths):
        if not p.is_file() or p.suffix != ".toml":
            raise ConfigError(f"partners.{i}: {p} is not a partner config (.toml) file on the coordinator")
    if len(set(paths)) != len(paths):
        raise ConfigError("partners: the same partner config is named twice")
    if cfg.run_id and (request.app.state.runs_dir / cfg.run_id).exists():
        raise HTTPException(409, f"config.run_id: run {cfg.run_id} already exists")
    from fedcrm.coordinator.runner import check_partner_count

    check_partner_count(cfg, body.num_partners or len(paths))
    run_id = operator_runs.start_run(engine, request.app.state.runs_dir, request.app.state.registry_url,
                                     partners=paths, cfg=cfg, deployment=deployment, num_partners=body.num_partners)
    run = reg.get_run(engine, run_id)
    return Started(run_id=run_id, pid=int(run["pid"]), status=run["status"])


@runs.get("/{run_id}", dependencies=[Viewer])
def get_run(request: Request, run_id: RunId, engine: EngineDep) -> RunDetail:
    """One run: config, status, timings, model choice."""
    _refresh(request, run_id)
    return RunDetail(**reg.get_run(engine, run_id))


@runs.get("/{run_id}/rounds", dependencies=[Viewer])
def get_rounds(request: Request, run_id: RunId, engine: EngineDep) -> list[RoundOut]:
    """Per round: participants, dropouts with reasons, SecAgg+ stages, timings, federated and per-partner metrics."""
    _refresh(request, run_id)
    return [RoundOut(**r) for r in reg.get_rounds(engine, run_id)]


@runs.post("/{run_id}/stop", status_code=202, dependencies=[Operator])
def stop_run(run_id: RunId, engine: EngineDep) -> Signalled:
    """Stop a running run: SIGTERM to its supervising process (the run ends as ``killed``, resumable)."""
    return Signalled(run_id=run_id, pid=operator_runs.stop_run(engine, run_id), action="stop")


@runs.post("/{run_id}/resume", status_code=202, dependencies=[Operator])
def resume_run(request: Request, run_id: RunId, engine: EngineDep) -> Signalled:
    """Resume a killed or failed run from its newest checkpoint (`fedcrm coordinator resume`)."""
    _refresh(request, run_id)
    pid = operator_runs.resume_run(engine, request.app.state.runs_dir, request.app.state.registry_url, run_id)
    return Signalled(run_id=run_id, pid=pid, action="resume")


@partners.get("", dependencies=[Viewer])
def list_partners(request: Request, engine: EngineDep) -> list[PartnerOut]:
    """Every partner: connected now, last seen, rounds taken part in, dropouts."""
    _refresh(request)
    return [PartnerOut(**p) for p in reg.list_partners(engine)]


@models.get("", dependencies=[Viewer])
def list_models(engine: EngineDep, include_rounds: bool = False) -> list[ModelOut]:
    """Models (each run's final model; with ``include_rounds`` every round's too)."""
    return [ModelOut(**m) for m in reg.list_models(engine, include_rounds=include_rounds)]


@models.get("/{model_id}", dependencies=[Viewer])
def get_model(model_id: ModelId, engine: EngineDep) -> ModelDetail:
    """One model with its promotion history."""
    return ModelDetail(**reg.get_model(engine, model_id))


@models.get("/{model_id}/lineage", dependencies=[Viewer])
def get_lineage(model_id: ModelId, engine: EngineDep) -> Lineage:
    """Which partners, rounds, consent-ledger heads, task schema and privacy budget the model comes from."""
    return Lineage(**reg.lineage(engine, model_id))


@models.post("/{model_id}/promote", dependencies=[Operator])
def promote(request: Request, model_id: ModelId, body: Promote, engine: EngineDep) -> ModelDetail:
    """Move a model to staging, production (only from staging) or archived; recorded with who and when."""
    return ModelDetail(**reg.promote(engine, model_id, body.to, by=request.state.principal, note=body.note))


@models.get("/{model_id}/download", dependencies=[Viewer],
            responses={200: {"content": {"application/octet-stream": {"schema": {"type": "string",
                                                                                  "format": "binary"}}},
                             "description": "The safetensors file; header X-Model-SHA256"}})
def download(model_id: ModelId, engine: EngineDep) -> FileResponse:
    """The model file (safetensors), after checking it against the registry and the run's manifest."""
    path = reg.verified_model_path(engine, model_id)
    sha = reg.get_model(engine, model_id)["sha256"]
    return FileResponse(path, media_type="application/octet-stream", filename=f"{model_id.replace(':', '-')}.safetensors",
                        headers={"X-Model-SHA256": sha})


# --- dashboard (HTML; not part of the OpenAPI contract) ----------------------------------------

dashboard = APIRouter(include_in_schema=False)


def _viewer_cookie(request: Request) -> OperatorToken | None:
    try:
        return authenticate(request, request.cookies.get(COOKIE), log=log)
    except AuthorizationError:
        return None


def _html(request: Request, render: Callable[[], str]) -> Response:
    if _viewer_cookie(request) is None:
        return RedirectResponse("/login", status_code=303)
    return HTMLResponse(render())


@dashboard.get("/login")
def login_form() -> HTMLResponse:
    from fedcrm.coordinator.dashboard.pages import login_page

    return HTMLResponse(login_page())


@dashboard.post("/login")
async def login(request: Request) -> Response:
    from fedcrm.coordinator.dashboard.pages import login_page

    form = parse_qs((await request.body()).decode("utf-8", errors="replace"))
    token = (form.get("token") or [""])[0].strip()
    try:
        authenticate(request, token, log=log)
    except AuthorizationError:
        return HTMLResponse(login_page("unknown token"), status_code=401)
    response = RedirectResponse("/", status_code=303)
    response.set_cookie(COOKIE, token, httponly=True, samesite="strict", secure=request.url.scheme == "https")
    return response


@dashboard.get("/")
def runs_page(request: Request) -> Response:
    from fedcrm.coordinator.dashboard.pages import runs_page as render

    def page() -> str:
        _refresh(request)
        engine = request.app.state.engine
        aucs = {m["run_id"]: m["federated"].get("roc_auc") for m in reg.list_models(engine)}
        return render(reg.list_runs(engine), aucs)

    return _html(request, page)


@dashboard.get("/dashboard/runs/{run_id}")
def run_page(request: Request, run_id: RunId) -> Response:
    from fedcrm.coordinator.dashboard.pages import run_page as render

    def page() -> str:
        _refresh(request, run_id)
        engine = request.app.state.engine
        run = reg.get_run(engine, run_id)
        final = f"{run_id}:final"
        lineage = reg.lineage(engine, final) if any(m["model_id"] == final for m in reg.list_models(
            engine, run_id=run_id)) else None
        return render(run, reg.get_rounds(engine, run_id), lineage)

    return _html(request, page)


@dashboard.get("/dashboard/partners")
def partners_page(request: Request) -> Response:
    from fedcrm.coordinator.dashboard.pages import partners_page as render

    def page() -> str:
        _refresh(request)
        engine = request.app.state.engine
        return render(reg.list_partners(engine), reg.partner_summaries(engine), request.app.state.min_count)

    return _html(request, page)


@dashboard.get("/dashboard/models")
def models_page(request: Request) -> Response:
    from fedcrm.coordinator.dashboard.pages import models_page as render

    return _html(request, lambda: render(reg.list_models(request.app.state.engine)))


@dashboard.get("/docs")
def docs(request: Request) -> HTMLResponse:
    """The API reference, rendered from the OpenAPI document on the server (works offline)."""
    return HTMLResponse(render_openapi(request.app.openapi()))


def render_openapi(spec: dict[str, Any]) -> str:
    """An HTML reference of every operation: method, path, summary, role, parameters, body and responses.

    Hand-written because Swagger UI and ReDoc are JavaScript bundles fetched from a CDN by
    FastAPI's default pages, and none is installed here to vendor.
    """
    e = html.escape
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{e(spec['info']['title'])}</title>"
             "<style>body{font-family:system-ui,sans-serif;max-width:70rem;margin:1.5rem auto;padding:0 1rem}"
             ".op{border:1px solid #ccc;border-radius:4px;margin:.8rem 0;padding:.5rem .8rem}"
             ".m{font-weight:700;display:inline-block;min-width:4rem}code{background:#f3f3f3;padding:0 .2rem}"
             "td,th{border:1px solid #ddd;padding:.2rem .5rem;font-size:.9rem}table{border-collapse:collapse}"
             "</style></head><body>",
             f"<h1>{e(spec['info']['title'])} <small>v{e(str(spec['info'].get('version', '')))}</small></h1>",
             f"<p>{e(spec['info'].get('description', ''))}</p>",
             "<p>Machine-readable: <a href='/openapi.json'>/openapi.json</a>. Authenticate with "
             "<code>Authorization: Bearer &lt;token&gt;</code>.</p>"]
    for path, item in spec.get("paths", {}).items():
        for method, op in item.items():
            parts.append(f"<div class='op' id='{e(method)}-{e(path)}'><span class='m'>{e(method.upper())}</span>"
                         f"<code>{e(path)}</code> — {e(op.get('summary', ''))}<p>{e(op.get('description', ''))}</p>")
            params = op.get("parameters", [])
            if params:
                parts.append("<table><tr><th>parameter</th><th>in</th><th>required</th><th>schema</th></tr>")
                for p in params:
                    parts.append(f"<tr><td>{e(p['name'])}</td><td>{e(p['in'])}</td><td>{p.get('required', False)}</td>"
                                 f"<td><code>{e(str(p.get('schema', {})))}</code></td></tr>")
                parts.append("</table>")
            body = op.get("requestBody", {}).get("content", {})
            for media, content in body.items():
                parts.append(f"<p>body ({e(media)}): <code>{e(str(content.get('schema', {})))}</code></p>")
            codes = ", ".join(f"{e(code)} {e(r.get('description', ''))}" for code, r in op.get("responses", {}).items())
            parts.append(f"<p>responses: {codes}</p></div>")
    schemas = spec.get("components", {}).get("schemas", {})
    parts.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        props = schema.get("properties", {})
        rows = "".join(f"<tr><td>{e(k)}</td><td><code>{e(str(v.get('type', v.get('anyOf', v.get('$ref', '')))))}</code>"
                       f"</td><td>{e(v.get('description', ''))}</td></tr>" for k, v in props.items())
        parts.append(f"<h3 id='schema-{e(name)}'>{e(name)}</h3><p>{e(schema.get('description', ''))}</p>"
                     f"<table><tr><th>field</th><th>type</th><th>meaning</th></tr>{rows}</table>")
    parts.append("</body></html>")
    return "".join(parts)


# --- the app ----------------------------------------------------------------------------------


def create_app(engine: Engine, *, tokens_path: Path | str, runs_dir: Path, registry_url: str,
               min_count: int = 10, deployment: operator_runs.DeploymentTarget | None = None) -> FastAPI:
    """The operator API and dashboard over an open registry ``engine`` indexing ``runs_dir``.

    Runs started through the API go to ``deployment``'s SuperLink, or to the simulation engine.
    """
    app = FastAPI(title="fedcrm operator API", version="1", responses=_ERRORS, docs_url=None, redoc_url=None,
                  description="Federated runs, rounds, partners, models, lineage and promotion of one coordinator.")
    app.state.engine = engine
    app.state.tokens = OperatorTokenStore(tokens_path)
    app.state.runs_dir = Path(runs_dir).resolve()
    app.state.registry_url = registry_url
    app.state.min_count = min_count
    app.state.deployment = deployment
    for router in (runs, partners, models, dashboard):
        app.include_router(router)
    add_error_handlers(app, {RegistryNotFound: 404, PromotionRefused: 409, ModelIntegrityError: 409, ConfigError: 422,
                             RegistryError: 503, CoordinatorError: 409})
    add_middleware(app, max_body_bytes=MAX_BODY_BYTES, access_logger="fedcrm.coordinator.access")
    return app
