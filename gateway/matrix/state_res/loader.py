"""The one place state resolution reads events: memoised, counted, checked.

Every step asks an :class:`EventLoader` for events instead of calling the
caller's ``get_event`` itself, so that

* each event is fetched once per resolution, however many steps need it;
* a missing event is one documented error (:class:`MissingEventError`);
* an event of another room is refused (:class:`InvalidStateError`): a peer
  could name any event ID it likes in a state set or an ``auth_events`` list;
* all the work is counted against one budget (:class:`WorkLimitExceeded`):
  one unit per event fetched, one per event ID a step examines while walking
  auth chains, so the cost of a resolution is bounded whatever the DAG.
"""

from __future__ import annotations

from collections.abc import Callable

from lowband.gateway.matrix.auth_rules import CREATE
from lowband.gateway.matrix.events import Event
from lowband.gateway.matrix.identifiers import create_event_id_of_room, room_id_of_create_event
from lowband.gateway.matrix.room_versions import RoomVersion
from lowband.gateway.matrix.state_res.errors import InvalidStateError, MissingEventError, WorkLimitExceeded

__all__ = ["EventLoader"]


class EventLoader:
    """Events of one room for one resolution.

    ``get_event`` returns the event or ``None``; ``is_rejected`` says whether
    this server rejected an event (see :func:`resolve_state`); ``max_visits``
    is the work budget.
    """

    def __init__(
        self,
        room_version: RoomVersion,
        get_event: Callable[[str], Event | None],
        is_rejected: Callable[[str], bool] | None,
        max_visits: int,
    ) -> None:
        self.room_version = room_version
        self._get_event = get_event
        self._is_rejected = is_rejected
        self._events: dict[str, Event] = {}
        self._rejected: dict[str, bool] = {}
        self._room_id: str | None = None
        self.max_visits = max_visits
        self.visits = 0

    def spend(self, units: int = 1) -> None:
        """Count ``units`` of work; raises :class:`WorkLimitExceeded` past the budget."""
        self.visits += units
        if self.visits > self.max_visits:
            raise WorkLimitExceeded(self.max_visits)

    def event(self, event_id: str) -> Event:
        """The event called ``event_id`` (fetched once, one unit of work).

        Raises :class:`MissingEventError` if ``get_event`` has none, or if it
        returns an event with another ID; :class:`InvalidStateError` if the
        event is of another room than the events fetched before it.
        """
        found = self._events.get(event_id)
        if found is not None:
            return found
        self.spend()
        event = self._get_event(event_id)
        if event is None or event.event_id != event_id:
            raise MissingEventError(event_id)
        room_id = self._room_of(event)
        if self._room_id is None:
            self._room_id = room_id
        elif room_id != self._room_id:
            raise InvalidStateError(f"event {event_id[:100]} is in another room than the rest of the state")
        self._events[event_id] = event
        return event

    def auth_ids(self, event_id: str) -> list[str]:
        """The ``auth_events`` of ``event_id``, as the event lists them."""
        return self.event(event_id).auth_events

    def rejected(self, event_id: str) -> bool:
        """Whether this server rejected ``event_id`` (never, when no ``is_rejected`` was given)."""
        if self._is_rejected is None:
            return False
        known = self._rejected.get(event_id)
        if known is None:
            known = self._rejected[event_id] = bool(self._is_rejected(event_id))
        return known

    def create_event(self, event: Event) -> Event | None:
        """The room's ``m.room.create`` as ``event`` knows it, or ``None`` if it names none.

        Up to version 11 the create event is among the event's
        ``auth_events``; from version 12 (MSC4291) it is not, and the room ID
        names it instead: ``!`` + the create event's reference hash.
        """
        if event.type == CREATE and event.state_key == "":
            return event
        if self.room_version.room_id_is_create_hash:
            return self.event(create_event_id_of_room(event.room_id))
        for auth_id in event.auth_events:
            auth_event = self.event(auth_id)
            if auth_event.type == CREATE and auth_event.state_key == "":
                return auth_event
        return None

    def _room_of(self, event: Event) -> str:
        # A version 12 create event has no room_id: its ID is the room's.
        if self.room_version.room_id_is_create_hash and event.type == CREATE and event.state_key == "":
            return room_id_of_create_event(event.event_id)
        room_id = event.pdu.get("room_id")
        return room_id if isinstance(room_id, str) else ""
