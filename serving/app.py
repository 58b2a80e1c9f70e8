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
from pathlib import Path
from typing import Annotated, Any

import msgspec
from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, JSONResponse, RedirectResponse
from fastapi.staticfiles import StaticFiles

from pipelines.lake import REPO_ROOT
from serving.audit import AuditLog
from serving.disclosure import mask_for_public
from serving.limits import RateLimiter, retry_after
from serving.store import LISTS, CodeError, VersionStore
from serving.tokens import Principal, TokenBook

log = logging.getLogger(__name__)
DEFAULT_CONFIG = REPO_ROOT / "config" / "service.toml"
PAGES = Path(__file__).resolve().parent / "pages"
_CONTROL = re.compile(r"[\x00-\x1f\x7f<>]")


class FastJSON(JSONResponse):
    """JSON via msgspec: dates and nested lists without FastAPI's slow per-value encoder."""

    def render(self, content: Any) -> bytes:
        return msgspec.json.encode(content)


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
    return tomllib.loads((path or DEFAULT_CONFIG).read_text("utf-8"))


def create_app(lake: Path, config: dict[str, Any] | None = None, watch: bool = True) -> FastAPI:
    config = config or load_config()
    limits = config.get("limits", {})
    max_query = int(limits.get("max_query_chars", 100))
    max_page = int(limits.get("max_page_size", 200))
    current = Current(lake)
    tokens = TokenBook(lake)
    audit = AuditLog(lake)
    limiter = RateLimiter.from_config(config)
    stop = threading.Event()

    app = FastAPI(
        title="Enterprise credit profiles",
        version="1",
        description="Queries over the published credit profiles. Send `Authorization: Bearer <token>` "
        "(`credit token create`). Regulators see full profiles and every query they make is audited; the "
        "public sees the masked view.",
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

    def principal(request: Request) -> Principal:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        who = tokens.authenticate(token.strip()) if scheme.lower() == "bearer" else None
        if who is None:
            if wait := limiter.address_wait(request.client.host if request.client else None):
                raise HTTPException(
                    429, "too many requests without a valid token", headers={"Retry-After": retry_after(wait)}
                )
            raise HTTPException(
                401, "a valid bearer token is required", headers={"WWW-Authenticate": "Bearer"}
            )
        if wait := limiter.token_wait(who.token_hash):
            raise HTTPException(
                429, "rate limit exceeded; slow down", headers={"Retry-After": retry_after(wait)}
            )
        return who

    Who = Annotated[Principal, Depends(principal)]

    def view(who: Principal, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return rows if who.regulator else [mask_for_public(r) for r in rows]

    def record(who: Principal, action: str, query: dict[str, Any], results: int, status: int = 200) -> None:
        if who.regulator:
            audit.append(who, action, query, results, status)

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
        store = current.get()
        try:
            found = store.find(code)
        except CodeError as exc:
            record(who, action, {"code": code[:40]}, 0, 400)
            raise HTTPException(400, f"malformed code: {exc}") from exc
        if found is None:
            record(who, action, {"code": code}, 0, 404)
            raise HTTPException(404, f"no firm with code {code} in version {store.version}")
        return store, found

    @app.get("/healthz", include_in_schema=False)
    def healthz() -> FastJSON:
        store = current.store
        return reply({"ok": store is not None, "version": store.version if store else None})

    @app.get("/api/v1/version", summary="The version being served")
    def version(who: Who) -> dict[str, Any]:
        store = current.get()
        return reply(
            {
                "version": store.version,
                "business_date": store.manifest.get("business_date"),
                "counts": store.manifest.get("counts"),
                "profiles": store.profiles.height,
            }
        )

    @app.get(
        "/api/v1/profiles/{code}",
        summary="A firm's profile by USCC, organization code or old registration number",
    )
    def profile(code: Annotated[str, PathParam(max_length=40)], who: Who) -> dict[str, Any]:
        store, found = firm(who, code, "profile")
        record(who, "profile", {"code": code}, 1)
        return reply({"version": store.version, "profile": view(who, [found])[0]})

    @app.get(
        "/api/v1/profiles/{code}/evidence",
        summary="Each record linked to the firm, with its match grade and confidence",
    )
    def evidence(code: Annotated[str, PathParam(max_length=40)], who: Who) -> dict[str, Any]:
        store, found = firm(who, code, "evidence")
        links = store.evidence(found["entity_id"])
        record(who, "evidence", {"code": code}, len(links))
        return reply({"version": store.version, "entity_id": found["entity_id"], "records": view(who, links)})

    @app.get(
        "/api/v1/profiles/{code}/history", summary="The firm's grade, score and lists in every kept version"
    )
    def history(code: Annotated[str, PathParam(max_length=40)], who: Who) -> dict[str, Any]:
        store, found = firm(who, code, "history")
        versions = store.history(found["entity_id"])
        record(who, "history", {"code": code}, len(versions))
        return reply({"entity_id": found["entity_id"], "versions": view(who, versions)})

    @app.get("/api/v1/search", summary="Fuzzy name search, ranked, with scores (0-100)")
    def search(
        who: Who,
        q: Annotated[str, Query(max_length=400)],
        limit: Annotated[int, Query(ge=1, le=100)] = int(limits.get("search_results", 20)),
    ) -> dict[str, Any]:
        text = clean_text(q, "q")
        store = current.get()
        hits = store.search(text, limit)
        record(who, "search", {"q": text, "limit": limit}, len(hits))
        return reply({"version": store.version, "query": text, "hits": view(who, hits)})

    @app.get("/api/v1/search/legal-representative", summary="Firms by legal representative (regulators only)")
    def by_legal_rep(
        who: Who, name: Annotated[str, Query(max_length=400)], limit: Annotated[int, Query(ge=1, le=100)] = 50
    ) -> dict[str, Any]:
        if not who.regulator:
            raise HTTPException(403, "search by legal representative is for regulators only")
        text = clean_text(name, "name")
        store = current.get()
        hits = store.by_legal_rep(text, limit)
        record(who, "search_legal_representative", {"name": text}, len(hits))
        return reply({"version": store.version, "hits": hits})

    @app.get("/api/v1/lists/{name}", summary="A list of firms, filtered and paginated")
    def listing(
        who: Who,
        name: Annotated[str, PathParam(pattern="^(" + "|".join(LISTS) + ")$")],
        division: Annotated[str | None, Query(pattern=r"^\d{2,6}$")] = None,
        industry: Annotated[str | None, Query(max_length=40)] = None,
        grade: Annotated[str | None, Query(pattern="^[ABCD]$")] = None,
        page: Annotated[int, Query(ge=1, le=100_000)] = 1,
        size: Annotated[int, Query(ge=1)] = 50,
    ) -> dict[str, Any]:
        size = min(size, max_page)
        if industry is not None:
            industry = clean_text(industry, "industry")
        store = current.get()
        total, rows = store.listing(name, division, industry, grade, (page - 1) * size, size)
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
                "firms": view(who, rows),
            }
        )

    @app.get("/api/v1/runs", summary="The latest nightly runs and their data-quality summary")
    def runs(who: Who, limit: Annotated[int, Query(ge=1, le=60)] = 10) -> dict[str, Any]:
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
                        name: {
                            k: s.get(k)
                            for k in (
                                "extracted",
                                "accepted",
                                "quarantined",
                                "snapshot_records",
                                "stale",
                                "problems",
                            )
                        }
                        for name, s in summary.get("sources", {}).items()
                    },
                }
            )
        record(who, "runs", {"limit": limit}, len(out))
        return reply({"serving": current.get().version, "runs": out})

    @app.exception_handler(HTTPException)
    def http_error(request: Request, exc: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": exc.detail, "status": exc.status_code}, status_code=exc.status_code, headers=exc.headers
        )

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

    return app
