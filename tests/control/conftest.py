"""Fixtures: a real etcd per test, edges following it, cdnctl serving on it."""
from __future__ import annotations

from typing import Iterator

import pytest

from tests.etcd import Etcd


@pytest.fixture
def etcd(tmp_path) -> Iterator[Etcd]:
    server = Etcd(tmp_path / "etcd-home")
    (tmp_path / "etcd-home").mkdir()
    server.start()
    try:
        yield server
    finally:
        server.stop()
