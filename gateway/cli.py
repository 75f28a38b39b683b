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

from . import audit, invites, liveness, secrets_source, totp
from .config import Settings, is_secret_name, load
from .errors import GatewayCliError, SecretUnavailable
from .notify import ConsoleNotifier
from .secrets_source import SecretSource
from .service import HOST_APPROVED, HOST_REVOKED, Gateway
from .store import Host, Invite, Store, StoreError

EXIT_DATABASE = 6


class _NoSource:
    """The CLI decides; it never releases a secret."""

    def get(self, name: str | None) -> bytes:
        raise SecretUnavailable("not available in the CLI")

    def disable(self, name: str | None) -> str:
        raise SecretUnavailable("not available in the CLI")

    def set(self, name: str | None, secret: bytes) -> None:
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
        hosts, open_invites = service.hosts()
        for line in _host_lines(
            hosts, open_invites, service.all_liveness(), settings.DEADMAN_WINDOW
        ):
            print(line)
        return 0
    if not args.target:
        what = "HOSTNAME" if args.action == "invite" else "HOST_ID"
        raise GatewayCliError(f"hosts {args.action} needs a {what}")
    if args.action in ("deadman", "resume", "wipe"):
        return _liveness_action(args, service)
    if args.action == "revoke":
        host = service.revoke_host(args.target)
        print(f"{host.host_id} {host.status}")
        return 0
    if args.secret is not None and not is_secret_name(args.secret):
        raise GatewayCliError("--secret must be a Key Vault secret name (letters, digits, -)")
    try:
        ttl = invites.parse_ttl(args.ttl)
    except ValueError as exc:
        raise GatewayCliError(str(exc)) from None
    token, invite, replaced = service.invite(args.target, ttl, args.secret, args.replace)
    print(token)  # alone on stdout, so it can be piped; it is shown once and stored as a hash
    _explain_invite(settings, invite, replaced)
    return 0


def _liveness_action(args: argparse.Namespace, service: Gateway) -> int:
    if args.action == "wipe":
        print(f"{args.target} wiped; {service.wipe(args.target, args.shared)}")
        return 0
    if args.action == "resume":
        x = service.change_liveness(args.target, lambda x: liveness.resume(x, service.clock()))
    else:
        if args.window is None:
            raise GatewayCliError("hosts deadman needs --window (7d, 12h, 0 for none, default)")
        try:
            window = liveness.parse_window(args.window)
        except ValueError as exc:
            raise GatewayCliError(f"--window: {exc}") from None
        x = service.change_liveness(
            args.target, lambda x: liveness.set_window(x, window, service.clock())
        )
    shown = liveness.describe(x.window_or(service.settings.DEADMAN_WINDOW))
    print(f"{args.target} {x.state}, dead-man window {shown}")
    return 0


def cmd_owners(args: argparse.Namespace, settings: Settings) -> int:
    owners = _service(settings).owners
    if args.action == "list":
        for owner, passkeys in owners.listing():
            print(f"{owner.name}  passkeys={passkeys}  added {_when(owner.created_at)}")
        return 0
    if not args.name:
        raise GatewayCliError(f"owners {args.action} needs a NAME")
    if args.action == "remove":
        owners.remove(args.name)
        print(f"{args.name} removed")
        return 0
    uri = None
    if args.action == "add":
        link, uri = owners.add(args.name, with_totp=args.totp)
    else:
        link = owners.enrol_link(args.name)
    if uri:  # shown this once: the secret is in it
        print(f"{args.name}: add this to an authenticator app (TOTP, 6 digits, 30 s):")
        print(uri)
        print(totp.qr_text(uri), end="")
    if link:  # for the owner alone: whoever opens it first adds a passkey
        print(f"{args.name}: open this link once, on the device that keeps the passkey (24 h):")
        print(link)
    return 0


def cmd_quorum(args: argparse.Namespace, settings: Settings) -> int:
    _service(settings).set_quorum(args.host_id, args.owners)
    print(f"{args.host_id}: {args.owners} owner(s) must approve each unlock")
    return 0


def _host_lines(
    hosts: list[Host],
    open_invites: list[Invite],
    alive: dict[str, liveness.Liveness] | None = None,
    default_window: float = 0.0,
) -> list[str]:
    alive = alive or {}
    live = [h.hostname for h in hosts if h.status != HOST_REVOKED]
    lines = []
    for h in hosts:
        x = alive.get(h.host_id)
        status = (
            x.state if x and x.state != liveness.ACTIVE and h.status == HOST_APPROVED else h.status
        )
        window = liveness.describe(x.window_or(default_window) if x else default_window)
        lines.append(
            f"{h.host_id}  {status:9}  {h.hostname}  from {h.source_ip}  "
            f"enrolled {_when(h.enrolled_at)}  secret={h.secret_name or '(default)'}  "
            f"tpm={'yes' if h.key_in_tpm else 'no'}  "
            f"dead-man {window}, alive {_when(x.since if x else None)}"
            + (
                "  DUPLICATE NAME"
                if h.status != HOST_REVOKED and live.count(h.hostname) > 1
                else ""
            )
        )
    return lines + [
        f"invite {i.invite_id}  for {i.hostname}  secret={i.secret_name}  "
        f"expires {_when(i.expires_at)}" + ("  replaces the approved host" if i.may_replace else "")
        for i in open_invites
    ]


