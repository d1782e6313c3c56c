"""On-premise provisioning over AMQP against the real RabbitMQ on 127.0.0.1:5672.

A site automation runs in a thread here (our counterpart, on the real broker): it consumes the
request queues and answers on ``reply_to``. Covered: the message schema, replies matched by
correlation/idempotency key, a site that answers only the second attempt (retry, same
idempotency key), a silent site (timeout after the attempts), a malformed reply, and a plan that
mixes cloud and on-premise regions (cloud IaC leaves the on-premise ones out).
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from pipeline.iac.model import build_model
from pipeline.iac.onprem import REPLY_SCHEMA, REQUEST_SCHEMA, OnPremConfig, OnPremProvider, onprem_regions
from tests.moto_server import aws_env, moto_server, s3_bucket  # noqa: F401
from tests.test_iac import W0, W1, W2, _line_rows

URL = "amqp://guest:guest@127.0.0.1:5672//"


def _broker_up() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5672), timeout=1):
            return True
    except OSError:
        return False


pytestmark = [
    pytest.mark.skipif(not _broker_up(), reason="no RabbitMQ on 127.0.0.1:5672"),
    pytest.mark.filterwarnings("ignore:.*WarmPool.*not supported by moto:UserWarning"),
]

Site = Callable[[dict[str, Any]], dict[str, Any] | str | None]


@pytest.fixture()
def exchange() -> str:
    return f"peerscale.test.{uuid.uuid4().hex[:8]}"


def _model(plan_id: str = "plan-op") -> Any:
    rows = _line_rows(W0, W1, "eu-west-1", "m5.large", "on_demand", 2, plan_id=plan_id)
    rows += _line_rows(W0, W1, "eu-onprem-1", "m5.large", "on_demand", 3, plan_id=plan_id)
    rows += _line_rows(W0, W1, "us-onprem-2", "c5.xlarge", "spot", 1, plan_id=plan_id)
    rows += _line_rows(W1, W2, "eu-onprem-1", "m5.large", "on_demand", 9, plan_id=plan_id)
    return build_model(pd.DataFrame(rows), {"plan_id": plan_id})


@pytest.fixture()
def site(exchange: str) -> Iterator[Callable[[Site, list[str]], list[dict[str, Any]]]]:
    """Start a site automation answering with ``handler(request)`` (None: stay silent); returns what it received."""
    from kombu import Connection, Exchange, Queue

    stop = threading.Event()
    threads: list[threading.Thread] = []

    def start(handler: Site, regions: list[str]) -> list[dict[str, Any]]:
        received: list[dict[str, Any]] = []
        ready = threading.Event()

        def run() -> None:
            ex = Exchange(exchange, type="topic", durable=True)
            with Connection(URL) as conn:
                queues = [Queue(f"provision.{r}", exchange=ex, routing_key=f"provision.{r}", durable=True) for r in regions]

                def on_request(body: Any, message: Any) -> None:
                    received.append({"body": body, "correlation_id": message.properties.get("correlation_id"),
                                     "reply_to": message.properties.get("reply_to")})
                    answer = handler(body)
                    message.ack()
                    if answer is not None:
                        conn.Producer().publish(answer if isinstance(answer, str) else json.dumps(answer),
                                                routing_key=message.properties["reply_to"], content_type="application/json",
                                                correlation_id=message.properties.get("correlation_id"))

                with conn.Consumer(queues, callbacks=[on_request], accept=["json"]):
                    ready.set()
                    while not stop.is_set():
                        with contextlib.suppress(TimeoutError):
                            conn.drain_events(timeout=0.2)

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        threads.append(thread)
        assert ready.wait(10), "site consumer did not start"
        return received

    yield start
    stop.set()
    for thread in threads:
        thread.join(5)
    from kombu import Connection

    with Connection(URL) as conn:  # leave the broker as found
        channel = conn.channel()
        for region in ("eu-onprem-1", "us-onprem-2"):
            channel.queue_delete(f"provision.{region}")
        channel.exchange_delete(exchange)


def _reply(request: dict[str, Any], status: str = "provisioned") -> dict[str, Any]:
    return {"schema": REPLY_SCHEMA, "idempotency_key": request["idempotency_key"], "status": status,
            "message": f"{request['region']}: {sum(line['count'] for line in request['lines'])} instances"}


def test_requests_follow_the_schema_and_replies_come_back(site, exchange: str) -> None:
    received = site(lambda req: _reply(req), ["eu-onprem-1", "us-onprem-2"])
    model = _model()
    result = OnPremProvider(OnPremConfig(url=URL, exchange=exchange, timeout_s=10)).provision(model, ["eu-onprem-1", "us-onprem-2"])
    assert {r: (v["status"], v["ok"], v["attempts"]) for r, v in result.items()} == {
        "eu-onprem-1": ("provisioned", True, 1), "us-onprem-2": ("provisioned", True, 1)}
    assert result["eu-onprem-1"]["message"] == "eu-onprem-1: 3 instances"  # first window only (not 9)
    by_region = {m["body"]["region"]: m for m in received}
    request = by_region["eu-onprem-1"]["body"]
    assert request["schema"] == REQUEST_SCHEMA and request["plan_id"] == "plan-op"
    assert request["window"] == {"valid_from": "2025-03-01T00:00:00Z", "valid_to": "2025-03-01T01:00:00Z"}
    assert request["lines"] == [{"line_key": "eu-onprem-1/m5.large/on_demand", "instance_type": "m5.large",
                                 "purchase_option": "on_demand", "count": 3, "storage_gib": 4, "zones": {"eu-onprem-1a": 3}}]
    assert by_region["eu-onprem-1"]["correlation_id"] == request["correlation_id"]
    assert request["idempotency_key"] == result["eu-onprem-1"]["idempotency_key"]
    # The same request again: the same idempotency key (a site provisions it once).
    again = OnPremProvider(OnPremConfig(url=URL, exchange=exchange, timeout_s=10)).provision(model, ["eu-onprem-1"])
    assert again["eu-onprem-1"]["idempotency_key"] == request["idempotency_key"]
    assert again["eu-onprem-1"]["correlation_ids"] != result["eu-onprem-1"]["correlation_ids"]


def test_retry_after_a_lost_reply_then_timeout_and_bad_replies(site, exchange: str) -> None:
    seen: dict[str, int] = {}

    def flaky(req: dict[str, Any]) -> dict[str, Any] | str | None:
        seen[req["region"]] = seen.get(req["region"], 0) + 1
        if req["region"] == "us-onprem-2":
            return "not json at all"
        return _reply(req) if seen[req["region"]] >= 2 else None  # the first request's reply is lost

    received = site(flaky, ["eu-onprem-1", "us-onprem-2"])
    config = OnPremConfig(url=URL, exchange=exchange, timeout_s=1.5, attempts=3)
    result = OnPremProvider(config).provision(_model(), ["eu-onprem-1", "us-onprem-2"])
    eu = result["eu-onprem-1"]
    assert (eu["status"], eu["attempts"], len(eu["correlation_ids"])) == ("provisioned", 2, 2)
    keys = {m["body"]["idempotency_key"] for m in received if m["body"]["region"] == "eu-onprem-1"}
    assert keys == {eu["idempotency_key"]}  # the retry carries the same key
    assert result["us-onprem-2"]["status"] == "failed" and "not JSON" in result["us-onprem-2"]["message"]


def test_silent_site_times_out(site, exchange: str) -> None:
    site(lambda req: None, ["eu-onprem-1"])
    result = OnPremProvider(OnPremConfig(url=URL, exchange=exchange, timeout_s=0.5, attempts=2)).provision(_model(), ["eu-onprem-1"])
    assert (result["eu-onprem-1"]["status"], result["eu-onprem-1"]["ok"], result["eu-onprem-1"]["attempts"]) == ("timeout", False, 2)


def test_onprem_regions_are_configuration_and_leave_the_cloud_render(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.common.config import Settings
    from pipeline.iac.render import render_plan
    from tests import plan_store

    assert onprem_regions({"PEERSCALE_ONPREM_REGIONS": " eu-onprem-1, us-onprem-2 "}) == {"eu-onprem-1", "us-onprem-2"}
    with pytest.raises(ValueError, match="PEERSCALE_ONPREM_REGIONS"):
        onprem_regions({"PEERSCALE_ONPREM_REGIONS": "dc paris"})
    with pytest.raises(ValueError, match="TIMEOUT_S"):
        OnPremConfig.from_env({"PEERSCALE_ONPREM_TIMEOUT_S": "soon"})
    import pyarrow as pa

    from pipeline.common.schemas import PLAN

    rows = _line_rows(W0, W1, "eu-west-1", "m5.large", "on_demand", 2, plan_id="plan-mix")
    rows += _line_rows(W0, W1, "eu-onprem-1", "m5.large", "on_demand", 3, plan_id="plan-mix")
    settings = Settings(source_root=str(tmp_path / "s"), lake_root=str(tmp_path / "lake"), build_root=str(tmp_path / "b"))
    plan_store.write_plan(settings.lake_root, "plan-mix", pa.Table.from_pandas(pd.DataFrame(rows), schema=PLAN, preserve_index=False),
                          {"plan_id": "plan-mix", "valid_from": W0.isoformat(), "valid_to": W1.isoformat(), "forecast_run_id": None})
    monkeypatch.setenv("PEERSCALE_ONPREM_REGIONS", "eu-onprem-1")
    out = render_plan("plan-mix", settings)
    tf = Path(out["terraform_dir"])
    assert [p.name for p in (tf / "regions").iterdir()] == ["eu-west-1"]
    assert not (tf / "peering").exists()  # the only pair involved the on-premise region
    assert not list(Path(out["cloudformation_dir"]).glob("eu-onprem-1*"))
    assert out["onprem_regions"] == "eu-onprem-1"


def test_mixed_plan_provisions_cloud_and_onprem(site, exchange: str, s3_bucket: str, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Gate → provision with a cloud region (CloudFormation on moto) and an on-premise one (RabbitMQ)."""
    import pyarrow as pa

    from pipeline.common.config import Settings
    from pipeline.common.schemas import PLAN
    from pipeline.iac.apply import ApplyFailed, applied_plan_id, read_apply_records
    from pipeline.iac.providers import CAPACITY_PROVIDER_ENV
    from pipeline.iac.provision import gate_plan, provision
    from tests import plan_store
    from tests.test_iac_apply import _stacks

    prefix = f"m{uuid.uuid4().hex[:8]}"
    for name, value in {CAPACITY_PROVIDER_ENV: "ledger", "PEERSCALE_APPLY_ENGINE": "cloudformation", "PEERSCALE_APPLY": "execute",
                        "PEERSCALE_STACK_PREFIX": prefix, "PEERSCALE_ONPREM_REGIONS": "eu-onprem-1",
                        "PEERSCALE_ONPREM_AMQP_URL": URL, "PEERSCALE_ONPREM_EXCHANGE": exchange,
                        "PEERSCALE_ONPREM_TIMEOUT_S": "5", "PEERSCALE_ONPREM_ATTEMPTS": "1"}.items():
        monkeypatch.setenv(name, value)
    settings = Settings(source_root=str(tmp_path / "s"), lake_root=f"s3://{s3_bucket}/lake-{prefix}", build_root=str(tmp_path / "b"))
    for plan_id, onprem_count in (("plan-m1", 3), ("plan-m2", 4)):
        rows = _line_rows(W0, W1, "eu-west-1", "m5.large", "on_demand", 2, plan_id=plan_id)
        rows += _line_rows(W0, W1, "eu-onprem-1", "m5.large", "on_demand", onprem_count, plan_id=plan_id)
        table = pa.Table.from_pandas(pd.DataFrame(rows), schema=PLAN, preserve_index=False)
        plan_store.write_plan(settings.lake_root, plan_id, table, {"plan_id": plan_id, "valid_from": W0.isoformat(),
                                                                   "valid_to": W1.isoformat(), "forecast_run_id": None})
    site(lambda req: _reply(req, "provisioned" if req["lines"][0]["count"] == 3 else "rejected"), ["eu-onprem-1"])

    record = provision("plan-m1", settings, gate_plan("plan-m1", settings))
    assert record["outcome"] == "applied" and record["onprem"]["eu-onprem-1"]["status"] == "provisioned"
    assert read_apply_records(settings, "plan-m1")["provisioning"]["onprem"]["eu-onprem-1"]["message"] == "eu-onprem-1: 3 instances"
    assert set(_stacks(prefix)) == {"eu-west-1"} and applied_plan_id(settings) == "plan-m1"

    with pytest.raises(ApplyFailed, match="on-premise"):
        provision("plan-m2", settings, gate_plan("plan-m2", settings))  # the site rejects 4 instances
    assert read_apply_records(settings, "plan-m2")["provisioning"]["outcome"] == "failed"
    assert applied_plan_id(settings) == "plan-m1"
