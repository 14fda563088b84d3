"""The media repository: uploads, downloads, thumbnails and the upload limit.

Rules:

* a media ID is 24 URL-safe base64 characters from ``secrets``; an ID from a
  request must match ``[A-Za-z0-9_-]+`` and have a database row before it
  is turned into a path, so no request can name a file of its choosing;
* the bytes of ``mxc://<server>/<id>`` live at ``media_dir/<id[0:2]>/<id[2:4]>/<id>``;
* an upload streams into a temporary file in ``media_dir`` while bytes are
  counted and hashed (never more than the limit is read), then the file is
  fsynced, renamed into place, its directory fsynced, and only then the
  row is written: a crash leaves at worst an orphan file, never a row
  without bytes;
* a user's stored uploads may total ``media.quota_bytes_per_user``: an
  upload whose announced length (or, without one, the whole upload limit)
  does not fit beside them and the user's uploads in progress is refused
  403 M_FORBIDDEN before a byte is read;
* the body must arrive within ``http.body_timeout_s`` plus a second per
  ``http.min_body_bytes_per_s`` bytes (408 otherwise);
* a download is served inline only for the spec's list of types that
  cannot run script; everything else is an attachment, and every response
  carries a sandboxing Content-Security-Policy.

Thumbnails are not generated: for the image types a thumbnail may have, the
original bytes are served (the spec allows the original when it is not
larger than asked for, and clients scale it down); other media answer 400
M_UNKNOWN, as the spec says for content the server cannot thumbnail.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import re
import secrets
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from lowband.gateway.api.http.base import authenticate, body_deadline, ok, rate_limit, services
from lowband.gateway.homeserver.services import Services
from lowband.gateway.matrix.errors import MatrixError, invalid_param, not_found
from lowband.gateway.matrix.numbers import parse_digits
from lowband.gateway.store.interfaces import MediaRow

log = logging.getLogger(__name__)

LEGACY = "/_matrix/media/{version:(?:v3|r0)}"
AUTHED = "/_matrix/client/v1/media"
_CHUNK = 64 * 1024
_MEDIA_ID = re.compile(r"[A-Za-z0-9_-]{1,255}")
_MAX_HEADER_CHARS = 255
_MAX_THUMBNAIL_SIDE = 1 << 16

# The spec's "serving inline content" list: types a browser will not run as script.
INLINE_TYPES = frozenset({
    "text/css", "text/plain", "text/csv", "application/json", "application/ld+json",
    "image/jpeg", "image/gif", "image/png", "image/apng", "image/webp", "image/avif",
    "video/mp4", "video/webm", "video/ogg", "video/quicktime",
    "audio/mp4", "audio/webm", "audio/aac", "audio/mpeg", "audio/ogg", "audio/wave", "audio/wav",
    "audio/x-wav", "audio/x-pn-wav", "audio/flac", "audio/x-flac",
})  # fmt: skip
THUMBNAIL_TYPES = frozenset({"image/jpeg", "image/png", "image/apng", "image/gif", "image/webp"})
# The policy the spec recommends for media responses.
CONTENT_SECURITY_POLICY = (
    "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
    "style-src 'unsafe-inline'; object-src 'self';"
)


def media_path(media_dir: Path, media_id: str) -> Path:
    """Where the bytes of a (validated) media ID live."""
    return media_dir / media_id[0:2] / media_id[2:4] / media_id


def mime_type(content_type: str) -> str:
    """The bare, lower-case MIME type of a Content-Type value (no parameters)."""
    return content_type.split(";", 1)[0].strip().lower()


def content_disposition(content_type: str, filename: str | None, *, inline: bool | None = None) -> str:
    """A Content-Disposition value: inline only for safe types, the file name encoded.

    A printable ASCII name without quotes or backslashes goes in a quoted
    ``filename``; anything else as RFC 8187 ``filename*=utf-8''…``, so no
    name can break out of the header.
    """
    if inline is None:
        inline = mime_type(content_type) in INLINE_TYPES
    disposition = "inline" if inline else "attachment"
    if not filename:
        return disposition
    if all(0x20 <= ord(c) < 0x7F for c in filename) and '"' not in filename and "\\" not in filename:
        return f'{disposition}; filename="{filename}"'
    return f"{disposition}; filename*=utf-8''{quote(filename, safe='')}"


def _header_text(value: str, what: str, *, ascii_only: bool = False) -> str:
    """``value`` if it is not too long and has no control characters and no surrogates (and, with
    ``ascii_only``, is printable ASCII, as a header must be); M_INVALID_PARAM otherwise.

    aiohttp hands a header's bytes outside ASCII on as surrogate escapes, which the store cannot encode.
    """
    if len(value) > _MAX_HEADER_CHARS or any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 or 0xD800 <= ord(c) < 0xE000
                                             or (ascii_only and ord(c) > 0x7E) for c in value):  # fmt: skip
        raise invalid_param(f"invalid {what}" + (": printable ASCII only" if ascii_only else ""))
    return value


def _too_large(limit: int) -> MatrixError:
    return MatrixError(413, "M_TOO_LARGE", f"uploads are limited to {limit} bytes")


# ---------------------------------------------------------------- upload

#: user ID -> bytes of that user's uploads in progress (they count against the quota until they end)
UPLOADS_IN_FLIGHT = web.AppKey("uploads_in_flight", dict[str, int])


async def upload(request: web.Request) -> web.Response:
    """POST /_matrix/media/v3/upload: the body is the file, ``filename`` a query parameter.

    413 M_TOO_LARGE over ``max_upload_bytes`` (from Content-Length before
    reading, and while streaming when there is none); 400 M_INVALID_PARAM for
    an unusable Content-Type or file name.
    """
    requester = authenticate(request)
    rate_limit(request, requester)
    svc = services(request)
    limit = svc.config.max_upload_bytes
    if request.content_length is not None and request.content_length > limit:
        raise _too_large(limit)
    filename = request.query.get("filename") or None
    if filename is not None:
        _header_text(filename, "file name")
    content_type = _header_text(request.headers.get("Content-Type", "").strip(), "Content-Type", ascii_only=True)
    content_type = content_type or "application/octet-stream"
    media_id = secrets.token_urlsafe(18)
    in_flight = request.app[UPLOADS_IN_FLIGHT]
    user = requester.user_id
    quota = svc.config.media_quota_bytes
    left = quota - svc.store.media_bytes_of(user) - in_flight.get(user, 0)
    wanted = min(limit, request.content_length if request.content_length is not None else limit)
    if wanted > left:  # without a Content-Length, room for a whole upload is needed
        raise _over_quota(quota)
    # Bytes being uploaded count as used until the upload ends, so parallel uploads cannot pass the quota together.
    in_flight[user] = in_flight.get(user, 0) + wanted
    try:
        # a body longer than announced is cut by aiohttp; one sent without a length reserved a whole upload
        size, digest = await _receive(request, svc, media_id, limit)
        try:
            await svc.store.add_media(media_id, content_type, filename, size, digest, user, svc.rooms.now_ms())
        except BaseException:
            media_path(svc.config.media_dir, media_id).unlink(missing_ok=True)
            raise
    finally:
        in_flight[user] -= wanted
        if not in_flight[user]:
            del in_flight[user]
    return ok({"content_uri": f"mxc://{svc.server_name}/{media_id}"})


def _over_quota(quota: int) -> MatrixError:
    return MatrixError(403, "M_FORBIDDEN", f"your uploads would pass this gateway's media quota of {quota} bytes")


async def _receive(request: web.Request, svc: Services, media_id: str, limit: int) -> tuple[int, str]:
    """Stream the body to its final path; (size, sha256 hex). Nothing is left behind on failure."""
    media_dir = svc.config.media_dir
    temp = media_dir / f".upload-{media_id}"
    final = media_path(media_dir, media_id)
    hasher = hashlib.sha256()
    size = 0
    try:
        with os.fdopen(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
            try:
                async with body_deadline(request, limit):
                    async for chunk in request.content.iter_chunked(_CHUNK):
                        size += len(chunk)
                        if size > limit:
                            raise _too_large(limit)
                        hasher.update(chunk)
                        # File writes go to a thread: on a gateway's SD card a
                        # write can stall long enough to freeze every other request.
                        await asyncio.to_thread(file.write, chunk)
            except (ConnectionError, HttpProcessingError):
                # The peer hung up or broke the body's framing: its fault, not ours.
                raise MatrixError(400, "M_UNKNOWN", "the upload was cut short") from None
            await asyncio.to_thread(_place, file, temp, final)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    return size, hasher.hexdigest()


def _place(file: BinaryIO, temp: Path, final: Path) -> None:
    """fsync the file, rename it into place, fsync the directories that changed."""
    file.flush()
    os.fsync(file.fileno())
    created = not final.parent.exists()
    final.parent.mkdir(parents=True, exist_ok=True)
    os.replace(temp, final)
    dirs = [final.parent, temp.parent]
    if created:
        dirs += [final.parent.parent]
    for directory in dirs:
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


# -------------------------------------------------------------- download


def _stored_media(request: web.Request) -> tuple[MediaRow, Path]:
    """The row and file of the requested local media; 404 M_NOT_FOUND otherwise."""
    svc = services(request)
    media_id = request.match_info["media_id"]
    if request.match_info["server_name"] != svc.server_name or not _MEDIA_ID.fullmatch(media_id):
        raise not_found("no such media")
    row = svc.store.get_media(media_id)
    if row is None:
        raise not_found("no such media")
    path = media_path(svc.config.media_dir, media_id)
    if not path.is_file():
        log.error("media %s has a row but no file at %s", media_id, path)
        raise not_found("no such media")
    return row, path


def _file_response(path: Path, content_type: str, disposition: str, authenticated: bool) -> web.FileResponse:
    # Media never changes once uploaded; authenticated media must not sit in shared caches.
    cache = "private" if authenticated else "public"
    headers = {
        "Content-Type": content_type,
        "Content-Disposition": disposition,
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "Cross-Origin-Resource-Policy": "cross-origin",
        "X-Content-Type-Options": "nosniff",
        "Cache-Control": f"{cache}, max-age=86400, immutable",
    }
    # FileResponse keeps the Content-Type given here and sets Content-Length;
    # it would also serve a "<path>.gz" sibling, but media IDs have no dots,
    # so no such file can exist under media_dir.
    return web.FileResponse(path, headers=headers)


async def _download(request: web.Request, authenticated: bool) -> web.StreamResponse:
    if authenticated:
        authenticate(request)
    row, path = _stored_media(request)
    filename = request.match_info.get("file_name") or row["filename"]
    return _file_response(path, row["content_type"], content_disposition(row["content_type"], filename), authenticated)


async def download(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/client/v1/media/download/{serverName}/{mediaId}[/{fileName}] (authenticated)."""
    return await _download(request, authenticated=True)


