"""The incident protocol: incidents with an owner and a timeline, escalation on a
policy until someone acknowledges, notifications through an outbox, and the postmortem
drafted from the evidence.

.. code-block:: python

    from querywatch.incidents import Incidents, Outbox, load_policy

    incidents = Incidents(store, load_policy("escalation.toml"))
    incident, opened = incidents.trigger("slo:availability:page", "Checkout is failing")
    Outbox(incidents).run_once()      # deliver what is due
    incidents.tick()                  # escalate what nobody acknowledged
"""

from __future__ import annotations

from ..exceptions import IncidentError
from ..exceptions import PolicyError
from .manager import Incident
from .manager import Incidents
from .manager import TimelineEvent
from .outbox import Outbox
from .policy import Policy
from .policy import load_policy

__all__ = [
    "Incident",
    "IncidentError",
    "Incidents",
    "Outbox",
    "Policy",
    "PolicyError",
    "TimelineEvent",
    "load_policy",
]
