"""Bluetooth Low Energy sensors as room members (issue 18, ``docs/ble.md``).

``advert.Advertisement`` is what every scanner hands to the component;
``decode`` turns one into values through the parser libraries (bthome-ble and
the vendor ``*-ble`` parsers), ``tracker`` is the sans-I/O bookkeeping
(dedup, replay/downgrade refusal, presence, bounded unknown set),
``registry`` stores the configured sensors and ``component`` posts readings
into rooms as the same telemetry events devices and MQTT post.
"""
