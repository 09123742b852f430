"""The shop's HTTP API (plain WSGI, JSON), every write through DualWriter, every read through `dw.read`
(so a shadow reader compares them in phase shadow and after).

    POST   /accounts                      {"handle", "name"}
    GET    /accounts/<handle>
    GET    /accounts/<handle>/orders
    PUT    /accounts/<handle>/orders/<n>  {"total": "12.50", "items": [...], "note"}   (insert or replace)
    DELETE /accounts/<handle>/orders/<n>
    DELETE /accounts/<handle>             (its orders go by ON DELETE CASCADE, each captured)
    GET    /health
    GET    /metrics                       dualwrite.metrics.wsgi_app(): every worker's metrics under gunicorn

Configuration: the DUALWRITE_* variables (load_settings); SAMPLEAPP_SHADOW_PERCENT (default 10) of reads
compared in the shadow phases. The DualWriter is made in the worker on first use, never before the fork.
"""

from __future__ import annotations

import fcntl
import json
import os
import threading
from collections.abc import Callable, Iterable
from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from dualwrite import DualWriter, load_settings, metrics
from dualwrite.engines import sqlite_engine
from sampleapp.models import accounts, metadata, orders, tables

_lock = threading.Lock()
_writer: DualWriter | None = None
_metrics_app = metrics.wsgi_app()
Response = tuple[str, Any]


def writer() -> DualWriter:
    """This process' writer (relay included), made on first use."""
    global _writer
    with _lock:
        if _writer is None:
            settings = load_settings()
            _create_schema(settings.sqlite_url)
            dw = DualWriter(settings, tables, relay=True)
            percent = float(os.environ.get("SAMPLEAPP_SHADOW_PERCENT", "10"))
            if percent > 0:
                from dualwrite.shadow.reader import ShadowReader

                ShadowReader(percentage=percent).install(dw)
            _writer = dw
        return _writer


def _create_schema(url: str) -> None:
    """The application's own tables on SQLite (as its own migrations would), once across the workers."""
    path = url.removeprefix("sqlite:///")
    with open(f"{path}.schema-lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        engine = sqlite_engine(url)
        try:
            metadata.create_all(engine)
        finally:
            engine.dispose()


class BadRequest(Exception):
    pass


def _body(environ: dict[str, Any]) -> dict[str, Any]:
    size = int(environ.get("CONTENT_LENGTH") or 0)
    try:
        doc = json.loads(environ["wsgi.input"].read(size) or b"{}")
    except ValueError as exc:
        raise BadRequest(f"body is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise BadRequest("body must be a JSON object")
    return doc


def _money(value: Any) -> Decimal:
    try:
        return Decimal(str(value))
    except InvalidOperation:
        raise BadRequest(f"total {value!r} is not a decimal number") from None


def _order_doc(row: Any) -> dict[str, Any]:
    """An order row (a RowMapping) as JSON."""
    return {**row, "total": str(row["total"]), "placed_at": row["placed_at"].isoformat()}


def route(method: str, parts: list[str], environ: dict[str, Any]) -> Response:
    dw = writer()
    if parts == ["accounts"] and method == "POST":
        doc = _body(environ)
        if not doc.get("handle") or not doc.get("name"):
            raise BadRequest("handle and name are required")
        try:
            rows = dw.execute(accounts.insert().values(handle=str(doc["handle"]), name=str(doc["name"])))
        except IntegrityError:
            return "409 Conflict", {"error": f"account {doc['handle']!r} exists"}
        return "201 Created", {"handle": rows[0]["handle"]}
    if len(parts) == 2 and parts[0] == "accounts":
        handle = parts[1]
        if method == "GET":
            row = dw.read(
                "shop",
                "account",
                lambda c: c.execute(select(accounts).where(accounts.c.handle == handle)).first(),
                params={"handle": handle},
            )
            if row is None:
                return "404 Not Found", {"error": f"no account {handle!r}"}
            return "200 OK", {"handle": row.handle, "name": row.name, "created_at": row.created_at.isoformat()}
        if method == "DELETE":
            gone = dw.execute(delete(accounts).where(accounts.c.handle == handle))
            return ("200 OK", {"deleted": handle}) if gone else ("404 Not Found", {"error": f"no account {handle!r}"})
    if len(parts) == 3 and parts[0] == "accounts" and parts[2] == "orders" and method == "GET":
        handle = parts[1]
        rows = dw.read(
            "shop",
            "orders_of_account",
            lambda c: c.execute(select(orders).where(orders.c.account == handle).order_by(orders.c.n)).mappings().all(),
            params={"handle": handle},
        )
        return "200 OK", {"orders": [_order_doc(r) for r in rows]}
    if len(parts) == 4 and parts[0] == "accounts" and parts[2] == "orders":
        handle, n = parts[1], _int(parts[3])
        if method == "PUT":
            doc = _body(environ)
            values = {
                "account": handle,
                "n": n,
                "total": _money(doc.get("total", "0")),
                "items": doc.get("items", []),
                "note": doc.get("note"),
            }
            try:
                with dw.begin() as tx:
                    rows = tx.upsert(orders, values, conflict=["account", "n"])
            except IntegrityError:
                return "404 Not Found", {"error": f"no account {handle!r}"}
            return "200 OK", _order_doc(rows[0])
        if method == "DELETE":
            gone = dw.execute(delete(orders).where(orders.c.account == handle, orders.c.n == n))
            return ("200 OK", {"deleted": n}) if gone else ("404 Not Found", {"error": "no such order"})
    return "404 Not Found", {"error": f"no route {method} /{'/'.join(parts)}"}


def _int(text: str) -> int:
    if not text.isdigit():
        raise BadRequest(f"order number {text!r} is not a number")
    return int(text)


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    path = environ.get("PATH_INFO") or "/"
    if path == "/metrics":
        return _metrics_app(environ, start_response)  # type: ignore[no-any-return]
    method = environ["REQUEST_METHOD"]
    try:
        if path == "/health":
            status, doc = "200 OK", {"ok": True, "phase": writer().phases.current().name}
        else:
            status, doc = route(method, [p for p in path.split("/") if p], environ)
    except BadRequest as exc:
        status, doc = "400 Bad Request", {"error": str(exc)}
    body = json.dumps(doc, default=str).encode()
    start_response(
        status,
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("X-Pid", str(os.getpid()))],
    )
    return [body]
