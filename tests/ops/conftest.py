"""Shared fixture for the op tests."""
import pytest

from linglo.ops import key_only


@pytest.fixture(params=["window", "dense"])
def both_paths(request, monkeypatch):
    """Run a test on both eager paths of the op: the window convolutions, and the dense N×N matrix that maps up to
    DENSE_MAX_TOKENS take — raised here to 32×32 so that every test map but the huge ones takes it."""
    monkeypatch.setattr(key_only, "DENSE_MAX_TOKENS", 0 if request.param == "window" else 32 * 32)
    return request.param