def _explain_invite(settings: Settings, invite: Invite, replaced: list[Host]) -> None:
    def say(text: str) -> None:
        print(text, file=sys.stderr)

    say(
        f"invite {invite.invite_id} for host {invite.hostname}: single use, "
        f"expires {_when(invite.expires_at)}"
    )
    for host in replaced:
        say(f"  replaces approved host {host.host_id} (revoked when the new one enrols)")
    say(f"  the host's repository key is released from secret {invite.secret_name}; create it:")
    if settings.SECRET_SOURCE == "file":  # noqa: S105
        folder = settings.SECRET_FILE.rsplit("/", 1)[0] if "/" in settings.SECRET_FILE else "."
        say(f"    install -m 0600 REPOSITORY-KEY-FILE {folder}/{invite.secret_name}")
    else:
        say(
            f"    zkv init --repository-key-file - | az keyvault secret set --vault-name VAULT "
            f"--name {invite.secret_name} --file /dev/stdin   (on the host)"
        )
    say("  on the host: zkv enroll --gateway URL, and paste the token above (or pipe it in)")


def cmd_approve(args: argparse.Namespace, settings: Settings) -> int:
    if args.pending:
        if args.request_id or args.pin or not args.host:
            raise GatewayCliError("approve --pending takes --host GLOB and no request id or PIN")
        rows = _service(settings).approve_pending(args.host, args.dry_run)
        verb = "would approve" if args.dry_run else "approved"
        for row in rows:
            a = row.approval
            print(
                f"{verb} {a.request_id}  {a.kind:6}  {row.hostname}  from {row.source_ip}  "
                f"code {a.pin}  {_when(a.created_at)}"
            )
        if not rows:
            print(f"no pending request of a host matching {args.host}")
        return 0
    if not (args.request_id and args.pin) or args.host or args.dry_run:
        raise GatewayCliError("approve REQUEST_ID PIN, or approve --pending --host GLOB")
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
    service.report_refusals()  # the refusals counted so far become entries first
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
        "hosts",
        help="list hosts, invite, revoke, resume or wipe one; set its dead-man window",
    )
    hosts.add_argument("action", choices=("list", "invite", "revoke", "deadman", "resume", "wipe"))
    hosts.add_argument("target", nargs="?", metavar="HOSTNAME|HOST_ID")
    hosts.add_argument("--ttl", default="24h", help="invite: valid for (default %(default)s)")
    hosts.add_argument(
        "--secret", help="invite: Key Vault secret name (default zkv-HOSTNAME-INVITEID)"
    )
    hosts.add_argument(
        "--replace", action="store_true", help="invite: the successor of an approved host"
    )
    hosts.add_argument("--window", help="deadman: silence allowed (7d, 12h, 0 = none, default)")
    hosts.add_argument(
        "--shared", action="store_true", help="wipe: disable the secret even if others use it"
    )
    hosts.set_defaults(func=cmd_hosts)
    owners = sub.add_parser("owners", help="add, list or remove owners; passkey enrolment links")
    owners.add_argument("action", choices=("add", "link", "list", "remove"))
    owners.add_argument("name", nargs="?", metavar="NAME")
    owners.add_argument(
        "--totp", action="store_true", help="add: also a TOTP secret (shown once, with a QR code)"
    )
    owners.set_defaults(func=cmd_owners)
    quorum = sub.add_parser("quorum", help="how many distinct owners must approve a host's unlocks")
    quorum.add_argument("host_id", metavar="HOST_ID")
    quorum.add_argument("owners", metavar="M", type=int)
    quorum.set_defaults(func=cmd_quorum)
    approve = sub.add_parser(
        "approve", help="approve an unlock request (console approver), or the pending ones"
    )
    approve.add_argument("request_id", nargs="?")
    approve.add_argument("pin", nargs="?")
    approve.add_argument(
        "--pending", action="store_true", help="every pending request of the hosts --host names"
    )
    approve.add_argument("--host", metavar="GLOB", help="enrolled host names (fnmatch: 'db*')")
    approve.add_argument("--dry-run", action="store_true", help="list, approve nothing")
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
