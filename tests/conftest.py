"""Shared test set-up: CPU only, fixed seeds, few threads, and the path to the shared parity data."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tiny test models run fastest on one thread, and do not fight other jobs for the cores.
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TRIFLOW3D_SHARED", REPO.parent / "shared"))
PARITY = SHARED / "parity" / "instantmesh"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def parity_dir() -> Path:
    if not (PARITY / "inputs.safetensors").exists():
        pytest.skip(f"InstantMesh parity data not found at {PARITY} (set TRIFLOW3D_SHARED)")
    return PARITY
