"""``create_app(settings)``: builds every part from the settings; nothing exists at import time."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy.exc import OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from .. import __version__
from ..callbacks import CallbackSender
from ..config import Settings
from ..domain import Mode
from ..errors import OpenDanceError
from ..keys import KeyService
from ..media.budget import MediaWork
from ..media.fetch import Resolver, SafeFetcher
from ..metrics import CONTENT_TYPE, Metrics
from ..runner.datadir_lock import hold as hold_data_dir
from ..storage import make_storage
from ..store import TaskStore
from ..store.keys import KeyStore
from ..store.migrate import upgrade
from ..web import add_web_routes
from .ark_protocol import PREFIX as ARK_PREFIX, ark_error
from .ark_routes import router as ark_router
from .ark_serving import ArkService
from .auth import Auth, UrlSigner
from .keys_routes import router as keys_router
from .limits import QueueAdmission, RateLimiter
from .openai_routes import router as openai_router
from .quotas import KeyQuotas
from .readiness import WriteProbe
from .route_order import hot_routes_first
from .routes import router
from .serving import TaskService

log = logging.getLogger("opendance")


def make_runner(settings: Settings, store, storage, models: dict):
    if settings.runner == "temporal":
        from ..runner.temporal import TemporalRunner

        return TemporalRunner(settings, store, storage, models)
    from ..runner.local import LocalRunner

    return LocalRunner(settings, store, storage, models)


def create_app(settings: Settings, *, resolver: Resolver | None = None) -> FastAPI:
    """``resolver`` (host, port) -> addresses replaces the system DNS for media and callback
    URLs (split-horizon DNS; tests play DNS rebinding with it)."""
    models = settings.models()  # a bad models file fails here, before anything starts
    if settings.runner == "local":
        from ..runner.executors import check_models

        check_models(settings, models)  # and a model this server's devices cannot run

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        # Store and storage calls run in threads; asyncio's default pool (cores + 4) is too
        # small for a server whose requests mostly wait on SQLite/PostgreSQL.
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(max_workers=32, thread_name_prefix="io"))
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        # The local runner owns its data dir: no second server may recover or sweep it.
        datadir_lock = hold_data_dir(settings.data_dir) if settings.runner == "local" else None
        started = time.time()
        store = TaskStore.from_url(settings.sqlalchemy_url)
        await asyncio.to_thread(upgrade, store.engine)
        storage = make_storage(settings)
        metrics = app.state.metrics
        fetcher = SafeFetcher.from_settings(settings, resolver=resolver)
        callbacks = CallbackSender(
            fetcher,
            settings.callback_attempts,
            settings.callback_timeout,
            settled=lambda task_id, raw_status: asyncio.to_thread(store.callback_settled, task_id, raw_status),
        )
        signer = UrlSigner(await asyncio.to_thread(store.meta_secret, "url_signing_secret"))
        # Media work (decoding, probing) gets its own threads: it can never take all of the io pool above.
        media_work = MediaWork.from_settings(settings)
        await asyncio.to_thread(media_work.clear_spool)
        keys = KeyStore(store.engine)
        auth: Auth = app.state.auth
        auth.attach(keys)
        await asyncio.to_thread(lambda: auth.enabled)  # a key in the store closes the server from the start
        app.state.keys = KeyService(keys, models)
        runner = make_runner(settings, store, storage, models)
        runner.add_listener(metrics.task_changed)
        runner.add_observer(metrics.observe)
        service = TaskService(
            settings,
            models,
            store,
            storage,
            runner,
            fetcher,
            callbacks,
            signer,
            metrics,
            signed_urls=lambda: auth.closed,
            quotas=KeyQuotas(keys),
            admission=QueueAdmission(
                settings.max_queued_per_key,
                settings.max_queued_total,
                store.unfinished_counts,
                store.unfinished_counts_at_once,
            ),
            media_work=media_work,
        )
        app.state.store_probe = WriteProbe(store.check_writable)  # /readyz: can the store take a write now
        service.callback_shapes["ark"] = ArkService(service).render  # tasks made through /api/v3
        metrics.add_collector(lambda: _store_gauges(store, runner))
        metrics.count_finished(store.finished_counts)
        app.state.service = service
        await runner.start()
        # Callbacks a stopped server left pending: in local mode this server is the only one, so
        # every change from before it started is due; other API servers of a scale-out cluster
        # may still be delivering changes of their last moments.
        first = started if settings.runner == "local" else started - callbacks.window
        sweepers = [
            asyncio.create_task(_sweep_leftovers(service), name="leftovers"),
            asyncio.create_task(_sweep_forever(service), name="retention"),
            asyncio.create_task(_resend_callbacks_forever(service, first), name="callbacks"),
            asyncio.create_task(_expire_forever(service), name="expiry"),
        ]
        for line in _model_lines(models):
            log.info("%s", line)
        if not app.state.auth.enabled:
            log.warning(
                "no API keys are set: this server is open, anyone who can reach %s:%s can make and read tasks "
                "(set OPENDANCE_API_KEYS to require keys)",
                settings.host,
                settings.port,
            )
        log.info(
            "opendance %s ready: %s runner, %s storage, models: %s",
            __version__,
            settings.runner,
            settings.storage,
            ", ".join(models),
        )
        try:
            yield
        finally:
            for sweeper in sweepers:
                sweeper.cancel()
            await runner.stop()
            await callbacks.drain()
            await fetcher.aclose()
            media_work.close()
            store.close()
            if datadir_lock is not None:
                datadir_lock.release()

    app = FastAPI(title="opendance", version=__version__, lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.auth = Auth(settings.api_keys)
    app.state.limiter = RateLimiter(settings.rate_limit_per_minute, settings.rate_limit_burst)
    app.state.metrics = Metrics()
    _add_routes(app, router)
    _add_routes(app, openai_router)  # /v1/videos: OpenAI's Videos API and the legacy alias
    _add_routes(app, ark_router)  # /api/v3: the Ark-native API (volcengine-ark-runtime)
    _add_routes(app, keys_router)  # /v1/admin/keys, /v1/usage
    add_web_routes(app)  # the playground at /, and /docs and /redoc from packaged assets (no CDN)
    _add_health_routes(app)
    hot_routes_first(app)  # polls and creates are tried first (api/route_order.py)
    _add_error_handlers(app)
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)
    return app


def _add_routes(app: FastAPI, router: APIRouter) -> None:
    """``router``'s routes as the app's own, in order. ``include_router`` (FastAPI 0.165) keeps
    the router as one lazily resolved branch whose every request goes through a wrapper per
    route it tries (``_IncludedRouter``, ``_EffectiveRouteContext``): a fifth of the routing and
    dispatch time of a GET. Ours have no prefix, tags, dependencies or lifespan to merge, so the
    routes themselves can be the app's, matched as the floor app's are."""
    assert not router.prefix and not router.dependencies and not router.on_startup and not router.on_shutdown
    app.router.routes.extend(router.routes)


async def _sweep_leftovers(service: TaskService) -> None:
    """Once at start, in the background: what a killed process left in storage."""
    try:
        await service.sweep_leftovers()
    except Exception:
        log.exception("sweeping leftovers of killed processes failed")


async def _sweep_forever(service: TaskService, every: float = 600.0) -> None:
    while True:
        try:
            await service.sweep_retention()
        except Exception:
            log.exception("retention sweep failed")
        await asyncio.sleep(min(every, max(1.0, service.settings.retention_hours * 3600 / 10)))


async def _expire_forever(service: TaskService, every: float = 1.0) -> None:
    """Tasks past their execution_expires_after become EXPIRED within about ``every`` seconds."""
    while True:
        try:
            await service.expire_due()
        except Exception:
            log.exception("expiring tasks failed")
        await asyncio.sleep(every)


async def _resend_callbacks_forever(service: TaskService, first: float, every: float = 60.0) -> None:
    changed_before = first
    while True:
        try:
            if sent := await service.resend_due_callbacks(changed_before):
                log.info("sent %d callbacks left pending by a server that stopped", sent)
        except Exception:
            log.exception("resending pending callbacks failed")
        await asyncio.sleep(every)
        # Later rounds: changes whose delivery has had every attempt's time and is still marked.
        changed_before = time.time() - service.callbacks.window - 5.0


def _model_lines(models: dict) -> list[str]:
    """One line per model: which engine makes which of its modes (``preview`` is no model)."""
    lines = []
    for name, model in models.items():
        by_engine: dict[str, list[str]] = {}
        for mode, spec in model.modes.items():
            by_engine.setdefault(spec.engine, []).append(mode.value)
        named = {_engine_label(engine): modes for engine, modes in by_engine.items()}
        if len(named) == 1 and len(model.modes) == len(Mode):
            how = f"{next(iter(named))} for every mode"
        else:
            how = "; ".join(f"{engine} for {', '.join(modes)}" for engine, modes in named.items())
        lines.append(f"model {name} ({model.resolution}, {model.fps} fps): {how}")
    return lines


def _engine_label(engine: str) -> str:
    return "the preview engine (procedural videos, no model weights)" if engine == "preview" else f"the {engine} engine"


def _store_gauges(store: TaskStore, runner) -> dict:
    counts = store.count_by_status()
    return {
        "opendance_tasks": ("tasks in the store by raw status", {(k,): v for k, v in counts.items()}, ["raw_status"]),
        **Metrics.runner_gauges(runner.health()),
    }


def _add_health_routes(app: FastAPI) -> None:
    @app.get("/healthz", include_in_schema=True)
    async def healthz() -> dict:
        return {"status": "ok"}

    @app.get("/readyz", responses={503: {"description": "not ready"}})
    async def readyz(request: Request) -> JSONResponse:
        service: TaskService | None = getattr(request.app.state, "service", None)
        checks: dict[str, object] = {}
        ok = service is not None
        if service is not None:
            probes = (("store", service.store.ping), ("store_writable", request.app.state.store_probe.check))
            for name, check in (*probes, ("storage", service.storage.check_writable)):
                try:
                    await asyncio.to_thread(check)
                    checks[name] = "ok"
                except Exception as exc:
                    checks[name] = f"failed: {type(exc).__name__}: {exc}"
                    ok = False
            runner = service.runner.health()
            checks["runner"] = runner
            ok = ok and bool(runner.get("ok"))
            failures = getattr(getattr(request.app.state, "metrics", None), "load_failures", None)
            if failures:  # models whose engine failed to load: their tasks fail until the retry works
                checks["model_loads"] = {"failed": dict(failures)}
        return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503)

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics(request: Request) -> Response:
        body = await asyncio.to_thread(request.app.state.metrics.render)
        return Response(body, media_type=CONTENT_TYPE)


def _respond(request: Request, body: dict, status: int, headers=None) -> JSONResponse:
    """The one error shape; under /api/v3 in Ark's words (the Ark SDK reads those)."""
    if request.url.path.startswith(ARK_PREFIX + "/"):
        body = ark_error(status, body["error"])
    return JSONResponse(body, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(OpenDanceError)
    async def domain_error(request: Request, exc: OpenDanceError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return _respond(request, exc.to_dict(), exc.status, headers)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        message = "no such route" if exc.status_code == 404 else str(exc.detail)
        headers = dict(getattr(exc, "headers", None) or {})
        if exc.status_code == 405:
            # Starlette names the methods of the first route that matched the path only; a path
            # served by several routes (GET list + POST create) allows all of theirs.
            allowed = allowed_methods(request)
            headers["Allow"] = ", ".join(allowed)
            message = f"{request.method} is not allowed here; allowed: {', '.join(allowed)}"
        body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}
        return _respond(request, body, exc.status_code, headers or None)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {}
        loc = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path", "header")]
        param = ".".join(loc) or None
        message = f"{param}: {first.get('msg', 'invalid')}" if param else str(first.get("msg", "invalid request"))
        body = {"error": {"message": message, "type": "invalid_request_error", "param": param, "code": "invalid_value"}}
        return _respond(request, body, 400)

    @app.exception_handler(OperationalError)
    async def store_unavailable(request: Request, exc: OperationalError) -> JSONResponse:
        # The database did not take a write or a read (SQLite on a full disk, PostgreSQL gone):
        # the server's trouble, for a while; nothing of the request was stored.
        log.error("the task store failed on %s %s: %s", request.method, request.url.path, exc.orig)
        message = "the server could not store this change (its database did not take the write); try again later"
        body = {"error": {"message": message, "type": "server_error", "param": None, "code": "storage_error"}}
        return _respond(request, body, 503, {"Retry-After": "30"})

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        body = {"error": {"message": "internal server error", "type": "server_error", "param": None, "code": "internal_error"}}
        return _respond(request, body, 500)


# Methods counted under their own name; any other (h11 accepts any token as a method) is OTHER,
# so clients cannot add series to /metrics by inventing method names.
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path (asked of the routes themselves,
    through ``matches``, so included routers count as well)."""
    routes = request.app.router.routes
    return [m for m in sorted(KNOWN_METHODS) if any(r.matches({**request.scope, "method": m})[0] is Match.FULL for r in routes)]


class MetricsMiddleware:
    """Counts and times every request by its route template (pure ASGI: no body buffering).

    Labels are bounded: the method is one of ``KNOWN_METHODS`` or ``OTHER``, the route is a
    template of the app's own routes or ``unmatched``, the status is one the app answered.
    """

    def __init__(self, app, metrics: Metrics) -> None:
        self.app = app
        self.record = metrics.http.record

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_and_record(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            method = scope["method"]
            self.record(
                method if method in KNOWN_METHODS else "OTHER",
                getattr(scope.get("route"), "path", "unmatched"),
                status,
                time.perf_counter() - t0,
            )
