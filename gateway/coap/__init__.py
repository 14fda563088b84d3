"""The low-bandwidth client API: Matrix over CoAP+CBOR (MSC3079), compact mode, Noise sessions (docs/coap.md)."""
