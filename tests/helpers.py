"""Small builders shared by the engine tests; the generic ones live in ``engine.testing``
(shipped with the engine for plugin authors) and are re-exported here."""

from __future__ import annotations

from engine.testing import (  # noqa: F401  (re-exported for the tests)
    NO_ANSWER,
    DialAll,
    Script,
    _agent_model,
    _customer_model,
    campaign,
    human,
    machine,
    run_script,
    unanswered,
)
