"""`credit serve`, `credit token create|list|revoke` and `credit audit verify|anchor-sql`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pipelines.cli import add_json_option, emit
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
    from serving.tokens import create_token, parse_expiry

    expires = parse_expiry(args.expires) if args.expires else None
    token = create_token(Path(args.lake), args.role, args.name, expires)
    document = {"name": args.name, "role": args.role, "expires": expires, "token": token}
    emit(args, document, token)
    return 0


def cmd_token_list(args: argparse.Namespace) -> int:
    from datetime import UTC, datetime

    from serving.tokens import list_tokens

    now = datetime.now(UTC)
    rows = [
        {
            "name": entry.name,
            "role": entry.role,
            "created": entry.created.isoformat(timespec="seconds"),
            "expires": entry.expires.isoformat(timespec="seconds") if entry.expires else None,
            "state": entry.state(now),
            "hash_prefix": entry.prefix,
        }
        for entry in list_tokens(Path(args.lake))
    ]
    if args.json:
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    columns = ["name", "role", "created", "expires", "state", "hash_prefix"]
    cells = [columns] + [[str(row[c] or "-") for c in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    for line in cells:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip())
    return 0


def cmd_token_revoke(args: argparse.Namespace) -> int:
    from serving.tokens import revoke_token

    entry = revoke_token(Path(args.lake), args.token)
    document = {"name": entry.name, "role": entry.role, "hash_prefix": entry.prefix, "revoked": entry.revoked}
    emit(
        args,
        document,
        f"revoked {entry.name} ({entry.role}, hash {entry.prefix}) at {entry.revoked:%Y-%m-%d %H:%M:%S} UTC",
    )
    return 0


def cmd_audit_verify(args: argparse.Namespace) -> int:
    from serving.app import audit_settings, load_config
    from serving.audit import audit_path, verify_audit

    settings = audit_settings(load_config(Path(args.config) if args.config else None))
    report = verify_audit(audit_path(Path(args.lake)), settings)
    print(json.dumps(report.as_json(), ensure_ascii=False))
    return 0 if report.intact else 2


def cmd_audit_anchor_sql(args: argparse.Namespace) -> int:
    from serving.audit import anchor_sql

    print(anchor_sql(args.role), end="")
    return 0


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
    serve.add_argument(
        "--log-level",
        default="warning",
        choices=["debug", "info", "warning", "error"],
        help="the server's log level (stderr)",
    )
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
    create.add_argument(
        "--role",
        required=True,
        choices=["regulator", "public"],
        help="what the token may see (config/disclosure.toml defines each role's view)",
    )
    create.add_argument("--name", required=True, help="who the token is for (recorded in the audit log)")
    create.add_argument(
        "--expires",
        default=None,
        help="when the token stops working: a number of days from now, or a date YYYY-MM-DD (00:00 UTC); "
        "default never",
    )
    create.add_argument("--lake", default=str(DEFAULT_LAKE), help="the deployment's lake folder")
    add_json_option(create)
    create.set_defaults(func=cmd_token_create)
    listing = token_sub.add_parser(
        "list",
        help="every token: name, role, created, expires, state and hash prefix (never the token)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    listing.add_argument("--json", action="store_true", help="JSON instead of a table")
    listing.add_argument("--lake", default=str(DEFAULT_LAKE), help="the deployment's lake folder")
    listing.set_defaults(func=cmd_token_list)
    revoke = token_sub.add_parser(
        "revoke",
        help="revoke a token at once in every running service (it stays listed, as revoked)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    revoke.add_argument("token", metavar="NAME|PREFIX", help="the token's name, or the start of its hash")
    revoke.add_argument("--lake", default=str(DEFAULT_LAKE), help="the deployment's lake folder")
    add_json_option(revoke)
    revoke.set_defaults(func=cmd_token_revoke)

    audit = sub.add_parser("audit", help="the query service's audit trail")
    audit_sub = audit.add_subparsers(dest="audit_command", required=True)
    verify = audit_sub.add_parser(
        "verify",
        help="check LAKE/service/audit.jsonl: its chain, each entry's keyed hash, and that it still holds "
        "every entry the anchor store recorded (exit 2 and the problem when not)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    verify.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder holding service/audit.jsonl")
    verify.add_argument(
        "--config", default=None, help="service settings whose [audit] names the key and anchor store"
    )
    verify.set_defaults(func=cmd_audit_verify)
    anchor = audit_sub.add_parser(
        "anchor-sql",
        help="print the PostgreSQL set-up of the anchor store (table, append-only trigger, INSERT-only grants)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    anchor.add_argument("--role", default="credit_audit", help="the role the service connects as")
    anchor.set_defaults(func=cmd_audit_anchor_sql)
