"""What the CloudFormation stacks cannot hold: capacity reservations and cross-region peering.

Both are reconciled through the EC2 API, idempotently: the applier passes the desired state,
the provider compares it with what exists (found by tags) and creates, modifies or removes the
difference. Running the same desired state twice changes nothing the second time.

Capacity reservations go through the small :class:`CapacityReservationProvider` interface:

* :class:`Ec2CapacityReservations` — the EC2 API (``create/modify/cancel_capacity_reservation``),
  for AWS;
* :class:`LedgerCapacityReservations` — records the same reconciliation in a JSON ledger in the
  lake (``<lake>/iac/capacity_reservations/<stack prefix>.json``). **Limitation:** moto's server
  (the loopback AWS the tests run against) does not implement the EC2 capacity reservation API,
  so tests and laptop runs use the ledger; it provisions nothing. Choose with
  ``PEERSCALE_CAPACITY_RESERVATIONS=ec2|ledger`` (default ``ec2``).

Peering (:class:`TransitGatewayPeering`) creates one transit gateway peering attachment per
planned region pair in the requester region and accepts it in the accepter region; attachments
of pairs no longer planned are deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.common import lake, storage

log = logging.getLogger(__name__)

__all__ = [
    "CAPACITY_PROVIDER_ENV",
    "AwsClients",
    "CapacityReservationProvider",
    "Ec2CapacityReservations",
    "LedgerCapacityReservations",
    "ReconcileResult",
    "TransitGatewayPeering",
    "capacity_provider_from_env",
]

CAPACITY_PROVIDER_ENV = "PEERSCALE_CAPACITY_RESERVATIONS"
STACK_TAG = "peerscale-stack"  # tag carrying the stack prefix: separates deployments in one account
KEY_TAG = "line_key"
PAIR_TAG = "peerscale-pair"
LIVE_ATTACHMENT_STATES = ("initiatingRequest", "pendingAcceptance", "pending", "available", "modifying")


class AwsClients:
    """boto3 clients per (service, region), created lazily from one session.

    Credentials and the endpoint come from the environment (``AWS_ENDPOINT_URL`` for a loopback
    server); botocore retries throttling and 5xx with its standard retry mode.
    """

    def __init__(self, session: Any | None = None) -> None:
        import boto3
        from botocore.config import Config

        self._session = session or boto3.session.Session()
        self._config = Config(retries={"mode": "standard", "max_attempts": 6}, connect_timeout=10, read_timeout=60)
        self._clients: dict[tuple[str, str], Any] = {}

    def client(self, service: str, region: str) -> Any:
        key = (service, region)
        if key not in self._clients:
            self._clients[key] = self._session.client(service, region_name=region, config=self._config)
        return self._clients[key]

    def account_id(self, region: str) -> str:
        return self.client("sts", region).get_caller_identity()["Account"]


@dataclass
class ReconcileResult:
    """What a reconciliation did (or, in a dry run, would do), per kind of change."""

    created: list[str] = field(default_factory=list)
    modified: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    ids: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        return {"created": len(self.created), "modified": len(self.modified), "removed": len(self.removed),
                "unchanged": len(self.unchanged)}

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts(), "changes": {"created": sorted(self.created), "modified": sorted(self.modified),
                                             "removed": sorted(self.removed)}, "ids": dict(sorted(self.ids.items()))}

    def merge(self, other: ReconcileResult) -> None:
        self.created += other.created
        self.modified += other.modified
        self.removed += other.removed
        self.unchanged += other.unchanged
        self.ids.update(other.ids)


def _same(current: Mapping[str, Any], wanted: Mapping[str, Any], fields: Sequence[str]) -> bool:
    return all(str(current.get(f)) == str(wanted.get(f)) for f in fields)


# ---------------------------------------------------------------------------------------------
# Capacity reservations
# ---------------------------------------------------------------------------------------------

# A change to these needs a new reservation; instance_count and end_date are modified in place.
_RESERVATION_IDENTITY = ("instance_type", "availability_zone")
_RESERVATION_MUTABLE = ("instance_count", "end_date")


class CapacityReservationProvider(ABC):
    """Reconciles a region's capacity reservations to the desired ones (deployment.json rows)."""

    name: str = "abstract"

    def reconcile(self, region: str, desired: Sequence[Mapping[str, Any]], prefix: str, dry_run: bool) -> ReconcileResult:
        """Create, modify and cancel reservations so that ``region`` holds exactly ``desired``."""
        current = self._current(region, prefix)
        wanted = {row["key"]: dict(row) for row in desired}
        result = ReconcileResult()
        for key, row in sorted(wanted.items()):
            have = current.get(key)
            if have is None:
                result.created.append(key)
                if not dry_run:
                    result.ids[key] = self._create(region, row, prefix)
            elif not _same(have, row, _RESERVATION_IDENTITY):
                result.modified.append(key)
                if not dry_run:
                    self._cancel(region, have)
                    result.ids[key] = self._create(region, row, prefix)
            elif not _same(have, row, _RESERVATION_MUTABLE):
                result.modified.append(key)
                if not dry_run:
                    self._modify(region, have, row)
                result.ids[key] = have["id"]
            else:
                result.unchanged.append(key)
                result.ids[key] = have["id"]
        for key, have in sorted(current.items()):
            if key not in wanted:
                result.removed.append(key)
                if not dry_run:
                    self._cancel(region, have)
        self._commit(dry_run)
        return result

    @abstractmethod
    def _current(self, region: str, prefix: str) -> dict[str, dict[str, Any]]:
        """Live reservations of this deployment in ``region`` by line key (with ``id``)."""

    @abstractmethod
    def _create(self, region: str, row: Mapping[str, Any], prefix: str) -> str: ...

    @abstractmethod
    def _modify(self, region: str, have: Mapping[str, Any], row: Mapping[str, Any]) -> None: ...

    @abstractmethod
    def _cancel(self, region: str, have: Mapping[str, Any]) -> None: ...

    def _commit(self, dry_run: bool) -> None:  # noqa: B027 - an optional hook: only the ledger has something to persist
        """Persist pending changes (the ledger writes its document here)."""


