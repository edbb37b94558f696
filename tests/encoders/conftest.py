"""Encoder fixtures: a machine without the hub."""

from __future__ import annotations

import pytest


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    """The hub switched off, as HF_HUB_OFFLINE=1 does (huggingface_hub reads the variable once, at import), over an
    empty hub cache: only local copies load, and any attempt to reach the hub raises."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
