"""The regulator query service: a FastAPI app over ``LAKE/published/current``.

(No ``from __future__ import annotations`` here: FastAPI reads the endpoint annotations at run time.)

Thin by design: the data work lives in ``serving.store`` (lookups, search, lists, history), the
rules in ``serving.tokens``, ``serving.disclosure`` (masking), ``serving.audit`` and ``serving.limits`` and ``config/service.toml``.
"""

import json
import logging
import re
import threading
import tomllib
import unicodedata
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi import Path as PathParam
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from swagger_ui_bundle import swagger_ui_path

from foundation.settings import config_path
from serving.audit import AuditDamaged, AuditLog, AuditSettings, RefusalTally
from serving.disclosure import View, load_policy, mask_value
from serving.limits import RateLimiter, retry_after
from serving.models import SOURCE_COUNT_FIELDS, ApiError, ApiModels, ListCatalogue, RunsResponse
from serving.report import FirmReport, ReportError, print_pdf
from serving.report import document as report_document
from serving.report import fragment as report_fragment
from serving.server import SERVICE_FILE
from serving.store import (
    HISTORY_COLUMNS,
    SUMMARY_COLUMNS,
    CodeError,
    VersionStore,
    grades,
    offered_lists,
)
from serving.tokens import Principal, TokenBook, TokenRefused, TokensDamaged

log = logging.getLogger(__name__)
PAGES = Path(__file__).resolve().parent / "pages"
_CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")
#: the OpenAPI security scheme: "Authorize" in /docs sends ``Authorization: Bearer <token>``; the
#: token itself is checked by ``principal`` (auto_error off, so its 401 says what is wrong)
BEARER = HTTPBearer(auto_error=False, scheme_name="bearer", description="a token from `credit token create`")


def errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the refusals a route can answer (the body of ``http_error``)."""
    return {status: {"model": ApiError} for status in statuses}


#: money (decimal in 元) as a JSON number with its exact digits, "lending_amount": 1234.50, never a
#: string nor a rounded float: a client parses it as a number, or exactly with a decimal parser
_ENCODER = msgspec.json.Encoder(decimal_format="number")


class FastJSON(JSONResponse):
    """JSON via msgspec: dates and nested lists without FastAPI's slow per-value encoder."""

    def render(self, content: Any) -> bytes:
        return _ENCODER.encode(content)


def reply(payload: dict[str, Any]) -> FastJSON:
    return FastJSON(payload)


class Current:
    """The version being served; swapped whole when ``published/current`` moves."""

    def __init__(self, lake: Path) -> None:
        self.lake = lake
        self.link = lake / "published" / "current"
        self.store: VersionStore | None = None
        self._lock = threading.Lock()
        self.refresh()

    def refresh(self) -> bool:
        """Load the version ``current`` points at if it is not the one served; True when swapped."""
        try:
            target = self.link.resolve(strict=True)
        except FileNotFoundError:
            return False
        if self.store is not None and self.store.path == target:
            return False
        with self._lock:
            if self.store is not None and self.store.path == target:
                return False
            store = VersionStore.load(self.lake, target)  # built aside; queries keep the old one
            self.store = store
            log.info("now serving version %s", store.version)
            return True

    def get(self) -> VersionStore:
        store = self.store
        if store is None:
            raise HTTPException(503, f"nothing published yet under {self.link}")
        return store


def _watch(current: Current, interval: float, stop: threading.Event) -> None:
    while not stop.wait(interval):
        try:
            current.refresh()
        except Exception:  # noqa: BLE001 - a half-visible version must not stop the watcher
            log.exception("could not load the new version; still serving the old one")


def load_config(path: Path | None = None) -> dict[str, Any]:
    """``path``, else config/service.toml or CREDIT_SERVICE_CONFIG's file (resolved at call time)."""
    return tomllib.loads((path or config_path(SERVICE_FILE)).read_text("utf-8"))


