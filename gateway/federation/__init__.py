"""Federation: this gateway as a member of the Matrix network.

The server-server API's pieces, each in its own module: where to connect
(``resolver``), signed outbound requests (``client``), other servers' keys
(``keyring``). The pure parts (request signing, key documents, event
checks, state resolution) live in ``lowband.gateway.matrix``.
"""
