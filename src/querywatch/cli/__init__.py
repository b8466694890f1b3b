"""The ``querywatch`` command, also available as ``flask querywatch``."""

from __future__ import annotations

import json
import os
import sys
import typing as t

import click

from ..exceptions import QueryWatchError
from ._common import _app_database_url
from ._common import _by_database
from ._common import _flask_app
from ._common import _open_store

__all__ = ["cli", "main"]


#: The entry point group of commands that other packages add to ``querywatch`` (the
#: demo's among them: the library does not import the demo).
COMMANDS_GROUP = "querywatch.commands"


class _Group(click.Group):
    """The ``querywatch`` group, with the commands of the ``querywatch.commands`` entry
    points, loaded only when one is listed or run."""

    def _plugins(self) -> dict[str, t.Any]:
        from importlib.metadata import entry_points

        return {ep.name: ep for ep in entry_points(group=COMMANDS_GROUP)}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *self._plugins()})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        ep = self._plugins().get(cmd_name)
        if ep is None:
            return None
        loaded = ep.load()
        return loaded if isinstance(loaded, click.Command) else None


@click.group(
    cls=_Group, help="querywatch: which query in which endpoint costs the database its time."
)
@click.version_option(package_name="querywatch", message="querywatch %(version)s")
def cli() -> None:
    pass


@cli.command()
@click.option("--store", "store_url", metavar="URL", help="Store database URL.")
@click.option(
    "--since",
    default="1h",
    show_default=True,
    help="Window start: a duration (30m, 1h, 2d) before now, or an ISO time.",
)
@click.option("--endpoint", default=None, help="Only this endpoint, e.g. 'GET /orders'.")
@click.option(
    "--limit", default=10, show_default=True, type=click.IntRange(1, 1000), help="Rows per section."
)
@click.option("--json", "as_json", is_flag=True, help="Print the stable JSON schema instead.")
def report(
    store_url: str | None, since: str, endpoint: str | None, limit: int, as_json: bool
) -> None:
    """Top query shapes and endpoints by total time, and the findings."""
    from .._report import build_report
    from .._report import parse_since
    from .._report import render_report

    try:
        start = parse_since(since)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--since'") from None
    store = _open_store(store_url)
    try:
        data = build_report(store, since=start, endpoint=endpoint, limit=limit)
    finally:
        store.dispose()
    if as_json:
        click.echo(json.dumps(data, indent=2, sort_keys=False))
    else:
        render_report(data)


