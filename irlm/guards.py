"""The limits and auth both HTTP servers share (`irlm serve`, irlm.serve, and `irlm serve-llm`,
irlm.models.generator.server): the API key read from the environment and checked in constant time, the
body-size limit checked before a byte is read, the warning for a server open to the network, and the
request fields a pydantic error names. Each server brings its own error shape through a `refuse` callable.

Example:
    >>> key = read_api_key("IRLM_API_KEY")
    >>> app.add_middleware(KeyGuard, api_key=key, refuse=lambda: MyError(401))  # doctest: +SKIP
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import os

from fastapi import Request
from starlette.exceptions import HTTPException

from irlm.errors import InputError

log = logging.getLogger(__name__)

MAX_BODY_BYTES = 4 << 20  # both servers: /encode's 64 texts x 32k characters fit; a 100 MB body is refused unread
WRONG_KEY = "missing or wrong API key; send 'Authorization: Bearer <key>'"


def read_api_key(api_key_env: str | None) -> str | None:
    """The key from $api_key_env; set but empty is refused, as it would turn every request away unannounced."""
    key = os.environ.get(api_key_env) if api_key_env else None
    if key is not None and not key.strip():
        raise InputError(f"${api_key_env} is set but empty: set it to the key clients must send, or unset it")
    return key


def warn_if_open(host: str, api_key: str | None, api_key_env: str | None) -> None:
    """A server reachable from other machines without a key serves anyone: say so once, at start."""
    if api_key is None and not is_loopback(host):
        log.warning("serving on %s without an API key: anyone who can reach it can use it (set $%s)", host,
                    api_key_env or "IRLM_API_KEY")  # fmt: skip


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def docs_pages(api_key: str | None) -> dict:
    """FastAPI's /docs, /redoc and /openapi.json: only on a server without a key (they bypass its routes' check)."""
    return {} if api_key is None else {"docs_url": None, "redoc_url": None, "openapi_url": None}


class BodyLimit:
    """ASGI middleware: 413 for a body over `max_bytes`, from its Content-Length before reading any of it,
    or, for a body sent without one, as soon as the bytes read pass the limit."""

    def __init__(self, app, max_bytes: int, refuse):
        self.app, self.max_bytes, self.refuse = app, max_bytes, refuse  # refuse(message) -> an error with .response()
        self.message = f"the request body is over the limit of {max_bytes} bytes"

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await self.refuse(self.message).response()(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise HTTPException(413, self.message)  # FastAPI hands it to the app's own handler
            return message

        await self.app(scope, counted, send)


class KeyGuard:
    """ASGI middleware: with a key, a request without `Authorization: Bearer <key>` is refused (401) before its
    body is read or parsed; `open_paths` (the health check) stay open."""

    def __init__(self, app, api_key: str | None, refuse, open_paths: tuple[str, ...] = ("/health",)):
        self.app, self.refuse, self.open_paths = app, refuse, open_paths
        self.expected = f"Bearer {api_key}".encode() if api_key is not None else None

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and self.expected is not None and scope["path"] not in self.open_paths:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):  # constant time, as bearer_ok
                return await self.refuse().response()(scope, receive, send)
        return await self.app(scope, receive, send)


def bearer_ok(request: Request, api_key: str | None) -> bool:
    """True without a key, else only for `Authorization: Bearer <key>`."""
    if api_key is None:
        return True
    given = request.headers.get("authorization", "")
    # constant-time comparison: response timing must not reveal how much of a guessed key was right
    return hmac.compare_digest(given.encode(), f"Bearer {api_key}".encode())


def key_checker(api_key: str | None, refuse):
    """A route dependency that accepts everything without a key, else only `Authorization: Bearer <key>`;
    `refuse()` makes the error raised otherwise."""

    async def check(request: Request) -> None:  # async: a plain `def` dependency costs a thread-pool hop
        if not bearer_ok(request, api_key):
            raise refuse()

    return check


def field_path(loc: tuple) -> list[str]:
    """The request fields of a pydantic error location, without "body" and union tags such as "str".

    Example:
        >>> field_path(("body", "prompt", "list[constrained-str]", 0))
        ['prompt', '0']
    """
    tags = {"body", "str", "int", "float", "bool", "list", "dict", "none"}
    return [str(p) for p in loc if isinstance(p, int) or (str(p).isidentifier() and str(p) not in tags)]
