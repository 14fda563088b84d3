"""The one error type of the wire codecs."""


class WireError(ValueError):
    """The bytes or the JSON given to a codec cannot be encoded or decoded.

    Raised for truncated, malformed, oversized or hostile input and for a
    context table that does not fit the message. The message is one line
    that names the problem; it never contains the input itself beyond a few
    bytes, so it is safe to log.
    """