class Ec2CapacityReservations(CapacityReservationProvider):
    """EC2 capacity reservations through the EC2 API (AWS). Not available on moto's server."""

    name = "ec2"

    def __init__(self, clients: AwsClients) -> None:
        self.clients = clients

    def _current(self, region: str, prefix: str) -> dict[str, dict[str, Any]]:
        ec2 = self.clients.client("ec2", region)
        found: dict[str, dict[str, Any]] = {}
        pages = ec2.get_paginator("describe_capacity_reservations").paginate(
            Filters=[{"Name": f"tag:{STACK_TAG}", "Values": [prefix]}, {"Name": "state", "Values": ["active", "pending"]}]
        )
        for page in pages:
            for item in page.get("CapacityReservations", []):
                tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
                if KEY_TAG not in tags:
                    continue
                end = item.get("EndDate")
                found[tags[KEY_TAG]] = {
                    "id": item["CapacityReservationId"],
                    "instance_type": item["InstanceType"],
                    "availability_zone": item["AvailabilityZone"],
                    "instance_count": item["TotalInstanceCount"],
                    "end_date": end.strftime("%Y-%m-%dT%H:%M:%SZ") if hasattr(end, "strftime") else end,
                }
        return found

    def _create(self, region: str, row: Mapping[str, Any], prefix: str) -> str:
        response = self.clients.client("ec2", region).create_capacity_reservation(**create_reservation_params(row, prefix))
        return response["CapacityReservation"]["CapacityReservationId"]

    def _modify(self, region: str, have: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        self.clients.client("ec2", region).modify_capacity_reservation(**modify_reservation_params(have["id"], row))

    def _cancel(self, region: str, have: Mapping[str, Any]) -> None:
        self.clients.client("ec2", region).cancel_capacity_reservation(CapacityReservationId=have["id"])


def _end_date(row: Mapping[str, Any]) -> datetime:
    return datetime.fromisoformat(str(row["end_date"]).replace("Z", "+00:00"))


def create_reservation_params(row: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    """``CreateCapacityReservation`` arguments for a deployment.json reservation row."""
    return {
        "InstanceType": row["instance_type"],
        "InstancePlatform": "Linux/UNIX",
        "AvailabilityZone": row["availability_zone"],
        "InstanceCount": int(row["instance_count"]),
        "InstanceMatchCriteria": "open",
        "EndDateType": "limited",
        "EndDate": _end_date(row),
        "TagSpecifications": [{"ResourceType": "capacity-reservation", "Tags": _reservation_tags(row, prefix)}],
    }


def modify_reservation_params(reservation_id: str, row: Mapping[str, Any]) -> dict[str, Any]:
    """``ModifyCapacityReservation`` arguments: new count and end date, same reservation."""
    return {
        "CapacityReservationId": reservation_id,
        "InstanceCount": int(row["instance_count"]),
        "EndDateType": "limited",
        "EndDate": _end_date(row),
    }


def _reservation_tags(row: Mapping[str, Any], prefix: str) -> list[dict[str, str]]:
    return [
        {"Key": STACK_TAG, "Value": prefix},
        {"Key": KEY_TAG, "Value": str(row["key"])},
        {"Key": "line_id", "Value": str(row["line_id"])},
        {"Key": "plan_id", "Value": str(row.get("plan_id", ""))},
        {"Key": "peerscale", "Value": "true"},
    ]


class LedgerCapacityReservations(CapacityReservationProvider):
    """The reconciliation of :class:`Ec2CapacityReservations`, recorded in a JSON ledger instead
    of calling the EC2 API (which moto's server does not implement). Provisions nothing."""

    name = "ledger"

    def __init__(self, uri: str) -> None:
        self.uri = uri
        self._doc: dict[str, dict[str, dict[str, Any]]] | None = None
        self._dirty = False

    @classmethod
    def for_lake(cls, lake_root: str, prefix: str) -> LedgerCapacityReservations:
        return cls(storage.join(lake_root, "iac", "capacity_reservations", f"{prefix}.json"))

    def _load(self) -> dict[str, dict[str, dict[str, Any]]]:
        if self._doc is None:
            self._doc = lake.read_json(self.uri) if storage.exists(self.uri) else {}
        return self._doc

    def _current(self, region: str, prefix: str) -> dict[str, dict[str, Any]]:
        return {k: dict(v) for k, v in self._load().get(region, {}).items()}

    def _create(self, region: str, row: Mapping[str, Any], prefix: str) -> str:
        digest = hashlib.sha256(f"{prefix}|{row['key']}|{row['availability_zone']}|{row['instance_type']}".encode()).hexdigest()
        record = {f: row[f] for f in (*_RESERVATION_IDENTITY, *_RESERVATION_MUTABLE)}
        record.update(id=f"cr-ledger{digest[:9]}", line_id=row["line_id"])
        self._load().setdefault(region, {})[str(row["key"])] = record
        self._dirty = True
        return record["id"]

    def _modify(self, region: str, have: Mapping[str, Any], row: Mapping[str, Any]) -> None:
        record = self._load()[region][str(row["key"])]
        record.update({f: row[f] for f in _RESERVATION_MUTABLE}, line_id=row["line_id"])
        self._dirty = True

    def _cancel(self, region: str, have: Mapping[str, Any]) -> None:
        entries = self._load().get(region, {})
        for key, record in list(entries.items()):
            if record["id"] == have["id"]:
                del entries[key]
        self._dirty = True

    def _commit(self, dry_run: bool) -> None:
        if self._dirty and not dry_run:
            lake.write_json_atomic(self.uri, {r: dict(sorted(v.items())) for r, v in sorted(self._load().items()) if v})
        self._dirty = False
        if dry_run:
            self._doc = None  # forget nothing-was-written state


def capacity_provider_from_env(clients: AwsClients, lake_root: str, prefix: str) -> CapacityReservationProvider:
    """The provider named by ``PEERSCALE_CAPACITY_RESERVATIONS`` (``ec2``, the default, or ``ledger``)."""
    choice = (os.environ.get(CAPACITY_PROVIDER_ENV) or "ec2").strip().lower()
    if choice == "ec2":
        return Ec2CapacityReservations(clients)
    if choice == "ledger":
        return LedgerCapacityReservations.for_lake(lake_root, prefix)
    raise ValueError(f"{CAPACITY_PROVIDER_ENV}={choice!r}: use 'ec2' (AWS) or 'ledger' (record only)")


# ---------------------------------------------------------------------------------------------
# Transit gateway peering
# ---------------------------------------------------------------------------------------------


class TransitGatewayPeering:
    """One transit gateway peering attachment per planned pair, requested and accepted via EC2."""

    def __init__(self, clients: AwsClients, wait_timeout_s: float = 600.0) -> None:
        self.clients = clients
        self.wait_timeout_s = wait_timeout_s

    def current(self, regions: Sequence[str], prefix: str) -> dict[str, dict[str, Any]]:
        """Live attachments of this deployment requested from ``regions``, by pair key."""
        found: dict[str, dict[str, Any]] = {}
        for region in sorted(set(regions)):
            ec2 = self.clients.client("ec2", region)
            response = ec2.describe_transit_gateway_peering_attachments()
            for item in response.get("TransitGatewayPeeringAttachments", []):
                tags = {t["Key"]: t["Value"] for t in item.get("Tags", [])}
                requester = item.get("RequesterTgwInfo", {})
                if tags.get(STACK_TAG) != prefix or PAIR_TAG not in tags or requester.get("Region") != region:
                    continue
                if item.get("State") not in LIVE_ATTACHMENT_STATES:
                    continue
                found[tags[PAIR_TAG]] = {
                    "id": item["TransitGatewayAttachmentId"],
                    "requester_region": region,
                    "requester_tgw": requester.get("TransitGatewayId"),
                    "accepter_region": item.get("AccepterTgwInfo", {}).get("Region"),
                    "accepter_tgw": item.get("AccepterTgwInfo", {}).get("TransitGatewayId"),
                    "state": item.get("State"),
                }
        return found

    def remove_unplanned(self, planned: Sequence[Mapping[str, str]], tgw_ids: Mapping[str, str],
                         search_regions: Sequence[str], prefix: str, dry_run: bool) -> ReconcileResult:
        """Delete attachments whose pair is not planned, or whose gateways changed."""
        result = ReconcileResult()
        wanted = {f"{p['requester']}|{p['accepter']}": p for p in planned}
        for key, have in sorted(self.current(search_regions, prefix).items()):
            pair = wanted.get(key)
            stale = pair is not None and tgw_ids and (
                have["requester_tgw"] != tgw_ids.get(pair["requester"]) or have["accepter_tgw"] != tgw_ids.get(pair["accepter"])
            )
            if pair is None or stale:
                result.removed.append(key)
                if not dry_run:
                    self.clients.client("ec2", have["requester_region"]).delete_transit_gateway_peering_attachment(
                        TransitGatewayAttachmentId=have["id"]
                    )
        return result

    def ensure(self, planned: Sequence[Mapping[str, str]], tgw_ids: Mapping[str, str], prefix: str, plan_id: str,
               dry_run: bool) -> ReconcileResult:
        """Create (and accept) the attachment of every planned pair that has none."""
        result = ReconcileResult()
        requesters = sorted({p["requester"] for p in planned})
        existing = self.current(requesters, prefix) if requesters else {}
        account: str | None = None
        for pair in planned:
            key = f"{pair['requester']}|{pair['accepter']}"
            if key in existing:
                result.unchanged.append(key)
                result.ids[key] = existing[key]["id"]
                continue
            result.created.append(key)
            if dry_run:
                continue
            missing = [r for r in (pair["requester"], pair["accepter"]) if r not in tgw_ids]
            if missing:
                raise RuntimeError(f"cannot peer {key}: no transit gateway output in the stack of {missing}")
            account = account or self.clients.account_id(pair["requester"])
            created = self.clients.client("ec2", pair["requester"]).create_transit_gateway_peering_attachment(
                TransitGatewayId=tgw_ids[pair["requester"]],
                PeerTransitGatewayId=tgw_ids[pair["accepter"]],
                PeerAccountId=account,
                PeerRegion=pair["accepter"],
                TagSpecifications=[{"ResourceType": "transit-gateway-attachment", "Tags": [
                    {"Key": STACK_TAG, "Value": prefix},
                    {"Key": PAIR_TAG, "Value": key},
                    {"Key": "plan_id", "Value": plan_id},
                    {"Key": "peerscale", "Value": "true"},
                    {"Key": "Name", "Value": f"{prefix}-{pair['requester']}-{pair['accepter']}"},
                ]}],
            )
            attachment_id = created["TransitGatewayPeeringAttachment"]["TransitGatewayAttachmentId"]
            self._accept(pair["accepter"], attachment_id)
            result.ids[key] = attachment_id
        return result

    def _accept(self, region: str, attachment_id: str) -> None:
        """Accept in the peer region once AWS has passed the request on (pendingAcceptance)."""
        ec2 = self.clients.client("ec2", region)
        deadline = time.monotonic() + self.wait_timeout_s
        delay = 0.5
        while True:
            items = ec2.describe_transit_gateway_peering_attachments(
                TransitGatewayAttachmentIds=[attachment_id]
            ).get("TransitGatewayPeeringAttachments", [])
            state = items[0].get("State") if items else None
            if state == "pendingAcceptance":
                ec2.accept_transit_gateway_peering_attachment(TransitGatewayAttachmentId=attachment_id)
                return
            if state in ("available", "pending"):
                return
            if state not in (None, "initiating", "initiatingRequest") or time.monotonic() > deadline:
                raise RuntimeError(f"peering attachment {attachment_id} in {region} is {state!r}, cannot accept it")
            time.sleep(delay)
            delay = min(delay * 2, 10.0)
