"""Receiving PDUs from other servers, one file per step of the spec's "Checks performed on receipt".

In the order a PDU goes through them:

0. ``check_server_acl`` — the room's server ACL allows the sending server, else ignored;
1. ``parse_incoming_pdu`` — a valid event of its room's version, else dropped;
2. ``check_signatures`` — signed by its sender's server, else dropped; a bad
   content hash gets the event redacted;
3. ``fetch_auth_events`` — its auth events known (fetched, checked and kept as outliers);
4. ``fetch_prev_events`` — its prev events known (``/get_missing_events``), or the
   state at a gap fetched (``/state_ids``);
5. ``state_at_event`` — the state before it, resolved across its prev events;
6. ``auth_checks`` — authorised by its auth events and by the state before it,
   else rejected; by the current state, else soft-failed;
7. the room DAG stores it (``dag.RoomDag``), rejected and soft-failed ones too.

``pipeline.InboundPipeline`` runs the steps, one PDU per room at a time.
"""
