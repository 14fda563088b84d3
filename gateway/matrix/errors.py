"""Errors that reach a Matrix client as ``{"errcode", "error"}`` responses."""

from __future__ import annotations

from typing import Any


class MatrixError(Exception):
    """A request failed in a way the client-server API names.

    ``status`` is the HTTP status, ``errcode`` the Matrix error code
    (``M_FORBIDDEN`` …), ``extra`` further fields of the body (for example
    ``retry_after_ms``).
    """

    def __init__(self, status: int, errcode: str, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.errcode = errcode
        self.message = message
        self.extra = extra

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response."""
        return {"errcode": self.errcode, "error": self.message, **self.extra}


def forbidden(message: str) -> MatrixError:
    """403 M_FORBIDDEN."""
    return MatrixError(403, "M_FORBIDDEN", message)


def not_found(message: str) -> MatrixError:
    """404 M_NOT_FOUND."""
    return MatrixError(404, "M_NOT_FOUND", message)


def bad_json(message: str) -> MatrixError:
    """400 M_BAD_JSON."""
    return MatrixError(400, "M_BAD_JSON", message)


def invalid_param(message: str) -> MatrixError:
    """400 M_INVALID_PARAM."""
    return MatrixError(400, "M_INVALID_PARAM", message)


def required_text(doc: dict[str, Any], key: str, max_chars: int) -> str:
    """``doc[key]``, a string of at most ``max_chars`` characters; 400 M_MISSING_PARAM when absent, M_BAD_JSON
    when not a string, M_INVALID_PARAM when longer."""
    value = doc.get(key)
    if value is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{key}'")
    if not isinstance(value, str):
        raise bad_json(f"'{key}' must be a string")
    if len(value) > max_chars:
        raise invalid_param(f"'{key}' is longer than {max_chars} characters")
    return value