@cli.command()
@click.option("--store", "store_url", metavar="URL", help="Store to read query shapes from.")
@click.option(
    "--database-url",
    metavar="URL",
    envvar="QUERYWATCH_DATABASE_URL",
    help="The application's database, where plans are asked for (default: the Flask app's"
    " SQLALCHEMY_DATABASE_URI).",
)
@click.option(
    "--sql",
    "sql_file",
    type=click.File("r"),
    default=None,
    help="Analyse the SELECTs in this file ('-' for stdin) instead of the store's shapes.",
)
@click.option(
    "--shape",
    "shapes",
    metavar="ID",
    multiple=True,
    help="Only this query shape (its id, as the report and the findings give it); repeatable.",
)
@click.option(
    "--since", default="24h", show_default=True, help="Store window: 30m, 1h, 2d or ISO time."
)
@click.option(
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Costliest read shapes to analyse (the output says how many it left out).",
)
@click.option(
    "--allow-ddl",
    is_flag=True,
    help="Build each candidate index for real (rolled back, or dropped on MariaDB) to verify"
    " and time it. For dev, CI or a copy of production.",
)
@click.option(
    "--scan-min-rows",
    default=None,
    type=click.IntRange(1),
    help="A full scan of a table this big is a finding (default: QUERYWATCH_SCAN_MIN_ROWS"
    " or 10000).",
)
@click.option(
    "--timeout",
    default=5.0,
    show_default=True,
    type=click.FloatRange(0.01),
    help="Seconds any one statement may take.",
)
@click.option(
    "--unused-window-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(0),
    help="Call an index unused only once the database's usage statistics cover this many"
    " days (PostgreSQL: since stats_reset or the server's start).",
)
@click.option(
    "--record/--no-record",
    default=True,
    show_default=True,
    help="Write the suggestions and plan findings back to the store (for the report).",
)
@click.option(
    "--alembic",
    "alembic_dir",
    metavar="DIR",
    is_flag=False,
    flag_value="migrations",
    default=None,
    help="Also write the verified indexes as an Alembic revision in the migrations folder"
    " DIR, chained to its head ('migrations', Flask-Migrate's, when DIR is left out).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def advise(
    store_url: str | None,
    database_url: str | None,
    sql_file: t.TextIO | None,
    shapes: tuple[str, ...],
    since: str,
    limit: int,
    allow_ddl: bool,
    scan_min_rows: int | None,
    timeout: float,
    unused_window_days: float,
    record: bool,
    alembic_dir: str | None,
    as_json: bool,
) -> None:
    """Index suggestions verified by the planner, plan findings and rewrite hints."""
    from .._advice_worker import queries_from_store
    from .._advice_worker import record_advice
    from .._report import parse_since
    from .._report import render_advice
    from .._sql import split_statements
    from ..advisor import Advisor
    from ..advisor import QueryInput

    database_url = database_url or _app_database_url()
    if not database_url:
        msg = (
            "No database to ask for plans. Pass '--database-url URL' (the application's"
            " database), set QUERYWATCH_DATABASE_URL, or run 'flask querywatch advise'"
            " inside your app."
        )
        raise click.UsageError(msg)
    if scan_min_rows is None:
        scan_min_rows = int(os.environ.get("QUERYWATCH_SCAN_MIN_ROWS") or 10_000)
    store = None
    left_out = 0
    if sql_file is not None:
        statements = split_statements(sql_file.read())
        if not statements:
            raise click.UsageError("The --sql input holds no statement.")
        queries = [QueryInput(sql, label=f"statement {i}") for i, sql in enumerate(statements, 1)]
    else:
        try:
            start = parse_since(since)
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--since'") from None
        store = _open_store(store_url)
        if shapes:
            queries = queries_from_store(
                store, since=start, limit=len(shapes), fingerprints=list(shapes)
            )
        else:
            every = queries_from_store(store, since=start, limit=10_000)
            queries, left_out = every[:limit], len(every) - limit
        if not queries:
            store.dispose()
            which = f"No read query shape {', '.join(shapes)}" if shapes else "No read query shapes"
            click.echo(
                f"{which} with a runnable sample in the store for this window; widen"
                " '--since', or pass '--sql FILE'."
            )
            return
    from .._console import progress

    groups = _by_database(queries, database_url) if sql_file is None else {database_url: queries}
    results: list[tuple[str, t.Any]] = []
    try:
        with progress(len(queries), "Analysing query shapes") as step:
            for url, group in groups.items():
                with Advisor(
                    url,
                    allow_ddl=True if allow_ddl else None,
                    scan_min_rows=scan_min_rows,
                    timeout=timeout,
                    unused_window_days=unused_window_days,
                ) as adv:
                    result = adv.advise(group, on_query=lambda qa: step(qa.query.name))
                if left_out > 0 and not results:
                    result.notes.insert(
                        0,
                        f"{left_out} cheaper read shape{'s' if left_out != 1 else ''} of the"
                        f" window left out (--limit {limit}); pass --limit"
                        f" {limit + left_out} to analyse every one (an index that serves"
                        " several shapes shows once all are in).",
                    )
                if store is not None and record:
                    record_advice(store, result)
                results.append((url, result))
    except QueryWatchError as e:
        raise click.ClickException(str(e)) from None
    finally:
        if store is not None:
            store.dispose()
    if alembic_dir is not None:
        _write_alembic(alembic_dir, results)
    if len(results) == 1:
        data = results[0][1].to_dict()
        if as_json:
            click.echo(json.dumps(data, indent=2, default=str))
        else:
            render_advice(data)
        return
    # An app with binds: one answer a database, each named (without its password).
    from sqlalchemy.engine import make_url

    named = [(make_url(url).render_as_string(hide_password=True), r) for url, r in results]
    if as_json:
        out = [{"database": name, **r.to_dict()} for name, r in named]
        click.echo(json.dumps({"databases": out}, indent=2, default=str))
        return
    for name, r in named:
        click.echo(f"== {name}")
        render_advice(r.to_dict())


