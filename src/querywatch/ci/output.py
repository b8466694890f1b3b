"""How the CI gate reports: a terminal summary (rich), JUnit XML, a Markdown summary
(``$GITHUB_STEP_SUMMARY``) and GitHub annotations at the call sites. Shared by the
pytest plugin and ``querywatch check``."""

from __future__ import annotations

import dataclasses
import os
import typing as t
from xml.etree import ElementTree as ET

from .._text import relpath

if t.TYPE_CHECKING:
    from rich.console import Console

    from .gate import Violation

__all__ = [
    "CaseResult",
    "github_annotations",
    "junit_xml",
    "markdown",
    "render_terminal",
]


@dataclasses.dataclass
class CaseResult:
    """What the gate found for one test or one scripted request."""

    name: str
    #: The test's file and line (or the request file's), for annotations without a
    #: call site.
    file: str | None = None
    line: int | None = None
    queries: int = 0
    db_ms: float = 0.0
    violations: list[Violation] = dataclasses.field(default_factory=list)
    #: Timing ratios and other remarks that do not fail.
    notes: list[str] = dataclasses.field(default_factory=list)
    #: ``compared``, ``new`` (not in the baseline), ``recorded`` or ``""`` (no baseline).
    baseline: str = ""
    #: Something other than the gate failed (the test itself, a wrong status).
    error: str | None = None

    @property
    def failed(self) -> bool:
        return bool(self.violations) or self.error is not None


def plural(n: int, one: str, many: str) -> str:
    return f"{n} {one if n == 1 else many}"


def _counts(results: list[CaseResult]) -> tuple[int, int, int]:
    failed = sum(1 for r in results if r.failed)
    violations = sum(len(r.violations) for r in results)
    return len(results), failed, violations


def headline(results: list[CaseResult]) -> str:
    n, failed, violations = _counts(results)
    queries = sum(r.queries for r in results)
    if not failed:
        return (
            f"querywatch: {n} checked, {plural(queries, 'query', 'queries')}, no budget"
            " broken, no regression."
        )
    return (
        f"querywatch: {failed} of {n} failed the query gate"
        f" ({plural(violations, 'problem', 'problems')},"
        f" {plural(queries, 'query', 'queries')} in all)."
    )


def render_terminal(
    results: list[CaseResult],
    console: Console,
    *,
    extra: t.Iterable[str] = (),
    all_cases: bool = False,
) -> None:
    """The summary: one block per failing case (every case with ``all_cases``) with
    each problem and its fix."""
    from rich.markup import escape

    console.print(f"[bold]{escape(headline(results))}[/bold]")
    for r in results:
        if not r.failed and not r.notes and not all_cases:
            continue
        if r.failed:
            mark = "[red]FAILED[/red]"
        elif r.notes:
            mark = "[yellow]note[/yellow]"
        else:
            mark = "[green]ok[/green]"
        console.print(
            f"{mark} {escape(r.name)}  [dim]{plural(r.queries, 'query', 'queries')},"
            f" {r.db_ms:.1f} ms[/dim]",
            soft_wrap=True,
        )
        if r.error:
            console.print(f"  {escape(r.error)}", soft_wrap=True)
        for v in r.violations:
            console.print(f"  [bold]{escape(v.message)}[/bold]", soft_wrap=True)
            for d in v.details:
                console.print(f"      {escape(d)}", soft_wrap=True)
        for note in r.notes:
            console.print(f"  [yellow]{escape(note)}[/yellow]", soft_wrap=True)
    for line in extra:
        console.print(escape(line), soft_wrap=True)


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def markdown(results: list[CaseResult], *, title: str = "querywatch query gate") -> str:
    """A Markdown summary for a pull request or a CI job page."""
    n, failed, violations = _counts(results)
    out = [f"## {title}", ""]
    out.append(headline(results).removeprefix("querywatch: ").capitalize())
    out.append("")
    if failed:
        out.append("| Test | Problem | Where | Fix |")
        out.append("|---|---|---|---|")
        for r in results:
            if r.error:
                out.append(f"| `{_md_cell(r.name)}` | {_md_cell(r.error)} | | |")
            for v in r.violations:
                where = next((d[3:] for d in v.details if d.startswith("at ")), "")
                fix = next((d[5:] for d in v.details if d.startswith("fix: ")), "")
                out.append(
                    f"| `{_md_cell(r.name)}` | {_md_cell(v.message)} | {_md_cell(where)}"
                    f" | {_md_cell(fix)} |"
                )
        out.append("")
    notes = [(r.name, note) for r in results for note in r.notes]
    if notes:
        out.append("Timing (reported, not failing):")
        out.append("")
        out.extend(f"- `{_md_cell(name)}`: {_md_cell(note)}" for name, note in notes)
        out.append("")
    return "\n".join(out)


def write_step_summary(text: str) -> str | None:
    """Append ``text`` to ``$GITHUB_STEP_SUMMARY`` when set; returns the path."""
    path = os.environ.get("GITHUB_STEP_SUMMARY")
    if not path:
        return None
    with open(path, "a", encoding="utf-8") as f:
        f.write(text + "\n")
    return path


def _escape_data(text: str) -> str:
    # GitHub's workflow commands: https://github.com/actions/toolkit/blob/main/packages/core/src/command.ts
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


def github_annotations(results: list[CaseResult], root: str | None = None) -> list[str]:
    """``::error file=...,line=...::`` lines, one per problem, at the application's
    call site (else the test)."""
    out = []
    for r in results:
        for v in r.violations:
            if v.site is not None:
                file, line = relpath(v.site.filename, root), v.site.lineno
            else:
                file, line = (relpath(r.file, root) if r.file else ""), (r.line or 1)
            props = f"file={_escape_property(file)},line={line}" if file else ""
            title = _escape_property(f"querywatch {v.rule} in {r.name}")
            props = f"{props},title={title}" if props else f"title={title}"
            out.append(f"::error {props}::{_escape_data(v.text())}")
    return out


def junit_xml(results: list[CaseResult], *, suite: str = "querywatch") -> str:
    """JUnit XML: one test case per result, a failure per failing one."""
    failed = sum(1 for r in results if r.failed)
    root = ET.Element("testsuites")
    ts = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(results)),
        failures=str(failed),
        errors="0",
        skipped="0",
        time=f"{sum(r.db_ms for r in results) / 1000:.3f}",
    )
    for r in results:
        attrs = {"classname": suite, "name": r.name, "time": f"{r.db_ms / 1000:.3f}"}
        if r.file:
            attrs["file"] = r.file
        if r.line:
            attrs["line"] = str(r.line)
        tc = ET.SubElement(ts, "testcase", attrs)
        props = ET.SubElement(tc, "properties")
        ET.SubElement(props, "property", name="querywatch_queries", value=str(r.queries))
        ET.SubElement(props, "property", name="querywatch_db_ms", value=f"{r.db_ms:.3f}")
        if r.failed:
            first = r.error or r.violations[0].message
            failure = ET.SubElement(tc, "failure", message=first, type="querywatch")
            failure.text = "\n\n".join(
                ([r.error] if r.error else []) + [v.text() for v in r.violations]
            )
        if r.notes:
            out = ET.SubElement(tc, "system-out")
            out.text = "\n".join(r.notes)
    ET.indent(root)
    return '<?xml version="1.0" encoding="utf-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
