"""What a test does when something it needs is not installed: under CI (CI=true) that is a failure, because
CI installs everything; on a developer's machine it is a skip that says which setup step to run."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> NoReturn:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
