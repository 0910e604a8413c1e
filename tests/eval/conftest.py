"""Fixtures of the evaluation tests: fixed backbone weights, so every model built from them shares a frozen trunk."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fgia.models import create_network


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> Path:
    """A state dict of timm's `test_efficientnet` (5 stages, 99K parameters), seeded: its "pretrained" weights."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "test_efficientnet.pth"
    torch.save(create_network("test_efficientnet").state_dict(), path)
    return path
