"""Standard Webhooks signatures, verified by the ``standardwebhooks`` package itself."""

from __future__ import annotations

import base64
import json
from collections.abc import Awaitable, Callable

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from core.settings import Settings
from dispatcher.service import Dispatcher
from tests.conftest import MakeTimer
from tests.support.sink import Sink

StartDispatcher = Callable[..., Awaitable[Dispatcher]]
NEW = "whsec_" + base64.b64encode(b"n" * 32).decode()
OLD = "whsec_" + base64.b64encode(b"o" * 32).decode()
OTHER = "whsec_" + base64.b64encode(b"x" * 32).decode()


async def _one_signed(
    secret: str,
    make_timer: MakeTimer,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> tuple[str, bytes, dict[str, str]]:
    timer = await make_timer(delay_ms=0)
    await start_dispatcher(make_settings(signing_secret=secret))
    [received] = await sink.wait_for(1, timeout=10)
    return str(timer.id), received.body, received.headers


async def test_requests_carry_a_signature_standardwebhooks_accepts(
    make_timer: MakeTimer,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    timer_id, body, headers = await _one_signed(
        NEW, make_timer, sink, make_settings, start_dispatcher
    )
    assert headers["webhook-id"] == timer_id
    assert Webhook(NEW).verify(body, headers) == {"id": timer_id}
    assert body == json.dumps({"id": timer_id}).encode()  # signing leaves the body alone
    with pytest.raises(WebhookVerificationError):
        Webhook(OTHER).verify(body, headers)


async def test_during_a_rotation_both_secrets_verify(
    make_timer: MakeTimer,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    timer_id, body, headers = await _one_signed(
        f"{NEW} {OLD}", make_timer, sink, make_settings, start_dispatcher
    )
    assert len(headers["webhook-signature"].split()) == 2
    assert Webhook(NEW).verify(body, headers) == {"id": timer_id}
    assert Webhook(OLD).verify(body, headers) == {"id": timer_id}


async def test_every_attempt_is_signed_with_the_same_webhook_id_and_the_payload(
    make_timer: MakeTimer,
    sink: Sink,
    make_settings: Callable[..., Settings],
    start_dispatcher: StartDispatcher,
) -> None:
    sink.status_for = lambda r: 503 if len(sink.received) == 1 else 200
    timer = await make_timer(delay_ms=0, payload='{"order": 7}', headers='{"X-Tenant": "a"}')
    await start_dispatcher(make_settings(signing_secret=NEW, retry_base_seconds=0.2))
    first, second = await sink.wait_for(2, timeout=10)
    assert first.headers["webhook-id"] == second.headers["webhook-id"] == str(timer.id)
    for received in (first, second):
        verified = Webhook(NEW).verify(received.body, received.headers)
        assert verified == {"id": str(timer.id), "payload": {"order": 7}}
    assert [r.headers["Timerhook-Attempt"] for r in (first, second)] == ["1", "2"]


async def test_without_a_secret_nothing_is_signed(
    make_timer: MakeTimer, sink: Sink, start_dispatcher: StartDispatcher
) -> None:
    await make_timer(delay_ms=0)
    await start_dispatcher()
    [received] = await sink.wait_for(1, timeout=10)
    assert not {"webhook-id", "webhook-signature"} & {h.lower() for h in received.headers}


@pytest.mark.parametrize(
    ("secret", "reason"),
    [
        ("s3cret", "starts with 'whsec_'"),
        ("whsec_***", "must be base64"),
        ("whsec_" + base64.b64encode(b"short").decode(), "at least 24"),
        (f"{NEW} {OLD} {OTHER}", "at most two"),
    ],
)
def test_unsafe_secrets_are_refused_at_start(secret: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        Settings(_env_file=None, signing_secret=secret)  # type: ignore[call-arg]
