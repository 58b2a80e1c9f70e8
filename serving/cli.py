"""`credit serve`, `credit report`, `credit token create|list|revoke` and `credit audit verify|anchor-sql`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from foundation.console import add_json_option, emit
from foundation.lake import DEFAULT_LAKE


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.server import load_settings, preflight, serve

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
    preflight(lake, config)
    serve(lake, config, args.host, args.port, args.log_level, args.access_log)
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


def cmd_report(args: argparse.Namespace) -> int:
    """The firm's credit report as PDF, as the token's role sees it (the public view without one);
    a regulator's report is audited like a query to the service."""
    import getpass

    from serving.app import audit_settings, load_config
    from serving.audit import AuditLog
    from serving.disclosure import load_policy
    from serving.report import FirmReport, print_pdf, write_report
    from serving.report import document as report_document
    from serving.store import VersionStore
    from serving.tokens import TokenBook

    lake = Path(args.lake)
    current = lake / "published" / "current"
    if not current.exists():
        raise FileNotFoundError(f"no published version under {lake}; run `credit run` first")
    who = TokenBook(lake).authenticate(args.token) if args.token else None
    view = load_policy().view(who.role if who else "public")
    store = VersionStore.load(lake, current.resolve(), views=(view,))
    found = store.find(args.code, view)
    if found is None:
        raise LookupError(
            f"no firm with that code in version {store.version} (as the {view.role} role sees it)"
        )
    report = FirmReport.gather(store, view, view.rows(found)[0])
    pdf = print_pdf(report_document(report))
    if who is not None and who.regulator:
        settings = audit_settings(load_config(Path(args.config) if args.config else None))
        AuditLog(lake, settings).append(
            {
                "who": who.name,
                "role": who.role,
                "token": who.token_prefix,
                "address": f"cli:{getpass.getuser()}",
                "version": store.version,
                "action": "report",
                "query": {"code": args.code, "format": "pdf"},
                "results": 1,
                "status": 200,
            }
        )
    write_report(pdf, Path(args.out))
    print(
        f"{args.out}: credit report of {report.profile['name']} ({view.role} view, version {store.version})"
    )
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

    report = sub.add_parser(
        "report",
        help="a firm's credit report (信用报告) as PDF, printed by headless Chromium",
        description="Prints the credit report the firm page shows: the grade with its arithmetic, each "
        "domain's facts with their records, a timeline and the evidence. Without --token it is the public "
        "view; with a token, that token's role's view (a regulator's report is recorded in the audit trail).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    report.add_argument(
        "code", metavar="CODE", help="USCC, organization code, registration number or entity id"
    )
    report.add_argument("--out", required=True, help="the PDF to write (written aside, then renamed)")
    report.add_argument("--lake", default=str(DEFAULT_LAKE), help="lake folder holding published/")
    report.add_argument(
        "--token", default=None, help="a token from `credit token create` (default: public view)"
    )
    report.add_argument(
        "--config", default=None, help="service settings whose [audit] names the key and anchor"
    )
    report.set_defaults(func=cmd_report)

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
    add_json_option(listing)
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
