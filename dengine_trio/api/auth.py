"""Bearer tokens on the HTTP ports (``[auth]``; ``docs/security.md``, "Tokens").

:func:`install_auth` adds one ``before_request`` hook to an app when ``[auth] enable = true``
and nothing at all otherwise, so a node without auth pays nothing per request. The hook reads
``Authorization: Bearer <token>``, looks its role up, and compares it with the role the
request needs (:func:`kv_role_needed`, :func:`health_role_needed`):

- no token, or one not in the file: 401 ``unauthorized`` with
  ``WWW-Authenticate: Bearer realm="dengine"`` (RFC 6750 section 3);
- a known token whose role is too weak: 403 ``forbidden``;
- a path that needs no token (``/primary``, ``/replica``: load balancer probes): let through.

Tokens are compared in constant time: the presented token's SHA-256 is compared with
``hmac.compare_digest`` against the digest of every known token, all of them, with no early
exit, so neither the time taken nor its variation says which token (or how much of one)
matched. No token reaches a log: refusals say only which path and role.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Mapping

from quart import Quart, Response, request

from dengine_trio.api import json_error
from dengine_trio.config import AUTH_ROLES, AuthConfig, read_tokens

__all__ = [
    "OPEN_HEALTH_PATHS",
    "REALM",
    "TokenTable",
    "authorized",
    "health_role_needed",
    "install_auth",
    "kv_role_needed",
]

REALM = "dengine"
OPEN_HEALTH_PATHS = frozenset({"/primary", "/replica"})
"""Health paths served without a token: load balancers probe them."""

_RANK = {role: rank for rank, role in enumerate(AUTH_ROLES)}
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


class TokenTable:
    """Known tokens, kept as SHA-256 digests, each with its role (one of ``AUTH_ROLES``)."""

    __slots__ = ("_entries",)

    def __init__(self, tokens: Mapping[str, str]) -> None:
        self._entries = [(hashlib.sha256(t.encode()).digest(), r) for t, r in tokens.items()]

    def role_of(self, token: str) -> str | None:
        """The role of ``token``, None if unknown. Looks at every entry whatever matches."""
        presented = hashlib.sha256(token.encode("utf-8", "surrogateescape")).digest()
        found: str | None = None
        for digest, role in self._entries:
            # Digests are equal in length, and the loop never stops early.
            if hmac.compare_digest(presented, digest):
                found = role
        return found


def kv_role_needed(method: str, path: str) -> str | None:
    """KV port: reads need ``read``, anything else (writes, deletes) ``write``."""
    return "read" if method in _READ_METHODS else "write"


def health_role_needed(method: str, path: str) -> str | None:
    """Health port: ``/primary`` and ``/replica`` need none (probes), all else ``admin``
    (``/status``, ``/metrics``, the cluster page ``/``, and any admin endpoint to come)."""
    return None if path in OPEN_HEALTH_PATHS else "admin"


def install_auth(
    app: Quart, auth: AuthConfig, role_needed: Callable[[str, str], str | None]
) -> TokenTable | None:
    """Require tokens on ``app`` if ``auth.enable``; the token file is read now. Returns the
    table the hook checks against (None without auth), for a fast path that must let only
    sufficiently authorized requests past Quart (:func:`authorized`).

    ``role_needed(method, path)`` is the role a request needs, None for none. Raises
    ValueError (``<file>:<line>: problem``) for a bad token file; ``load_config`` already
    checked it, so that means it changed since.
    """
    if not auth.enable:
        return None
    table = TokenTable(read_tokens(auth.tokens_path))
    challenge = {"WWW-Authenticate": f'Bearer realm="{REALM}"'}

    async def check_token() -> Response | None:
        needed = role_needed(request.method, request.path)
        if needed is None:
            return None
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        role = table.role_of(token.strip()) if scheme.lower() == "bearer" else None
        if role is None:
            return json_error(
                401,
                "unauthorized",
                f"this endpoint needs a bearer token with role {needed} or stronger",
                challenge,
            )
        if _RANK[role] < _RANK[needed]:
            return json_error(
                403, "forbidden", f"role {role} may not do this: it needs role {needed}"
            )
        return None

    app.before_request(check_token)
    return table


def authorized(table: TokenTable, headers: list[tuple[bytes, bytes]], needed: str) -> bool:
    """Whether the ASGI ``headers`` carry a bearer token of role ``needed`` or stronger, by
    the hook's rules (the first ``Authorization`` header, scheme case-insensitive)."""
    value = ""
    for name, raw in headers:
        if name == b"authorization":
            value = raw.decode("latin-1")
            break
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer":
        return False
    role = table.role_of(token.strip())
    return role is not None and _RANK[role] >= _RANK[needed]
