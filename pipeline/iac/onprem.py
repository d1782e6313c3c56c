"""On-premise regions: provisioning requests to the site's automation over AMQP (RabbitMQ).

Which regions are on premise is configuration (``PEERSCALE_ONPREM_REGIONS``, comma-separated);
a plan mixes them freely with cloud regions. Cloud regions are rendered and applied as Terraform
or CloudFormation; each on-premise region of the plan's provisioned span (its windows up to the next
hourly run, see :mod:`pipeline.iac.model`) gets one request message.

Messages (JSON, UTF-8, ``content_type=application/json``, persistent):

* request (``schema: peerscale.provisioning.request/v1``), published to the topic exchange
  ``PEERSCALE_ONPREM_EXCHANGE`` (default ``peerscale.provisioning``) with routing key
  ``provision.<region>``; a durable queue of the same name is declared and bound, so requests
  wait for a site that is down. Fields: ``idempotency_key`` (sha256 of plan id, region, window
  and lines: the same request always has the same key, so a site that sees it twice provisions
  once), ``correlation_id`` (new per attempt; also the AMQP property), ``plan_id``, ``region``,
  ``window`` (``valid_from``/``valid_to``, RFC 3339 UTC), ``lines`` (``line_key``,
  ``instance_type``, ``purchase_option``, ``count``, ``storage_gib``, ``zones``: {zone:
  instances}, whose sum is ``count`` plus the plan's N+1-across-zones headroom; ``count`` and ``zones``
  are the span's first window, and for a sub-hour plan ``schedule`` lists ``[start, instances]`` for each
  later window whose instances differ from the window before; absent when there is none), ``sent_at``,
  ``attempt``; the AMQP ``reply_to`` names the queue to answer on.
* reply (``schema: peerscale.provisioning.reply/v1``), sent by the site to ``reply_to`` with the
  request's ``correlation_id``: ``idempotency_key``, ``status`` (``provisioned``, ``accepted``,
  ``rejected`` or ``failed``), optional ``message`` and ``details``.

A request without a reply within ``PEERSCALE_ONPREM_TIMEOUT_S`` (default 30) is sent again, with
the same idempotency key and a new correlation id, up to ``PEERSCALE_ONPREM_ATTEMPTS`` (default 3)
times; a late reply to an earlier attempt still counts (matched on the idempotency key).
``provisioned`` and ``accepted`` are successes; anything else, or no reply, fails the region. A
reply is matched on its idempotency key, else on the AMQP correlation id (so a malformed reply
still fails its region with the reason instead of being dropped).
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.iac.model import InfraModel
from pipeline.iac.safety import check_region

__all__ = ["REPLY_SCHEMA", "REQUEST_SCHEMA", "OnPremConfig", "OnPremProvider", "idempotency_key", "onprem_regions",
           "request_message"]

REQUEST_SCHEMA = "peerscale.provisioning.request/v1"
REPLY_SCHEMA = "peerscale.provisioning.reply/v1"
SUCCESS = ("provisioned", "accepted")
REPLY_STATUSES = ("provisioned", "accepted", "rejected", "failed")


def onprem_regions(env: Mapping[str, str] | None = None) -> frozenset[str]:
    """The regions ``PEERSCALE_ONPREM_REGIONS`` names (validated region names)."""
    env = os.environ if env is None else env
    text = env.get("PEERSCALE_ONPREM_REGIONS", "")
    return frozenset(check_region(r.strip(), "PEERSCALE_ONPREM_REGIONS") for r in text.split(",") if r.strip())


@dataclass(frozen=True)
class OnPremConfig:
    regions: frozenset[str] = frozenset()
    url: str = "amqp://guest:guest@127.0.0.1:5672//"
    exchange: str = "peerscale.provisioning"
    timeout_s: float = 30.0
    attempts: int = 3

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OnPremConfig:
        env = os.environ if env is None else env
        try:
            timeout_s, attempts = float(env.get("PEERSCALE_ONPREM_TIMEOUT_S", "30")), int(env.get("PEERSCALE_ONPREM_ATTEMPTS", "3"))
        except ValueError as exc:
            raise ValueError(f"PEERSCALE_ONPREM_TIMEOUT_S / _ATTEMPTS must be numbers: {exc}") from exc
        if not timeout_s > 0 or attempts < 1:
            raise ValueError("PEERSCALE_ONPREM_TIMEOUT_S must be > 0 and PEERSCALE_ONPREM_ATTEMPTS >= 1")
        return cls(regions=onprem_regions(env), url=env.get("PEERSCALE_ONPREM_AMQP_URL", cls.url),
                   exchange=env.get("PEERSCALE_ONPREM_EXCHANGE", cls.exchange), timeout_s=timeout_s, attempts=attempts)


def _lines(model: InfraModel, region: str) -> list[dict[str, Any]]:
    """The region's lines as the site gets them (``schedule`` only where there is one: an hourly
    plan's request, and so its idempotency key, is what it was before schedules)."""
    out = []
    for line in model.lines_in(region):
        item: dict[str, Any] = {"line_key": line.key, "instance_type": line.instance_type, "purchase_option": line.purchase_option,
                                "count": line.count, "storage_gib": line.storage_gib, "zones": dict(line.zones)}
        if line.schedule:
            item["schedule"] = [list(step) for step in line.schedule]
        out.append(item)
    return out


