"""A small JSON-over-HTTP client on the standard library, for the command-line tools.

urllib rather than httpx: the tools ship with the node package, and httpx would become a
runtime dependency (and ~100 ms of import per invocation) for a handful of one-shot requests.
Proxies from the environment are ignored: the tools talk to cluster nodes directly, as a load
balancer's health probe would, and a proxy in between would report its own state, not theirs.
"""

from __future__ import annotations

import http.client
import json
import ssl
import urllib.error
import urllib.request
from typing import Any

__all__ = ["Answer", "Credentials", "Unreachable", "normalize_endpoint", "request_json"]


class Credentials:
    """How the tools present themselves: ``token`` (sent as ``Authorization: Bearer``; None:
    no header) and ``cacert`` (a PEM file of the CA that signed the nodes' HTTPS
    certificates; None: the system's trust store). Raises ValueError if ``cacert`` cannot be
    loaded. The token is kept out of ``repr`` so no traceback or log shows it."""

    __slots__ = ("_opener", "token")

    def __init__(self, token: str | None = None, cacert: str | None = None) -> None:
        self.token = token or None
        context = ssl.create_default_context()
        if cacert:
            try:
                context.load_verify_locations(cafile=cacert)
            except (OSError, ssl.SSLError) as exc:
                reason = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or exc
                raise ValueError(f"--cacert {cacert}: cannot load it: {reason}") from None
        self._opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=context)
        )

    def __repr__(self) -> str:
        return f"Credentials(token={'<set>' if self.token else None})"

    def open(self, req: urllib.request.Request, timeout_s: float) -> Any:
        """``urlopen`` of ``req`` with these credentials' CA (the token is the caller's
        header to set); raises as ``urlopen`` does (``HTTPError`` for a 4xx/5xx)."""
        return self._opener.open(req, timeout=timeout_s)


_NONE = Credentials()


class Unreachable(Exception):
    """No HTTP answer from the endpoint: refused, reset, timed out, or not HTTP."""


class Answer:
    """An HTTP answer: ``status`` (int), ``body`` (the decoded JSON, or None if the body is
    not JSON) and ``endpoint`` (the URL asked, path included)."""

    __slots__ = ("body", "endpoint", "status")

    def __init__(self, status: int, body: Any, endpoint: str = "") -> None:
        self.status = status
        self.body = body
        self.endpoint = endpoint

    def error_code(self) -> str | None:
        """The ``"error"`` member of a JSON error body, e.g. ``"not_leader"``; else None."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return str(self.body["error"])
        return None


def normalize_endpoint(text: str) -> str:
    """``"127.0.0.1:10001"`` or ``"http://127.0.0.1:10001/"`` -> ``"http://127.0.0.1:10001"``.

    Raises ValueError for an empty endpoint or a scheme other than http/https.
    """
    url = text.strip().rstrip("/")
    if not url:
        raise ValueError("an endpoint is empty")
    if "://" not in url:
        url = "http://" + url
    scheme = url.split("://", 1)[0].lower()
    if scheme not in ("http", "https"):
        raise ValueError(f"endpoint {text!r}: scheme must be http or https")
    return url


def request_json(
    method: str,
    url: str,
    timeout_s: float,
    payload: Any = None,
    credentials: Credentials | None = None,
) -> Answer:
    """One request; ``payload`` (if not None) is sent as a JSON body, with ``credentials``
    (a bearer token, the CA for https:// URLs) if given.

    Returns the answer whatever its status (4xx/5xx included). Raises :class:`Unreachable`
    when there is no HTTP answer within ``timeout_s`` seconds.
    """
    data = None
    headers = {"Accept": "application/json"}
    credentials = credentials or _NONE
    if credentials.token:
        headers["Authorization"] = f"Bearer {credentials.token}"
    if payload is not None:
        data = json.dumps(payload).encode()
        headers["Content-Type"] = "application/json"
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with credentials._opener.open(req, timeout=timeout_s) as response:
            return Answer(response.status, _decode(response.read()), url)
    except urllib.error.HTTPError as exc:
        try:
            body = exc.read()
        except OSError:
            body = b""
        finally:
            exc.close()
        return Answer(exc.code, _decode(body), url)
    except (OSError, ValueError, urllib.error.URLError) as exc:
        # URLError wraps refused/unresolvable; OSError covers resets and socket timeouts;
        # ValueError an answer that is not HTTP at all (http.client raises subclasses).
        reason = getattr(exc, "reason", exc)
        raise Unreachable(str(reason) or type(exc).__name__) from None
    except http.client.HTTPException as exc:  # a garbled status line, etc.
        raise Unreachable(f"{type(exc).__name__}: {exc}") from None


def _decode(body: bytes) -> Any:
    try:
        return json.loads(body)
    except ValueError:
        return None