async def legacy_download(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/media/v3/download/{serverName}/{mediaId}[/{fileName}] (deprecated, unauthenticated)."""
    return await _download(request, authenticated=False)


def _dimension(request: web.Request, key: str) -> int:
    raw = request.query.get(key)
    if raw is None:
        raise MatrixError(400, "M_MISSING_PARAM", f"missing '{key}'")
    value = parse_digits(raw, 9)
    if value is None or not 0 < value <= _MAX_THUMBNAIL_SIDE:
        raise invalid_param(f"'{key}' must be a positive integer")
    return value


async def _thumbnail(request: web.Request, authenticated: bool) -> web.StreamResponse:
    if authenticated:
        authenticate(request)
    _dimension(request, "width")
    _dimension(request, "height")
    if request.query.get("method", "scale") not in ("crop", "scale"):
        raise invalid_param("method must be 'crop' or 'scale'")
    row, path = _stored_media(request)
    if mime_type(row["content_type"]) not in THUMBNAIL_TYPES:
        raise MatrixError(400, "M_UNKNOWN", "cannot generate thumbnails for this content")
    disposition = content_disposition(row["content_type"], row["filename"], inline=True)
    return _file_response(path, mime_type(row["content_type"]), disposition, authenticated)


async def thumbnail(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/client/v1/media/thumbnail/{serverName}/{mediaId}: the original image."""
    return await _thumbnail(request, authenticated=True)


async def legacy_thumbnail(request: web.Request) -> web.StreamResponse:
    """GET /_matrix/media/v3/thumbnail/{serverName}/{mediaId} (deprecated, unauthenticated)."""
    return await _thumbnail(request, authenticated=False)


async def media_config(request: web.Request) -> web.Response:
    """GET /_matrix/client/v1/media/config and /_matrix/media/v3/config."""
    authenticate(request)
    return ok({"m.upload.size": services(request).config.max_upload_bytes})


def routes() -> list[web.RouteDef]:
    """Routes of this module."""
    media = "/{server_name}/{media_id}"
    # "[^/]*" also matches the empty name matrix-nio sends as a trailing slash.
    named = media + "/{file_name:[^/]*}"
    return [
        web.post(LEGACY + "/upload", upload),
        web.get(AUTHED + "/download" + media, download),
        web.get(AUTHED + "/download" + named, download),
        web.get(LEGACY + "/download" + media, legacy_download),
        web.get(LEGACY + "/download" + named, legacy_download),
        web.get(AUTHED + "/thumbnail" + media, thumbnail),
        web.get(LEGACY + "/thumbnail" + media, legacy_thumbnail),
        web.get(AUTHED + "/config", media_config),
        web.get(LEGACY + "/config", media_config),
    ]
