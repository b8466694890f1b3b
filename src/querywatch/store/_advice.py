"""The advisor's results: claims on shapes, index advice and plan findings."""

from __future__ import annotations

import json
import typing as t

from sqlalchemy import select
from sqlalchemy import update

from . import schema
from ._base import Base
from ._rows import PlanFindingRow
from ._rows import StoredAdvice
from ._rows import _site_columns

if t.TYPE_CHECKING:
    pass


class AdviceTables(Base):
    """The advisor's claims and results."""

    # --- the advisor's results --------------------------------------------------------

    def claim_for_advice(self, fingerprint: str, now: float, ttl: float) -> bool:
        """Claim a shape for the background advisor: True for exactly one process per
        ``ttl`` seconds, however many workers or hosts ask at once."""
        self.migrate()
        tbl = schema.shapes
        with self.engine.begin() as conn:
            n = conn.execute(
                update(tbl)
                .where(
                    tbl.c.fingerprint == fingerprint,
                    (tbl.c.advised_at.is_(None)) | (tbl.c.advised_at <= now - ttl),
                )
                .values(advised_at=now)
            ).rowcount
        return bool(n == 1)

    def record_advice(self, rows: t.Iterable[StoredAdvice]) -> int:
        """Upsert verified suggestions, one per (fingerprint, index name)."""
        self.migrate()
        tbl = schema.advice
        n = 0
        with self.engine.begin() as conn:
            for a in rows:
                values = {
                    "dialect": a.dialect[:16],
                    "table_name": a.table[:255],
                    "keys": json.dumps(list(a.keys)),
                    "ddl": a.ddl,
                    "alembic": a.alembic,
                    "reason": a.reason,
                    "verified_by": a.verified_by[:32],
                    "cost_before": a.cost_before,
                    "cost_after": a.cost_after,
                    "measured_before_ms": a.measured_before_ms,
                    "measured_after_ms": a.measured_after_ms,
                    "last_seen": a.last_seen,
                }
                old = conn.execute(
                    self._lock_rows(
                        select(tbl.c.id).where(
                            tbl.c.fingerprint == a.fingerprint,
                            tbl.c.index_name == a.index_name[:255],
                        )
                    )
                ).first()
                if old is None:
                    conn.execute(
                        tbl.insert().values(
                            fingerprint=a.fingerprint,
                            index_name=a.index_name[:255],
                            first_seen=a.first_seen,
                            **values,
                        )
                    )
                else:
                    conn.execute(tbl.update().where(tbl.c.id == old.id).values(**values))
                n += 1
        return n

    def advice(self, fingerprints: t.Iterable[str] | None = None) -> list[StoredAdvice]:
        """Stored suggestions, newest first (for ``fingerprints`` only, if given)."""
        self.migrate()
        tbl = schema.advice
        stmt = select(tbl).order_by(tbl.c.last_seen.desc(), tbl.c.id)
        if fingerprints is not None:
            stmt = stmt.where(tbl.c.fingerprint.in_(list(fingerprints)))
        with self.engine.connect() as conn:
            return [
                StoredAdvice(
                    row.fingerprint,
                    row.dialect,
                    row.table_name,
                    row.index_name,
                    tuple(json.loads(row._mapping["keys"])),  # Row.keys() on 1.4
                    row.ddl,
                    row.alembic,
                    row.reason,
                    row.verified_by,
                    row.cost_before,
                    row.cost_after,
                    row.measured_before_ms,
                    row.measured_after_ms,
                    row.first_seen,
                    row.last_seen,
                )
                for row in conn.execute(stmt)
            ]

    def record_plan_findings(self, rows: t.Iterable[PlanFindingRow], when: float) -> int:
        """Write plan findings: each run of the advisor sets the figures it saw (a plan
        does not add up the way request findings do)."""
        self.migrate()
        tbl = schema.findings
        n = 0
        with self.engine.begin() as conn:
            for f in rows:
                ep = f.endpoint[:255]
                old = conn.execute(
                    self._lock_rows(
                        select(tbl).where(
                            tbl.c.kind == f.kind,
                            tbl.c.endpoint == ep,
                            tbl.c.fingerprint == f.fingerprint,
                        )
                    )
                ).first()
                if old is None:
                    conn.execute(
                        tbl.insert().values(
                            kind=f.kind,
                            endpoint=ep,
                            fingerprint=f.fingerprint,
                            first_seen=when,
                            last_seen=when,
                            occurrences=1,
                            queries=f.queries,
                            total_s=f.total,
                            relationship=None,
                            fix=f.fix,
                            **_site_columns(f.site),
                        )
                    )
                else:
                    conn.execute(
                        tbl.update()
                        .where(tbl.c.id == old.id)
                        .values(
                            last_seen=max(old.last_seen, when),
                            occurrences=old.occurrences + 1,
                            queries=f.queries,
                            total_s=f.total,
                            fix=f.fix,
                        )
                    )
                n += 1
        return n