def _write_alembic(directory: str, results: list[tuple[str, t.Any]]) -> None:
    """The advice's verified indexes as an Alembic revision (said on standard error, so
    ``--json`` stays JSON)."""
    from ._alembic import write_revision

    if len(results) != 1:
        msg = (
            "--alembic writes one revision for one database, and these shapes are on"
            f" {len(results)}; pass --database-url to advise on the one whose migrations"
            f" {directory} holds."
        )
        raise click.UsageError(msg)
    advice = results[0][1]
    if not advice.suggestions:
        click.echo("querywatch: no verified index, so no Alembic revision written.", err=True)
        return
    try:
        path, head = write_revision(directory, advice)
    except QueryWatchError as e:
        raise click.ClickException(str(e)) from None
    n = len(advice.suggestions)
    after = f"after {head}" if head else "the first revision"
    click.echo(
        f"querywatch: wrote {path} ({n} index{'es' if n != 1 else ''}, {after}); review it,"
        " then 'alembic upgrade head' (or 'flask db upgrade').",
        err=True,
    )


@cli.command()
@click.option(
    "--app",
    "app_spec",
    required=True,
    metavar="MODULE:NAME",
    help="The Flask app or its factory, as Flask's --app takes it (myapp:create_app).",
)
@click.option(
    "--requests",
    "requests_file",
    required=True,
    type=click.Path(dir_okay=False),
    help="YAML file of the requests to make (method, path, json, status, budget).",
)
@click.option(
    "--seed",
    "seed_spec",
    metavar="MODULE:FUNCTION",
    help="Called with the app, in an app context, before the requests (fills the database).",
)
@click.option(
    "--baseline",
    metavar="FILE",
    help="Compare with FILE and fail on regressions (created if missing).",
)
@click.option("--update-baseline", is_flag=True, help="Rewrite the baseline with this run.")
@click.option(
    "--timing",
    type=click.Choice(["report", "fail"]),
    default=None,
    help="A database time over the baseline's tolerance is reported (default) or fails.",
)
@click.option("--junit-xml", metavar="FILE", help="Write JUnit XML to FILE.")
@click.option(
    "--markdown",
    "markdown_file",
    metavar="FILE",
    help="Write a Markdown summary to FILE (also appended to $GITHUB_STEP_SUMMARY when set).",
)
@click.option(
    "--annotations",
    type=click.Choice(["auto", "github", "none"]),
    default="auto",
    show_default=True,
    help="GitHub annotations at the call sites (auto: on GitHub Actions).",
)
@click.option(
    "--config",
    "config_file",
    default="pyproject.toml",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Where [tool.querywatch] (the default budget) is read from.",
)
def check(
    app_spec: str,
    requests_file: str,
    seed_spec: str | None,
    baseline: str | None,
    update_baseline: bool,
    timing: str | None,
    junit_xml: str | None,
    markdown_file: str | None,
    annotations: str,
    config_file: str,
) -> None:
    """Make each request of a requests file and fail on N+1s, full scans and budgets.

    Exit status: 0 when every request kept its budget and baseline, 1 when one did not,
    2 on bad input.
    """
    from .._console import make_console
    from ..ci import output as gate_output
    from ..ci.baseline import Baseline
    from ..ci.check import dispose_engines
    from ..ci.check import load_app
    from ..ci.check import load_callable
    from ..ci.check import load_requests
    from ..ci.check import run_checks
    from ..ci.check import seed_app
    from ..ci.gate import PlanBook
    from ..ci.gate import load_project_config
    from ..exceptions import BaselineError
    from ..exceptions import BudgetError
    from ..exceptions import RequestsFileError

    try:
        project = load_project_config(config_file)
        defaults, requests = load_requests(requests_file)
        base = Baseline.load(baseline) if baseline else None
    except (BudgetError, RequestsFileError, BaselineError) as e:
        raise click.UsageError(str(e)) from None
    if update_baseline and base is None:
        raise click.UsageError("--update-baseline needs --baseline FILE.")
    from .._console import progress

    app = load_app(app_spec)
    plans = PlanBook()
    try:
        if seed_spec:
            seed_app(app, load_callable(seed_spec, "--seed"))
        with progress(len(requests), "Checking requests") as step:
            results = run_checks(
                app,
                requests,
                project.budget.merged(defaults),
                plans=plans,
                project=project,
                baseline=base,
                update_baseline=update_baseline,
                timing_fails=(timing or project.timing) == "fail",
                requests_file=requests_file,
                on_request=step,
            )
    finally:
        plans.close()
        dispose_engines(app)
    console = make_console(highlight=False)
    extra = []
    if base is not None and any(r.baseline == "recorded" for r in results):
        base.save()
        verb = "updated" if base.existed else "created"
        extra.append(f"querywatch: baseline {verb}: {len(results)} requests in {base.path}.")
    new = [r for r in results if r.baseline == "new"]
    if new:
        extra.append(
            f"querywatch: {len(new)} requests are not in the baseline yet; record them with"
            " --update-baseline."
        )
    for url, note in plans.notes.items():
        extra.append(f"querywatch: no plans from {url}: {note}")
    gate_output.render_terminal(results, console, extra=extra, all_cases=True)
    if annotations == "github" or (
        annotations == "auto" and os.environ.get("GITHUB_ACTIONS") == "true"
    ):
        for line in gate_output.github_annotations(results):
            click.echo(line)
    if junit_xml:
        with open(junit_xml, "w", encoding="utf-8") as f:
            f.write(gate_output.junit_xml(results, suite="querywatch check"))
    if markdown_file or os.environ.get("GITHUB_STEP_SUMMARY"):
        text = gate_output.markdown(results)
        if markdown_file:
            with open(markdown_file, "w", encoding="utf-8") as f:
                f.write(text)
        gate_output.write_step_summary(text)
    sys.exit(1 if any(r.failed for r in results) else 0)


