"""Prometheus output, checked with the real promtool."""

from __future__ import annotations

import shutil
import subprocess
import typing as t

from prometheus_client import generate_latest
from prometheus_client.registry import REGISTRY
from sqlalchemy import select

from conftest import _unavailable
from querywatch.demo import shop


def _promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        _unavailable("promtool", "not installed; Debian package 'prometheus'")
    return path


def test_cache_counters_are_valid_prometheus_metrics(app: t.Any) -> None:
    qw = app.extensions["querywatch"].owner

    @qw.cached(name="metrics.stock")
    def stock(pid: int) -> int:
        stmt = select(shop.Product.stock).where(shop.Product.id == pid)
        return int(shop.db.session.scalar(stmt))

    with app.app_context():
        for _ in range(3):
            stock(4)
    text = generate_latest(REGISTRY).decode()
    labels = f'app="{app.name}",function="metrics.stock"'
    assert f'querywatch_cache_lookups_total{{{labels},result="hit"}} 2.0' in text
    assert f'querywatch_cache_lookups_total{{{labels},result="miss"}} 1.0' in text
    assert f"querywatch_cache_invalidations_total{{{labels}}} 0.0" in text
    done = subprocess.run(
        [_promtool(), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
