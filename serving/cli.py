"""`credit serve`, `credit token create` and `credit audit verify`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.lake import DEFAULT_LAKE


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import load_settings, serve

    lake = Path(args.lake)
    if not (lake / "published").is_dir():
        raise FileNotFoundError(f"no published versions under {lake}; run `credit run` first")
    overrides = {
        "server": {
            "workers": args.workers,
            "trusted_proxies": args.trusted_proxy,
            "limit_concurrency": args.limit_concurrency,
        },
        "limits": {
            "max_header_bytes": args.max_header_bytes,
            "header_timeout_seconds": args.header_timeout,
            "connections_per_client": args.connections_per_client,
        },
        "rate_limit": {
            "requests_per_second": args.requests_per_second,
            "anonymous_requests_per_second": args.anonymous_requests_per_second,
        },
    }
    config = load_settings(Path(args.config) if args.config else None, overrides)
    serve(lake, config, args.host, args.port, args.log_level, args.access_log)
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
    # the defaults of these live in config/service.toml; an option given here overrides it
    setting = "(default: %s in config/service.toml or --config)"
    serve.add_argument("--workers", type=int, help="worker processes " + setting % "[server] workers")
    serve.add_argument(
        "--trusted-proxy",
        action="append",
        metavar="ADDRESS",
        help="a reverse proxy address or network whose X-Forwarded-For is believed; repeat for several "
        + setting % "[server] trusted_proxies",
    )
    serve.add_argument(
        "--limit-concurrency",
        type=int,
        help="connections + requests in flight per worker before 503 "
        + setting % "[server] limit_concurrency",
    )
    serve.add_argument(
        "--max-header-bytes", type=int, help="request line + headers " + setting % "[limits] max_header_bytes"
    )
    serve.add_argument(
        "--header-timeout",
        type=float,
        metavar="SECONDS",
        help="time for a request's headers to arrive " + setting % "[limits] header_timeout_seconds",
    )
    serve.add_argument(
        "--connections-per-client",
        type=int,
        help="open connections per client address and worker " + setting % "[limits] connections_per_client",
    )
    serve.add_argument(
        "--requests-per-second",
        type=float,
        help="rate per token " + setting % "[rate_limit] requests_per_second",
    )
    serve.add_argument(
        "--anonymous-requests-per-second",
        type=float,
        help="rate per client address without a valid token "
        + setting % "[rate_limit] anonymous_requests_per_second",
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
