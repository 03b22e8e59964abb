"""Fixtures of the gslb tests that more than one module uses."""
from __future__ import annotations

import pytest

from tests.gslb.test_health_live import SITES, Edges


@pytest.fixture
def edges():
    """A stand-in edge process per site (see `Edges`), stopped after the test."""
    e = Edges()
    for site in SITES:
        e.start(site)
    yield e
    e.stop_all()