@cli.group()
def export() -> None:
    """Write configuration for the fleet's tools (Prometheus rules, Grafana dashboard)."""


_OBJECTIVE_OPTION = click.option(
    "--objective",
    "objectives",
    multiple=True,
    metavar="SPEC",
    help="availability:<percent> or latency:<percent>:<threshold> (a bucket boundary such"
    " as 250ms). Default: the app's QUERYWATCH_OBJECTIVES with --app (or under 'flask"
    " querywatch'), else availability:99.9 and latency:99:1000ms.",
)
_APP_OPTION = click.option(
    "--app", "app_spec", metavar="MODULE:NAME", help="Read the objectives from this app."
)
_OUTPUT_OPTION = click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, writable=True),
    help="Write the file here instead of printing it.",
)


def _export_objectives(specs: tuple[str, ...], app_spec: str | None) -> list[t.Any]:
    from ..alerts import DEFAULT_OBJECTIVES
    from ..alerts import parse_objective
    from ..alerts import parse_objectives

    if specs:
        try:
            return [parse_objective(s) for s in specs]
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint="'--objective'") from None
    if app_spec:
        from ..ci.check import load_app

        app = load_app(app_spec)
    else:
        app = _flask_app()
    state = app.extensions.get("querywatch") if app is not None else None
    if state is not None:
        return list(state.settings.objectives)
    if app_spec:
        msg = f"--app {app_spec!r} does not run QueryWatch: no objectives to read."
        raise click.UsageError(msg)
    return list(parse_objectives(list(DEFAULT_OBJECTIVES)))


def _write(text: str, output: str | None) -> None:
    if output:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
    else:
        click.echo(text, nl=False)


@export.command("prometheus-rules")
@_OBJECTIVE_OPTION
@_APP_OPTION
@_OUTPUT_OPTION
def prometheus_rules_command(
    objectives: tuple[str, ...], app_spec: str | None, output: str | None
) -> None:
    """Recording and alerting rules for the objectives: the SRE workbook's multiwindow
    burn-rate alerts over querywatch's metrics (check them with promtool check rules)."""
    import yaml

    from ..alerts import prometheus_rules

    try:
        rules = prometheus_rules(_export_objectives(objectives, app_spec))
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="'--objective'") from None
    text = "# Made by querywatch export prometheus-rules.\n" + yaml.safe_dump(
        rules, sort_keys=False, width=100
    )
    _write(text, output)


@export.command("grafana-dashboard")
@_OBJECTIVE_OPTION
@_APP_OPTION
@_OUTPUT_OPTION
@click.option("--title", default="querywatch", show_default=True, help="The dashboard's title.")
@click.option("--uid", default="querywatch", show_default=True, help="The dashboard's uid.")
def grafana_dashboard_command(
    objectives: tuple[str, ...], app_spec: str | None, output: str | None, title: str, uid: str
) -> None:
    """A Grafana dashboard (JSON, to import) over querywatch's metrics: traffic against an
    hour and a day before, errors, latency, database share, the query shapes that take
    the time, the pool, and the objectives' burn rates."""
    import json

    from ..alerts.grafana import dashboard

    model = dashboard(_export_objectives(objectives, app_spec), title=title, uid=uid)
    _write(json.dumps(model, indent=2) + "\n", output)


def _register_incident_commands() -> None:
    from .guard import guard_group
    from .incidents import register

    register(cli)
    cli.add_command(guard_group)


_register_incident_commands()


def main() -> None:
    """Entry point of the ``querywatch`` script."""
    cli(prog_name="querywatch")
