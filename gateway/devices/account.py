"""Whose is a device's Matrix account: the link speaks only as accounts it created.

Every device speaks as ``@dev.NAME`` (registration refuses the prefix, see
:data:`~lowband.gateway.devices.registry.RESERVATION`). The account is
created by the gateway with ``users.owner = "device:NAME"``; an account of
that ID with another owner — registered by a person before the prefix was
reserved, made with ``lowband user add --allow-reserved``, or left from an
older database whose ownership could not be established — is never
adopted: its password was chosen by someone else.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lowband.gateway.devices.registry import DeviceRecord


def device_owner(name: str) -> str:
    """The ``users.owner`` value of the account the link creates for device ``name``."""
    return f"device:{name}"


def account_problem(record: DeviceRecord, user: Mapping[str, Any] | None) -> str | None:
    """None when the link may speak as the device's account (``user``: the store's row, or None if missing).

    Otherwise one line for the log and ``lowband device show``: what is wrong
    and how the operator fixes it.
    """
    if user is None:
        return f"{record.user_id} does not exist yet: the gateway creates it when it runs"
    owner = user.get("owner")
    if owner == device_owner(record.name):
        return None
    holder = "a person's account" if owner is None else f"created by {owner}"
    return (
        f"{record.user_id} already exists and was not created for this device ({holder}): the gateway posts "
        f"nothing as it and refuses the device's readings. Fix: revoke the device and provision it under another "
        f"name (`lowband device revoke {record.name}`, then `lowband device add NEWNAME ...` and flash the new "
        f"config); the existing account stays a person's"
    )
