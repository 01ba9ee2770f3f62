"""Fixtures shared by the end-to-end tests: where the running Ember is."""

import os

import pytest


@pytest.fixture(scope="session")
def ember_url() -> str:
    url = os.environ.get("EMBER_URL")
    if not url:
        pytest.fail("EMBER_URL must point at a running Ember, e.g. http://127.0.0.1:8787")
    return url.rstrip("/")
