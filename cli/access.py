"""``timerhook keys`` and ``timerhook tenants``: API keys, and each tenant's quotas and secret."""

from __future__ import annotations

import base64
import binascii

import typer
from rich.table import Table

from cli.admin import console, run_db
from db.access import valid_tenant

keys_app = typer.Typer(help="Create, list and revoke API keys.", no_args_is_help=True)
tenants_app = typer.Typer(
    help="Show or set tenants' quotas and signing secrets.", invoke_without_command=True
)


def tenant_name(name: str) -> str:
    """A tenant name as typed, checked."""
    if not valid_tenant(name):
        raise typer.BadParameter(
            "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit",
            param_hint="tenant",
        )
    return name


@keys_app.command("create")
def keys_create(
    tenant: str = typer.Option(..., "--tenant", help="The tenant the key acts for."),
    admin: bool = typer.Option(False, "--admin", help="May see every tenant and use admin routes."),
    label: str | None = typer.Option(None, "--label", help="A note: who or what uses it."),
) -> None:
    """Make a key. The key itself is printed once, as the last line; only a hash is kept."""
    tenant_name(tenant)
    key_id, key = run_db(lambda db: db.keys.create(tenant=tenant, admin=admin, label=label))
    kind = "admin key" if admin else "key"
    typer.echo(f"{key_id}: {kind} of tenant {tenant} (shown once; store it now)")
    typer.echo(key)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, tenant, admin, label, created, last used, revoked."""
    rows = run_db(lambda db: db.keys.list())
    table = Table(title="API keys")
    # The id is what `keys revoke` takes: never cut short, however narrow the terminal.
    table.add_column("id", no_wrap=True, min_width=16)
    for column in ("tenant", "admin", "label", "created", "last used", "revoked"):
        table.add_column(column)

    def when(at: object) -> str:
        return at.strftime("%Y-%m-%d %H:%M") if at is not None else "-"  # type: ignore[attr-defined]

    for k in rows:
        table.add_row(
            k.id, k.tenant, "yes" if k.admin else "", k.label or "", when(k.created_at),
            when(k.last_used_at), when(k.revoked_at),
        )  # fmt: skip
    console.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: str = typer.Argument(..., help="The key's id (from keys list).")) -> None:
    """Revoke a key: every API process refuses it within 10 seconds."""
    if not run_db(lambda db: db.keys.revoke(key_id)):
        console.print(f"no unrevoked key {key_id}")
        raise typer.Exit(1)
    console.print(f"{key_id} revoked")


def _secret(value: str) -> str:
    """A signing secret as typed, checked: whsec_ + base64 (two space-separated to rotate);
    '' removes the tenant's own."""
    for part in value.split():
        body = part.removeprefix("whsec_")
        try:
            ok = part.startswith("whsec_") and len(base64.b64decode(body, validate=True)) >= 16
        except binascii.Error:
            ok = False
        if not ok:
            raise typer.BadParameter(
                "must be 'whsec_' + base64 of at least 16 bytes (two, space-separated, during "
                "a rotation); '' removes it",
                param_hint="--signing-secret",
            )
    return value


@tenants_app.callback()
def tenants_show(ctx: typer.Context) -> None:
    """Show the tenants with quotas or secrets (``timerhook tenants set NAME ...`` changes
    one)."""
    if ctx.invoked_subcommand is not None:
        return
    rows = run_db(lambda db: db.tenants.list())
    table = Table(title="tenants")
    for column in ("tenant", "max pending", "creates/min", "max payload bytes", "signing"):
        table.add_column(column)

    def limit(n: int | None) -> str:
        return f"{n:,}" if n is not None else "-"

    for t in rows:
        table.add_row(
            t.name, limit(t.max_pending), limit(t.creates_per_minute),
            limit(t.max_payload_bytes), "own secret" if t.signing_secret else "global",
        )  # fmt: skip
    if not rows:
        table.caption = (
            "no tenant has quotas or its own secret: every tenant may create without limit, "
            "signed with the global secret"
        )
    console.print(table)


@tenants_app.command("set")
def tenants_set(
    name: str = typer.Argument(..., help="The tenant."),
    max_pending: int | None = typer.Option(
        None, "--max-pending", min=0, help="Most pending timers at once (0: no limit)."
    ),
    creates_per_minute: int | None = typer.Option(
        None, "--creates-per-minute", min=0, help="Creates per minute (0: no limit)."
    ),
    max_payload_bytes: int | None = typer.Option(
        None, "--max-payload-bytes", min=0, help="Largest payload, compact JSON (0: global)."
    ),
    signing_secret: str | None = typer.Option(
        None, "--signing-secret", help="whsec_... of this tenant's webhooks ('' for global)."
    ),
) -> None:
    """Set a tenant's quotas or signing secret; what is not given stays as it is. API
    processes apply it within 5 seconds, dispatchers within a tick."""
    tenant_name(name)
    if signing_secret is not None:
        _secret(signing_secret)
    run_db(
        lambda db: db.tenants.set(
            name,
            max_pending=max_pending,
            creates_per_minute=creates_per_minute,
            max_payload_bytes=max_payload_bytes,
            signing_secret=signing_secret,
        )
    )
    console.print(f"tenant {name} updated")
