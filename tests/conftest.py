"""Shared test set-up: CPU only, fixed seeds, few threads, the parity data path, the tiny reconstructor
and pipeline fixtures, and `--reverse` (run the tests in reverse order to show order dependence)."""

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


# A few-thousand-parameter stand-in for lrm-small (overrides of its preset): planes 3 x 4 x 8 x 8 from
# 16-pixel views. Tests that train, encode or measure a reconstructor use it through these fixtures.
_TINY_RECON = dict(
    encoder_feat_dim=32, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
    patch_size=8, image_size=16, transformer_dim=32, transformer_layers=1, transformer_heads=2,
    triplane_low_res=4, triplane_high_res=8, triplane_dim=4, rendering_samples_per_ray=8,
    colour_planes=False,  # (lrm-small's column-colour planes: tests/test_encoders.py, test_recon.py grow)
)  # fmt: skip


@pytest.fixture(scope="session")
def tiny_recon() -> dict:
    """The tiny reconstructor's overrides of the ``lrm-small`` preset (``--model-config`` JSON)."""
    return dict(_TINY_RECON)


@pytest.fixture(scope="session")
def tiny_recon_config(tiny_recon):
    """The tiny reconstructor's full ``ReconstructorConfig``."""
    from triflow3d.encoders import resolve_config

    return resolve_config("lrm-small", tiny_recon)


@pytest.fixture(scope="session")
def tiny_pipeline():
    """A factory of tiny random pipelines (``pipeline.random_pipeline``, encoder id ``tiny-recon``, 3 Euler
    steps, CFG 3); keyword arguments replace any component."""
    from triflow3d.pipeline import SamplerSettings, random_pipeline

    def make(**parts):
        settings = SamplerSettings(steps=3, cfg=3.0)
        return random_pipeline(encoder_id="tiny-recon", **({"settings": settings} | parts))

    return make


def pytest_addoption(parser):
    parser.addoption(
        "--reverse", action="store_true", help="run the tests in reverse order (shows order dependence)"
    )


def pytest_collection_modifyitems(config, items):
    if config.getoption("--reverse"):
        items.reverse()
