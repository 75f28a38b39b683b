"""`zkv-gateway`: serve, and the owner's tools (hosts, approve/deny, requests, audit).

One top-level handler turns every ZkvError into one line on stderr and its exit code.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence

from zkv.encoding import canonical
from zkv.errors import ZkvError

from . import audit, liveness, secrets_source
from .config import Settings, is_secret_name, load
from .errors import GatewayCliError, SecretUnavailable
from .notify import ConsoleNotifier
from .secrets_source import SecretSource
from .service import HOST_APPROVED, HOST_REVOKED, Gateway
from .store import Store, StoreError

EXIT_DATABASE = 6


class _NoSource:
    """The CLI decides; it never releases a secret."""

    def get(self, name: str | None) -> bytes:
        raise SecretUnavailable("not available in the CLI")

    def disable(self, name: str | None) -> str:
        raise SecretUnavailable("not available in the CLI")


def _service(settings: Settings, source: SecretSource | None = None) -> Gateway:
    store = Store(settings.SQLALCHEMY_DATABASE_URI)
    store.create_schema()
    return Gateway(settings, store, source or _NoSource(), ConsoleNotifier())


def _when(at: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if at else "-"


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    from .server import serve

    return serve(settings, args.bind, args.workers, args.threads)


def cmd_hosts(args: argparse.Namespace, settings: Settings) -> int:
    # Only a wipe touches the secret source (to disable the host's secret).
    service = _service(
        settings, secrets_source.from_settings(settings) if args.action == "wipe" else None
    )
    if args.action == "list":
        alive = service.all_liveness()
        for h in service.hosts():
            x = alive.get(h.host_id)
            status = (
                x.state
                if x and x.state != liveness.ACTIVE and h.status == HOST_APPROVED
                else h.status
            )
            window = liveness.describe(
                x.window_or(settings.DEADMAN_WINDOW) if x else settings.DEADMAN_WINDOW
            )
            print(
                f"{h.host_id}  {status:9}  {h.hostname}  from {h.source_ip}  "
                f"enrolled {_when(h.enrolled_at)}  secret={h.secret_name or '(default)'}  "
                f"dead-man {window}, alive {_when(x.since if x else None)}"
            )
        return 0
    if not args.host_id:
        raise GatewayCliError(f"hosts {args.action} needs a HOST_ID")
    if args.action in ("deadman", "resume", "wipe"):
        return _liveness_action(args, service)
    if args.secret is not None and not is_secret_name(args.secret):
        raise GatewayCliError("--secret must be a Key Vault secret name (letters, digits, -)")
    status = HOST_APPROVED if args.action == "approve" else HOST_REVOKED
    host = service.set_host_status(args.host_id, status, args.secret)
    print(f"{host.host_id} {host.status}")
    return 0


def _liveness_action(args: argparse.Namespace, service: Gateway) -> int:
    if args.action == "wipe":
        print(f"{args.host_id} wiped; {service.wipe(args.host_id, args.shared)}")
        return 0
    if args.action == "resume":
        x = service.change_liveness(args.host_id, lambda x: liveness.resume(x, service.clock()))
    else:
        if args.window is None:
            raise GatewayCliError("hosts deadman needs --window (7d, 12h, 0 for none, default)")
        try:
            window = liveness.parse_window(args.window)
        except ValueError as exc:
            raise GatewayCliError(f"--window: {exc}") from None
        x = service.change_liveness(
            args.host_id, lambda x: liveness.set_window(x, window, service.clock())
        )
    shown = liveness.describe(x.window_or(service.settings.DEADMAN_WINDOW))
    print(f"{args.host_id} {x.state}, dead-man window {shown}")
    return 0


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    print(_service(settings).decide(args.request_id, args.pin, approve=True))
    return 0


def cmd_deny(args: argparse.Namespace, settings: Settings) -> int:
    print(_service(settings).decide(args.request_id, None, approve=False))
    return 0


def cmd_requests(args: argparse.Namespace, settings: Settings) -> int:
    service = _service(settings)
    with service.store.read() as conn:
        rows = service.store.recent_requests(conn, args.limit)
    for row in reversed(rows):
        a = row.approval
        print(
            f"{a.request_id}  {a.kind:6}  {a.state:8}  {row.hostname}  from {row.source_ip}  "
            f"{_when(a.created_at)}  {' '.join(row.datasets)}"
        )
    return 0


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    whole_log = args.verify or args.json
    if whole_log and (args.limit is not None or args.request):
        raise GatewayCliError("--verify and --json take the whole log; --limit and --request list")
    service = _service(settings)
    with service.store.read() as conn:
        if args.verify:
            count, head = audit.check(audit.chain(conn))
            print(f"audit log intact: {count} entries, head {head}")
        elif args.json:
            for row in audit.chain(conn):
                print(canonical(row).decode())
        else:
            for entry in audit.entries(
                conn, 100 if args.limit is None else args.limit, args.request
            ):
                print(entry.line())
    return 0


def cmd_check(args: argparse.Namespace, settings: Settings) -> int:
    print(f"configuration ok: secrets from {settings.SECRET_SOURCE}, approver {settings.APPROVER}")
    return 0


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="zkv-gateway", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway under gunicorn")
    serve.add_argument("--bind", default="127.0.0.1:8080", help="host:port (default %(default)s)")
    serve.add_argument("--workers", type=int, default=2)
    serve.add_argument("--threads", type=int, default=32, help="threads per worker (long-polls)")
    serve.set_defaults(func=cmd_serve)
    hosts = sub.add_parser(
        "hosts", help="list, approve, revoke, resume or wipe hosts; set their dead-man window"
    )
    hosts.add_argument("action", choices=("list", "approve", "revoke", "deadman", "resume", "wipe"))
    hosts.add_argument("host_id", nargs="?")
    hosts.add_argument("--secret", help="Key Vault secret name for this host (approve)")
    hosts.add_argument("--window", help="deadman: silence allowed (7d, 12h, 0 = none, default)")
    hosts.add_argument(
        "--shared", action="store_true", help="wipe: disable the secret even if others use it"
    )
    hosts.set_defaults(func=cmd_hosts)
    approve = sub.add_parser("approve", help="approve an unlock request (console approver)")
    approve.add_argument("request_id")
    approve.add_argument("pin")
    approve.set_defaults(func=cmd_approve)
    deny = sub.add_parser("deny", help="deny an unlock request")
    deny.add_argument("request_id")
    deny.set_defaults(func=cmd_deny)
    reqs = sub.add_parser("requests", help="recent requests")
    reqs.add_argument("--limit", type=int, default=20)
    reqs.set_defaults(func=cmd_requests)
    aud = sub.add_parser("audit", help="print, verify or export the audit log")
    aud.add_argument("--limit", type=int, help="the last N entries (default 100)")
    aud.add_argument("--request", help="only entries about this request id")
    whole = aud.add_mutually_exclusive_group()
    whole.add_argument(
        "--verify", action="store_true", help="check the hash chain (exit 7 if broken)"
    )
    whole.add_argument("--json", action="store_true", help="export every entry as JSON lines")
    aud.set_defaults(func=cmd_audit)
    check = sub.add_parser("check-config", help="validate the configuration and exit")
    check.set_defaults(func=cmd_check)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    func: Callable[[argparse.Namespace, Settings], int] = args.func
    try:
        return func(args, load())
    except ZkvError as exc:
        print(f"zkv-gateway: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        return _database_or_raise(exc)


def _database_or_raise(exc: Exception) -> int:
    if isinstance(exc, StoreError):
        print(f"zkv-gateway: database error: {type(exc).__name__}", file=sys.stderr)
        return EXIT_DATABASE
    raise exc


if __name__ == "__main__":
    sys.exit(main())
