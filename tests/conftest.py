"""Shared fixtures: every test starts with an empty kernel (no yuno, no services)."""

from __future__ import annotations

import pytest

from gobj.runtime import gobj_end, kernel


@pytest.fixture(autouse=True)
def _fresh_kernel():
    gobj_end()
    kernel.shutting_down = False
    yield
    gobj_end()
    kernel.shutting_down = False


pytest_plugins = ["tests.acme"]
