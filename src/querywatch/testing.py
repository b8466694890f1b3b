"""Query budgets as assertions, for any test runner: the public name of
:mod:`querywatch.ci.testing`.

.. code-block:: python

    from querywatch.testing import assert_max_queries, assert_no_n_plus_one
"""

from __future__ import annotations

from .ci.testing import *  # noqa: F403
from .ci.testing import __all__ as __all__
