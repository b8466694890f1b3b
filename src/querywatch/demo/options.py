"""What a replay is asked for (:class:`DemoOptions`, the options of ``querywatch demo``)
and the figures it is tuned by."""

from __future__ import annotations

import dataclasses
import typing as t

from .load import LOOKUP_ROUTE
from .load import RETRIES

if t.TYPE_CHECKING:
    pass


FIXES = ("index", "cache", "none")
#: What the shop's guard does when the page fires (``QUERYWATCH_GUARD``'s containment):
#: limit the culprit endpoint, only count what it would shed, or no guard at all.
GUARD_MODES = ("enforce", "shadow", "off")
CULPRIT_ENDPOINT = LOOKUP_ROUTE
#: The shop's latency objective on a quiet machine: its everyday requests take 1-3 ms at
#: the demo's size. A slower or busier machine scales it (see :data:`QUIET_SPIN_MS`).
THRESHOLD_MS = 20
#: The CPU time of :func:`_spin` on a quiet machine (2-core x86_64, CPython 3.11). The
#: replay measures it and the share of a core it gets before it starts: on a machine k
#: times slower, the objectives' thresholds are k times longer (the statement timeout
#: follows a slower processor only), so the calm meets its objectives and the outage
#: breaks them whatever the machine (a laptop running a browser and an IDE is 2-4 times
#: slower).
QUIET_SPIN_MS = 1.3
#: Seconds the replay measures the machine for before it starts, in slices.
BUSY_PROBE_SECONDS = 1.0
BUSY_PROBE_SLICES = 10
#: The shop's traffic on a quiet machine, in requests a second (``--rate`` sets another).
#: The shop and querywatch share one Python process, which takes about a quarter of a
#: quiet core to serve it; on a machine k times slower the traffic is k times lighter
#: (not under :data:`MIN_RATE`), or its requests would queue behind each other and the
#: calm would page. The objectives' windows still hold enough requests to page on.
RATE = 40.0
MIN_RATE = 12.0
#: A page needs this many bad requests in its short window at :data:`RATE`, as many
#: fewer as the traffic is lighter, and never under :data:`MIN_BAD_FLOOR`: one statement
#: timeout among the calm's requests is a 99.9% objective's 14x burn, and beside CPU
#: burners the calm's first seconds hold a few slow requests (three paged once). At 12
#: requests a second a fixed ten let the pages fire only late in the outage (38 s in),
#: or not at all on PostgreSQL at an hour in 10 s.
MIN_BAD_EVENTS = 10
MIN_BAD_FLOOR = 5
#: The requests that are slow by design keep their own thresholds (the N+1 endpoint: 51
#: round trips, 50-150 ms on PostgreSQL; the write) or none (the admin overview's counts).
OVERRIDES = {
    "GET /api/orders/recent": {"threshold_ms": 250},
    "POST /api/orders": {"threshold_ms": 100},
    "GET /api/admin/overview": None,
}
#: The shop's database cancels a statement after this long, as production databases
#: are told to (PostgreSQL's statement_timeout): a request whose query runs longer fails
#: (500) instead of holding its connection. The calm shop's statements take a few ms;
#: the lookup's scan of 600,000 orders about 45 ms alone, more when scans overlap.
STATEMENT_TIMEOUT_MS = 100.0
#: Minutes (of the replay's clock) of calm before 14:00: the evidence compares the last
#: five minutes with five minutes an hour earlier, which must hold calm traffic.
CALM_MINUTES = 70
#: Escalation: the backend team's on-call has this long to acknowledge before devops
#: is told (replay minutes).
ESCALATION_MINUTES = 15
#: Real seconds of traffic before the replay's clock starts (not measured).
WARM_UP_SECONDS = 2.0
#: After the warm-up, the clock waits (at most this many real seconds, longer on a busy
#: machine) for a window of this many seconds in which the shop met its objectives: the
#: load's own start, the pool's first connections or a database server still busy with
#: other work make the first seconds slower than the shop, and the calm must be calm.
SETTLE_PATIENCE = 20.0
#: Times the replay starts over after a page in the calm before it stops and says so.
CALM_RESTARTS = 2
#: How much slower than the run that paged in the calm took the machine to be its
#: restart takes it to be (at least): the objectives longer, the traffic lighter.
CALM_RESTART_SLOWDOWN = 1.25
SETTLE_WINDOW = 2.0
#: Seconds any one statement of the responder's "Analyse now" may take: building the
#: candidate index on 600,000 orders takes about 2 s on a quiet machine and several times
#: that on a busy one; the responder waits for it (the app's own advisor keeps 2 s).
ADVISE_TIMEOUT = 120.0
#: Real seconds each stage may take before the demo gives up and says which.
PATIENCE = 120.0
#: The lookups' p95 after the fix is taken over at least this many of them (the traffic
#: goes on after the incident resolved until they are measured, at most
#: AFTER_PATIENCE real seconds after the recovery): over the fifty of a fast replay's
#: few seconds, the p95 was the third slowest, and one burst of the shop's slow
#: endpoints holding the interpreter decided it.
AFTER_LOOKUPS = 200
AFTER_PATIENCE = 60.0
SECRET_BYTES = 24
KEEP_SAMPLES = 200_000


@dataclasses.dataclass(frozen=True)
class DemoOptions:
    """What ``querywatch demo`` is asked for: each field is one of its options, and its
    default the option's."""

    #: Data size; 1.0 is 200,000 orders.
    scale: float = 3.0
    #: Time compression of the replay's clock: 120 plays an hour in 30 s.
    speed: float = 120.0
    #: Requests per second, held flat; None: :data:`RATE`, lighter on a busy machine.
    rate: float | None = None
    #: The shop's database; None: SQLite in the work folder's ``instance/``.
    database_url: str | None = None
    #: What the responder applies (one of :data:`FIXES`).
    fix: str = "index"
    #: The guard's containment (one of :data:`GUARD_MODES`).
    guard: str = "enforce"
    #: How many times the clients retry a failed GET (urllib3's ``Retry``; 0: never).
    retries: int = RETRIES
    #: Folder for the demo's files (database, store, postmortem.md).
    workdir: str = "querywatch-demo"
    #: Seconds any one statement of the responder's index check may take.
    advise_timeout: float = ADVISE_TIMEOUT
    #: No progress; only the summary.
    quiet: bool = False

    def __post_init__(self) -> None:
        if self.fix not in FIXES:
            msg = f"--fix must be one of {', '.join(FIXES)}, got {self.fix!r}."
            raise ValueError(msg)
        if self.guard not in GUARD_MODES:
            msg = f"--guard must be one of {', '.join(GUARD_MODES)}, got {self.guard!r}."
            raise ValueError(msg)
        if not 0 <= self.retries <= 10:
            msg = f"--retries must be from 0 to 10, got {self.retries}."
            raise ValueError(msg)
        if self.speed <= 0 or self.scale <= 0 or (self.rate is not None and self.rate <= 0):
            msg = "--scale, --speed and --rate must be greater than 0."
            raise ValueError(msg)