def audit_settings(config: dict[str, Any]) -> AuditSettings:
    """``[audit]`` of ``config`` over the defaults in config/service.toml, key by key."""
    return AuditSettings.from_sections(load_config().get("audit", {}), config.get("audit", {}))


def client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def create_app(lake: Path, config: dict[str, Any] | None = None, watch: bool = True) -> FastAPI:
    config = config or load_config()
    limits = config.get("limits", {})
    max_query = int(limits.get("max_query_chars", 100))
    max_page = int(limits.get("max_page_size", 200))
    # the lists and grades this app offers: the grading the settings name when it is created
    offered, grade_names = offered_lists(), grades()
    list_names = tuple(offered)
    current = Current(lake)
    tokens = TokenBook(lake)  # TokensDamaged / AuditDamaged here: `credit serve` refuses to start
    settings = audit_settings(config)
    audit = AuditLog(lake, settings)
    refusals = RefusalTally(audit, settings.tally_window_seconds, settings.tally_callers_per_window)
    limiter = RateLimiter.from_config(config)
    stop = threading.Event()
    policy = load_policy()

    models = ApiModels(policy)
    app = FastAPI(
        title="Enterprise credit profiles",
        version="1",
        docs_url=None,  # /docs below: Swagger UI from a package, no CDN, no inline script
        redoc_url=None,
        responses=errors(401, 429, 503),
        description="Queries over the published credit profiles. Send `Authorization: Bearer <token>` "
        "(`credit token create`). Regulators see full profiles and every query they make is audited. "
        + policy.describe(),
    )
    app.state.current = current

    @app.on_event("startup")
    def start_watching() -> None:
        if watch:
            interval = float(config.get("reload", {}).get("check_seconds", 2))
            threading.Thread(target=_watch, args=(current, interval, stop), daemon=True).start()

    @app.on_event("shutdown")
    def stop_watching() -> None:
        stop.set()

    @app.on_event("shutdown")
    def write_tallied_refusals() -> None:
        refusals.close()

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        try:
            who = tokens.authenticate(token.strip() if scheme.lower() == "bearer" else "")
        except TokensDamaged as exc:
            log.error("%s", exc)
            raise HTTPException(
                503,
                f"service/{exc.path.name} is damaged ({exc.problem}); tokens cannot be checked until "
                "the operator restores it",
            ) from exc
        except TokenRefused as refused:
            request.state.principal = refused.principal  # known for an expired or revoked token
            # guessing tokens costs the guesser: requests without a valid token are limited per address
            if wait := limiter.address_wait(client_address(request)):
                raise HTTPException(
                    429, "too many requests without a valid token", headers={"Retry-After": retry_after(wait)}
                ) from None
            raise HTTPException(401, str(refused), headers={"WWW-Authenticate": "Bearer"}) from None
        who = replace(who, client_address=client_address(request))
        request.state.principal = who
        if wait := limiter.token_wait(who.token_hash):
            raise HTTPException(
                429, "rate limit exceeded; slow down", headers={"Retry-After": retry_after(wait)}
            )
        return who

    def authorised(
        who: Annotated[Principal, Depends(principal)],
        _: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)],
    ) -> Principal:
        """``principal``, declared with the bearer scheme so the OpenAPI description has it."""
        return who

    Who = Annotated[Principal, Depends(authorised)]

    def disclosed(who: Principal) -> View:
        """The caller's view (config/disclosure.toml): every response row passes through it."""
        return policy.view(who.role)

    def served_version() -> str | None:
        return current.store.version if current.store is not None else None

    def record(who: Principal, action: str, query: dict[str, Any], results: int, status: int = 200) -> None:
        """A regulator's query goes into the audit trail before its answer goes out, or it gets 503."""
        if not who.regulator:
            return
        try:
            audit.append(
                {
                    "who": who.name,
                    "role": who.role,
                    "token": who.token_prefix,
                    "address": who.client_address,
                    "version": served_version(),
                    "action": action,
                    "query": query,
                    "results": results,
                    "status": status,
                }
            )
        except (AuditDamaged, OSError) as exc:
            log.error("audit trail: %s", exc)
            raise HTTPException(
                503,
                f"the audit trail cannot be written ({str(exc).replace(str(lake), 'LAKE')}); regulator "
                "queries are refused until the operator repairs it (`credit audit verify`)",
            ) from exc

    def record_refusal(request: Request, status: int, reason: str) -> None:
        """Every 4xx of the API, tallied when it costs the caller nothing (``[audit] tallied_statuses``)."""
        if not 400 <= status < 500 or not request.url.path.startswith("/api/"):
            return
        who: Principal | None = getattr(request.state, "principal", None)
        route = request.scope.get("route")
        asked = {**request.path_params, **request.query_params}
        fields = {
            "who": who.name if who else None,
            "role": who.role if who else None,
            "token": who.token_prefix if who else None,
            "address": client_address(request),
            "version": served_version(),
            "action": "refused",
            "route": getattr(route, "path", None) or request.url.path[:100],
            "query": {str(k)[:40]: str(v)[:max_query] for k, v in list(asked.items())[:10]},
            "status": status,
            "reason": reason[:300],
        }
        try:
            if status in settings.tallied_statuses:
                refusals.note(fields)
            else:
                audit.append(fields)
        except (AuditDamaged, OSError) as exc:  # the refusal still goes out; the operator is told
            log.error("audit trail: could not record a refused request: %s", exc)

    def clean_text(value: str, what: str) -> str:
        text = unicodedata.normalize("NFKC", value).strip()
        if not text:
            raise HTTPException(400, f"{what} is empty")
        if len(text) > max_query:
            raise HTTPException(400, f"{what} is longer than {max_query} characters")
        if _CONTROL.search(text):
            raise HTTPException(400, f"{what} holds control characters or markup")
        return text

    def firm(who: Principal, code: str, action: str) -> tuple[VersionStore, dict[str, Any]]:
        """The profile a code names, as the caller may see it (one the caller may not see is not found)."""
        store = current.get()
        try:
            found = store.find(code, disclosed(who))
        except CodeError as exc:
            raise HTTPException(400, f"malformed code: {exc}") from exc
        if found is None:
            # the code is not echoed: a firm hidden from the caller answers exactly as one that does not exist
            raise HTTPException(404, f"no firm with that code in version {store.version}")
        return store, disclosed(who).rows(found)[0]

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> FastJSON:
        store = current.store
        return reply({"ok": store is not None, "version": store.version if store else None})

    @app.get("/api/v1/version", summary="The version being served", response_model=models.version)
    def version(who: Who) -> FastJSON:
        store = current.get()
        record(who, "version", {}, 1)
        return reply(
            {
                "version": store.version,
                "business_date": store.manifest.get("business_date"),
                "counts": store.manifest.get("counts"),
                "profiles": store.visible_count(disclosed(who)),
            }
        )

    @app.get(
        "/api/v1/profiles/{code}",
        summary="A firm's profile by USCC, organization code or old registration number",
        response_model=models.profile,
        responses=errors(400, 404),
    )
    def profile(code: Annotated[str, PathParam(max_length=40)], who: Who) -> FastJSON:
        store, found = firm(who, code, "profile")
        record(who, "profile", {"code": code}, 1)
        return reply({"version": store.version, "profile": found})

    @app.get(
        "/api/v1/profiles/{code}/evidence",
        summary="Each record linked to the firm, with its match grade and confidence",
        response_model=models.evidence,
        responses=errors(400, 404),
    )
    def evidence(code: Annotated[str, PathParam(max_length=40)], who: Who) -> FastJSON:
        store, found = firm(who, code, "evidence")
        links = store.evidence(found["entity_id"])
        record(who, "evidence", {"code": code}, links.height)
        records = disclosed(who).records(links, found.get("entity_type"))
        return reply({"version": store.version, "entity_id": found["entity_id"], "records": records})

    @app.get(
        "/api/v1/profiles/{code}/history",
        summary="The firm's grade, score and lists in every kept version",
        response_model=models.history,
        responses=errors(400, 404),
    )
    def history(code: Annotated[str, PathParam(max_length=40)], who: Who) -> FastJSON:
        store, found = firm(who, code, "history")
        versions = disclosed(who).rows(store.history(found["entity_id"]), ("version", *HISTORY_COLUMNS))
        record(who, "history", {"code": code}, len(versions))
        return reply({"entity_id": found["entity_id"], "versions": versions})

    @app.get(
        "/api/v1/profiles/{code}/report",
        summary="The firm's credit report (信用报告): HTML (what the firm page shows) or PDF",
        response_class=Response,
        responses={
            200: {
                "description": "the report, as asked by `format`",
                "content": {
                    "text/html": {"schema": {"type": "string"}},
                    "application/pdf": {"schema": {"type": "string", "format": "binary"}},
                },
            },
            **errors(400, 404),
        },
    )
    def credit_report(
        code: Annotated[str, PathParam(max_length=40)],
        who: Who,
        format: Annotated[str, Query(pattern="^(html|pdf)$")] = "html",
    ) -> Response:
        store, found = firm(who, code, "report")
        report = FirmReport.gather(store, disclosed(who), found)
        if format == "html":
            record(who, "report", {"code": code, "format": format}, 1)
            return HTMLResponse(report_fragment(report))
        try:
            pdf = print_pdf(report_document(report))
        except ReportError as exc:
            log.error("credit report: %s", exc)
            raise HTTPException(503, f"the PDF cannot be printed: {exc}") from exc
        record(who, "report", {"code": code, "format": format}, 1)
        name = f"credit-report-{found.get('uscc') or found['entity_id']}.pdf"
        return Response(
            pdf,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    @app.get(
        "/api/v1/search",
        summary="Fuzzy name search, ranked, with scores (0-100)",
        response_model=models.search,
        responses=errors(400),
    )
    def search(
        who: Who,
        q: Annotated[str, Query(max_length=400)],
        limit: Annotated[int, Query(ge=1, le=100)] = int(limits.get("search_results", 20)),
    ) -> FastJSON:
        text = clean_text(q, "q")
        store = current.get()
        hits = disclosed(who).rows(
            store.search(text, limit, disclosed(who)), (*SUMMARY_COLUMNS, "match_score")
        )
        record(who, "search", {"q": text, "limit": limit}, len(hits))
        return reply({"version": store.version, "query": disclosed(who).text(text), "hits": hits})

    @app.get(
        "/api/v1/search/legal-representative",
        summary="Firms by legal representative (regulators only)",
        response_model=models.legal_rep,
        responses=errors(400, 403),
    )
    def by_legal_rep(
        who: Who, name: Annotated[str, Query(max_length=400)], limit: Annotated[int, Query(ge=1, le=100)] = 50
    ) -> FastJSON:
        if not who.regulator:
            raise HTTPException(403, "search by legal representative is for regulators only")
        text = clean_text(name, "name")
        store = current.get()
        hits = disclosed(who).rows(store.by_legal_rep(text, limit), SUMMARY_COLUMNS)
        record(who, "search_legal_representative", {"name": text}, len(hits))
        return reply({"version": store.version, "hits": hits})

    @app.get(
        "/api/v1/lists",
        summary="The lists and grades one can filter by (from config/grading.toml)",
        response_model=ListCatalogue,
    )
    def list_catalogue(who: Who) -> FastJSON:
        return reply(
            {
                "lists": [{"name": n, "label": zh, "label_en": en} for n, (zh, en) in offered.items()],
                "grades": list(grade_names),
            }
        )

    @app.get(
        "/api/v1/lists/{name}",
        summary="A list of firms, filtered and paginated",
        response_model=models.listing,
        responses=errors(400),
    )
    def listing(
        who: Who,
        name: Annotated[str, PathParam(pattern="^(" + "|".join(list_names) + ")$")],
        division: Annotated[str | None, Query(pattern=r"^\d{2,6}$")] = None,
        industry: Annotated[str | None, Query(max_length=40)] = None,
        grade: Annotated[str | None, Query(pattern="^(" + "|".join(grade_names) + ")$")] = None,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        size: Annotated[int, Query(ge=1)] = 50,
    ) -> FastJSON:
        size = min(size, max_page)
        if industry is not None:
            industry = clean_text(industry, "industry")
        store = current.get()
        total, frame = store.listing(name, division, industry, grade, (page - 1) * size, size, disclosed(who))
        rows = disclosed(who).rows(frame, SUMMARY_COLUMNS)
        record(
            who,
            "list",
            {
                "list": name,
                "division": division,
                "industry": industry,
                "grade": grade,
                "page": page,
                "size": size,
            },
            len(rows),
        )
        return reply(
            {
                "version": store.version,
                "list": name,
                "total": total,
                "page": page,
                "size": size,
                "firms": rows,
            }
        )

    @app.get(
        "/api/v1/runs",
        summary="The latest nightly runs and their data-quality summary",
        response_model=RunsResponse,
    )
    def runs(who: Who, limit: Annotated[int, Query(ge=1, le=60)] = 10) -> FastJSON:
        reports = sorted((lake / "reports").glob("*/summary.json"), reverse=True)[:limit]
        out = []
        for path in reports:
            summary = json.loads(path.read_text("utf-8"))
            out.append(
                {
                    "business_date": summary.get("business_date"),
                    "published": summary.get("published"),
                    "version": summary.get("version"),
                    "run_id": summary.get("run_id"),
                    "books_balanced": summary.get("books", {}).get("balanced"),
                    "sources": {
                        name: {k: s.get(k) for k in SOURCE_COUNT_FIELDS}
                        for name, s in summary.get("sources", {}).items()
                    },
                }
            )
        record(who, "runs", {"limit": limit}, len(out))
        return reply({"serving": current.get().version, "runs": disclosed(who).value(out)})

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        record_refusal(request, exc.status_code, str(exc.detail))
        # an error echoes what was typed, which may be someone's ID or phone number: masked for everyone
        return JSONResponse(
            {"error": mask_value(exc.detail), "status": exc.status_code},
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(RequestValidationError)
    def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(map(str, e.get('loc', ())))}: {e.get('msg')}" for e in exc.errors())
        record_refusal(request, 422, problems)
        detail = mask_value(jsonable_encoder(exc.errors()))
        return JSONResponse({"detail": detail}, status_code=422)

    @app.middleware("http")
    async def security_headers(request: Request, call_next: Any) -> Any:
        response = await call_next(request)
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Content-Security-Policy", "default-src 'self'; img-src 'self' data:")
        response.headers.setdefault("Cache-Control", "no-store")
        return response

    # ------------------------------------------------------------ pages (data comes from the API)
    app.mount("/static", StaticFiles(directory=PAGES / "static"), name="static")

    @app.get("/", include_in_schema=False)
    def home() -> RedirectResponse:
        return RedirectResponse("/search")

    @app.get("/search", include_in_schema=False)
    def search_page() -> FileResponse:
        return FileResponse(PAGES / "search.html")

    @app.get("/firm/{entity_id}", include_in_schema=False)
    def firm_page(entity_id: Annotated[str, PathParam(max_length=40)]) -> FileResponse:
        return FileResponse(PAGES / "firm.html")

    @app.get("/runs", include_in_schema=False)
    def runs_page() -> FileResponse:
        return FileResponse(PAGES / "runs.html")

    # the API description in Swagger UI, whose files the swagger-ui-bundle package ships
    app.mount("/docs/assets", StaticFiles(directory=swagger_ui_path), name="docs-assets")

    @app.get("/docs", include_in_schema=False)
    def docs_page() -> FileResponse:
        return FileResponse(PAGES / "docs.html")

    return app
