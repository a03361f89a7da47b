"""Shared fixtures. Real data and models come from ../shared, used in place, read-only."""

from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts) -> Path:
    """Path into ../shared; skips the calling test with a reason where it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: ../shared (real data and models) is not laid beside this clone")
    return path


@pytest.fixture
def shared():
    return shared_path
