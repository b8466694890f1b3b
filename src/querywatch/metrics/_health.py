"""The app's engines and its readiness: each database answers ``SELECT 1`` within a
timeout (``QUERYWATCH_READY_PATH``)."""

from __future__ import annotations

import threading
import typing as t

from ._collectors import pool_status

if t.TYPE_CHECKING:
    from collections.abc import Iterable


# --- the app's endpoints ----------------------------------------------------------------

#: Endpoint names of querywatch's own views; their requests are not captured.
METRICS_ENDPOINT = "_querywatch_metrics"
READY_ENDPOINT = "_querywatch_ready"
#: Every endpoint of querywatch's (``/metrics``, ``/readyz``, the dashboard) starts so.
OWN_PREFIX = "_querywatch"


def app_engines(app: t.Any, explicit: Iterable[t.Any] | None) -> dict[str, t.Any]:
    """The engines an app uses, by name: ``QueryWatch(engines=...)``'s, else
    Flask-SQLAlchemy's binds (``default`` for the main one)."""
    if explicit is not None:
        return {f"{e.url.get_backend_name()}:{e.url.database or ''}#{i}": e
                for i, e in enumerate(explicit)}  # fmt: skip
    ext = app.extensions.get("sqlalchemy")
    if ext is None:
        return {}
    with app.app_context():
        engines = dict(ext.engines)
    return {("default" if k is None else str(k)): e for k, e in engines.items()}


def check_database(engine: t.Any, timeout: float) -> dict[str, t.Any]:
    """``SELECT 1`` on a connection of the engine's pool, given ``timeout`` seconds (in a
    thread of its own, so a database that hangs cannot hold the probe)."""
    import time

    from sqlalchemy import text

    from .._sql import IGNORE_OPTION

    result: dict[str, t.Any] = {}

    def probe() -> None:
        start = time.perf_counter()
        try:
            with engine.connect().execution_options(**{IGNORE_OPTION: True}) as conn:
                conn.execute(text("SELECT 1"))
            result["ok"] = True
        except Exception as e:
            result["ok"] = False
            first = str(e).splitlines()[0][:200] if str(e) else ""
            result["error"] = f"{type(e).__name__}: {first}"
        result["ms"] = round((time.perf_counter() - start) * 1000, 2)

    thread = threading.Thread(target=probe, name="querywatch-ready", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        return {"ok": False, "error": f"no answer within {timeout:g} s", "ms": timeout * 1000}
    return result


def readiness(engines: dict[str, t.Any], timeout: float) -> tuple[dict[str, t.Any], bool]:
    """The readiness report of an app's databases, and whether all answered."""
    dbs = []
    ready = True
    for name, engine in sorted(engines.items()):
        entry = {"name": name, **check_database(engine, timeout)}
        st = pool_status(engine)
        if st is not None:
            entry["pool"] = st
        ready = ready and bool(entry["ok"])
        dbs.append(entry)
    return {"status": "ready" if ready else "unavailable", "databases": dbs}, ready