def idempotency_key(model: InfraModel, region: str) -> str:
    canonical = json.dumps({"plan_id": model.plan_id, "region": region, "window": [model.valid_from, model.valid_to],
                            "lines": _lines(model, region)}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def request_message(model: InfraModel, region: str, correlation_id: str, attempt: int) -> dict[str, Any]:
    return {"schema": REQUEST_SCHEMA, "idempotency_key": idempotency_key(model, region), "correlation_id": correlation_id,
            "plan_id": model.plan_id, "region": region, "window": {"valid_from": model.valid_from, "valid_to": model.valid_to},
            "lines": _lines(model, region), "attempt": attempt,
            "sent_at": datetime.now(UTC).replace(microsecond=0).isoformat()}


@dataclass
class _Pending:
    region: str
    key: str
    attempts: int = 0
    correlation_ids: list[str] = field(default_factory=list)
    reply: dict[str, Any] | None = None


class OnPremProvider:
    """Sends a plan's on-premise regions to the site and collects the replies."""

    def __init__(self, config: OnPremConfig) -> None:
        self.config = config

    def provision(self, model: InfraModel, regions: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Per region: ``status`` (the site's, or ``timeout``), ``idempotency_key``, ``attempts``, the reply."""
        from kombu import Connection, Exchange, Queue

        pending = {r: _Pending(r, idempotency_key(model, r)) for r in sorted(regions)}
        if not pending:
            return {}
        exchange = Exchange(self.config.exchange, type="topic", durable=True)
        with Connection(self.config.url, connect_timeout=10) as conn:
            channel = conn.channel()
            replies = Queue(f"peerscale.replies.{uuid.uuid4().hex}", exclusive=True, auto_delete=True, channel=channel)
            replies.declare()
            for region in pending:
                Queue(f"provision.{region}", exchange=exchange, routing_key=f"provision.{region}", durable=True,
                      channel=channel).declare()
            by_key = {p.key: p for p in pending.values()}

            def on_reply(message: Any) -> None:  # raw body: a malformed reply is recorded, never raised
                message.ack()
                reply = _parse_reply(message.body)
                correlation = str(message.properties.get("correlation_id"))
                target = by_key.get(str(reply.get("idempotency_key"))) or next(
                    (p for p in pending.values() if correlation in p.correlation_ids), None)
                if target is not None and target.reply is None:
                    target.reply = reply

            with conn.Consumer(replies, on_message=on_reply, accept=["json"]):
                producer = conn.Producer(channel=channel)
                for attempt in range(1, self.config.attempts + 1):
                    waiting = [p for p in pending.values() if p.reply is None]
                    if not waiting:
                        break
                    for p in waiting:
                        self._send(producer, exchange, model, p, attempt, replies.name)
                    self._drain(conn, pending)
        return {r: _result(p) for r, p in pending.items()}

    def _send(self, producer: Any, exchange: Any, model: InfraModel, p: _Pending, attempt: int, reply_to: str) -> None:
        correlation_id = uuid.uuid4().hex
        p.attempts, p.correlation_ids = attempt, [*p.correlation_ids, correlation_id]
        producer.publish(request_message(model, p.region, correlation_id, attempt), exchange=exchange,
                         routing_key=f"provision.{p.region}", serializer="json", delivery_mode=2, reply_to=reply_to,
                         correlation_id=correlation_id, message_id=f"{p.key}:{attempt}", retry=True)

    def _drain(self, conn: Any, pending: Mapping[str, _Pending]) -> None:
        deadline = time.monotonic() + self.config.timeout_s
        while any(p.reply is None for p in pending.values()):
            left = deadline - time.monotonic()
            if left <= 0:
                return
            try:
                conn.drain_events(timeout=min(left, 1.0))
            except TimeoutError:
                continue


def _parse_reply(body: Any) -> dict[str, Any]:
    """A reply as a dict; anything malformed becomes a ``failed`` reply saying why (never dropped)."""
    if isinstance(body, (bytes, str)):
        try:
            body = json.loads(body)
        except ValueError:
            return {"status": "failed", "message": "reply is not JSON"}
    if not isinstance(body, dict):
        return {"status": "failed", "message": "reply is not a JSON object"}
    if body.get("schema") != REPLY_SCHEMA or body.get("status") not in REPLY_STATUSES:
        return {**body, "status": "failed", "message": f"reply does not follow {REPLY_SCHEMA}: {str(body)[:300]}"}
    return body


def _result(p: _Pending) -> dict[str, Any]:
    reply = p.reply or {}
    return {"status": reply.get("status", "timeout"), "ok": reply.get("status") in SUCCESS, "idempotency_key": p.key,
            "attempts": p.attempts, "correlation_ids": p.correlation_ids, "message": reply.get("message"),
            "details": reply.get("details")}
