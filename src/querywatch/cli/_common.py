"""What the ``querywatch`` commands share: the Flask app they run in, its settings and
its store."""

from __future__ import annotations

import os
import typing as t

import click

from .._config import normalize_url
from ..exceptions import QueryWatchError

if t.TYPE_CHECKING:
    from ..store import Store


def _flask_app() -> t.Any:
    """The Flask app, when run as ``flask querywatch``; else None."""
    ctx = click.get_current_context(silent=True)
    if ctx is None:
        return None
    try:
        from flask.cli import ScriptInfo
    except ImportError:  # pragma: no cover - flask is a dependency
        return None
    info = ctx.find_object(ScriptInfo)
    if info is None:
        return None
    try:
        return info.load_app()
    except Exception:
        return None


def _app_store_url() -> str | None:
    """The store URL of the Flask app, when run as ``flask querywatch``."""
    app = _flask_app()
    state = app.extensions.get("querywatch") if app is not None else None
    return state.settings.store_url if state is not None else None


def _app_database_url() -> str | None:
    """The database the Flask app's advisor asks, when run as ``flask querywatch``:
    ``QUERYWATCH_ADVISE_DATABASE_URL``, else the app's engine as Flask-SQLAlchemy
    resolved it (a relative SQLite path lives in the instance folder)."""
    app = _flask_app()
    if app is None:
        return None
    state = app.extensions.get("querywatch")
    if state is not None:
        return t.cast("str | None", state.advise_database_url())
    url = app.config.get("SQLALCHEMY_DATABASE_URI")
    return url if isinstance(url, str) else None


def _by_database(queries: list[t.Any], database_url: str) -> dict[str, list[t.Any]]:
    """The queries grouped by the database each is planned on: run as ``flask querywatch
    advise`` without ``--database-url``, each shape goes to the app's engine that holds
    its tables (a Flask-SQLAlchemy bind's shape to the bind); else all to one."""
    app = _flask_app()
    state = app.extensions.get("querywatch") if app is not None else None
    if state is None or database_url != _app_database_url():
        return {database_url: queries}
    out: dict[str, list[t.Any]] = {}
    for q in queries:
        url = state.advise_database_url(q.fingerprint, q.sql) or database_url
        out.setdefault(url, []).append(q)
    return out


def _app_config(key: str) -> t.Any:
    """A config value of the Flask app, when run as ``flask querywatch``."""
    app = _flask_app()
    return app.config.get(key) if app is not None else None


def _open_store(url: str | None, *, create: bool = False, connect: bool = True) -> Store:
    """The store the command reads (``--store``, ``QUERYWATCH_STORE_URL``, or the Flask
    app's). A store that is not there is an error, not a new empty one, unless
    ``create`` (commands that write the first record: trigger, worker, mark-deploy).
    Without ``connect``, nothing is asked of the database yet (a daemon that rides out
    a store that is down)."""
    from sqlalchemy.engine import make_url

    from ..store import Store

    url = url or os.environ.get("QUERYWATCH_STORE_URL") or _app_store_url()
    if not url:
        msg = (
            "No store to read. Pass '--store URL' (for example"
            " 'sqlite:///instance/querywatch.db'), set QUERYWATCH_STORE_URL, or run"
            " 'flask querywatch report' inside your app."
        )
        raise click.UsageError(msg)
    url = normalize_url(url)
    try:
        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:
        shown = url
    try:
        store = Store(url)
        if not connect:
            return store
        if not create and not store.exists():
            store.dispose()
            database = make_url(url).database or ""
            if store.is_sqlite:
                where = os.path.abspath(database)
                msg = (
                    f"No querywatch store at {shown}: the file {where} does not exist."
                    " Check the path (sqlite:/// and three slashes is relative to the"
                    " current folder, four slashes an absolute path); an app creates its"
                    " store in its instance folder when it serves its first request."
                )
            else:
                msg = (
                    f"No querywatch store at {shown}: the database has no querywatch"
                    " tables. Check the URL; an app creates them when it serves its first"
                    " request with QUERYWATCH_STORE_URL set to it."
                )
            raise click.ClickException(msg)
        store.migrate()
    except click.ClickException:
        raise
    except QueryWatchError as e:
        raise click.ClickException(str(e)) from None
    except Exception as e:
        first = str(e).splitlines()[0] if str(e) else ""
        msg = f"Could not read the store at {shown}: {type(e).__name__}: {first}"
        raise click.ClickException(msg) from None
    return store
