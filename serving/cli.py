"""`credit serve`, `credit token create` and `credit audit verify`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.lake import DEFAULT_LAKE


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from serving.app import create_app, load_config

    lake = Path(args.lake)
    if not (lake / "published").is_dir():
        raise FileNotFoundError(f"no published versions under {lake}; run `credit run` first")
    app = create_app(lake, load_config(Path(args.config) if args.config else None))
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=args.access_log,
        limit_concurrency=args.limit_concurrency,
        timeout_keep_alive=30,
        h11_max_incomplete_event_size=16 * 1024,
    )
    return 0


def cmd_token_create(args: argparse.Namespace) -> int:
    from serving.tokens import create_token

    print(create_token(Path(args.lake), args.role, args.name))
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from serving.audit import verify_audit
    from serving.tokens import service_dir

    intact, entries, problem = verify_audit(service_dir(Path(args.lake)) / "audit.jsonl")
    print(json.dumps({"intact": intact, "entries": entries, "problem": problem}))
    return 0 if intact else 2


def register(sub: argparse._SubParsersAction) -> None:
    serve = sub.add_parser(
        "serve",
        help="the regulator query service (API + web pages) over LAKE/published/current",
        description="Serves the published profiles over HTTP: API under /api/v1 (OpenAPI docs at /docs), web "
        "pages at /search, /firm/<id> and /runs. A newly published version is picked up without a restart.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    serve.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder holding published/")
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on")
    serve.add_argument("--port", type=int, default=8000, help="TCP port")
    serve.add_argument("--config", default=None, help="service settings (default config/service.toml)")
    serve.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    serve.add_argument("--access-log", action="store_true", help="log every request")
    serve.add_argument(
        "--limit-concurrency", type=int, default=200, help="requests in flight before the service answers 503"
    )
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="access tokens for the query service")
    token_sub = token.add_subparsers(dest="token_command", required=True)
    create = token_sub.add_parser(
        "create",
        help="create a token and print it (only its hash is stored, in LAKE/service/tokens.json)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    create.add_argument("--role", required=True, choices=["regulator", "public"])
    create.add_argument("--name", required=True, help="who the token is for (recorded in the audit log)")
    create.add_argument("--lake", default=str(DEFAULT_LAKE), help="the deployment's lake folder")
    create.set_defaults(func=cmd_token_create)

    audit = sub.add_parser("audit", help="the query service's audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check the hash chain of LAKE/service/audit.jsonl",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    verify.add_argument("--lake", default=str(DEFAULT_LAKE))
    verify.set_defaults(func=cmd_audit_verify)
