"""Bridges between rooms and other messaging systems.

``mqtt_bridge.start_mqtt`` is the gateway component for MQTT (see
``docs/mqtt.md``). The sans-I/O parts (configuration, topic routing, payload
translation, ingestion bookkeeping, Home Assistant discovery) live in their
own modules and never touch a socket or the event loop.
"""
