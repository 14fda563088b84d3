"""What the bridge keeps for one ``[[mqtt.brokers]]`` entry while it runs.

One :class:`BrokerSession` per broker holds everything that is per broker:
its link (the worker process), the inbound mappings that listen on it and
the topic → mapping cache, and the bookkeeping of "nothing lost, nothing
twice" for that connection (``ingest.py`` has the rules): the PUBACK
sequencer, the ingestion rows (``Deduper``), the PUBACK counter, the
barrier in flight, and the rows waiting to be deleted. Plain data; the
bridge (``bridge.py``) acts on it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from lowband.gateway.bridges.mqtt.client import BrokerLink
from lowband.gateway.bridges.mqtt.config import InboundMapping
from lowband.gateway.bridges.mqtt.ingest import AckSequencer, Deduper


@dataclass(eq=False)
class Barrier:
    """A barrier in flight: the connection it was written on, its id, and the PUBACK count it covers."""

    gen: int
    ident: int
    ack_no: int


@dataclass(eq=False)
class BrokerSession:
    """One broker at run time (see the module docstring)."""

    link: BrokerLink
    deduper: Deduper
    routes: list[InboundMapping]  # the inbound mappings on this broker, in config order
    sequencer: AckSequencer = field(default_factory=AckSequencer)
    routed: dict[str, Any] = field(default_factory=dict)  # topic → route() result, a cache
    ack_no: int = 0  # PUBACKs written so far, on every connection
    barrier: Barrier | None = None  # at most one in flight
    barrier_due: bool = False  # one is asked for (sent shortly)
    connected_at: float = 0.0  # time.monotonic() of the last CONNACK
    old_rows: bool = True  # rows of earlier connections (or runs) may remain
    dropped: list[str] = field(default_factory=list)  # txn_ids whose rows are deleted at the next flush

    @property
    def name(self) -> str:
        """The broker's name (``[[mqtt.brokers]] name``)."""
        return self.link.name
