"""Perceptual loss backends: random-vgg behaviour, strict LPIPS weight loading, path resolution."""

from __future__ import annotations

import functools
import logging

import pytest
import torch
from safetensors.torch import save_file

from triflow3d import perceptual
from triflow3d.errors import CheckpointError, ConfigError
from triflow3d.perceptual import (
    RANDOM_VGG_DESCRIPTION,
    TAP_CHANNELS,
    VGG16_CFG,
    PerceptualLoss,
    make_perceptual_loss,
)

S = 32  # image size: relu5_3 is then 2 x 2


@pytest.fixture(scope="module")
def random_vgg() -> PerceptualLoss:
    return PerceptualLoss("random-vgg")


def images(seed: int, b: int = 2) -> torch.Tensor:
    return torch.rand(b, 3, S, S, generator=torch.Generator().manual_seed(seed))


@functools.cache
def torchvision_vgg16_state_dict() -> dict[str, torch.Tensor]:
    """Random tensors under torchvision vgg16's exact key names and shapes.

    The classifier keys are present (the loader must skip them) but shrunk: (4096, 25088) is 400 MB.
    """
    g = torch.Generator().manual_seed(1)
    sd, idx, c_in = {}, 0, 3
    for item in VGG16_CFG:
        if item == "M":
            idx += 1
            continue
        sd[f"features.{idx}.weight"] = torch.randn(item, c_in, 3, 3, generator=g) * (2 / (9 * item)) ** 0.5
        sd[f"features.{idx}.bias"] = torch.randn(item, generator=g) * 0.01
        idx, c_in = idx + 2, item
    for i in (0, 3, 6):
        sd[f"classifier.{i}.weight"], sd[f"classifier.{i}.bias"] = torch.zeros(8, 8), torch.zeros(8)
    return sd


def lpips_heads() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    return {
        f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1
        for i, c in enumerate(TAP_CHANNELS)
    }


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("weights")
    sd = torchvision_vgg16_state_dict()
    assert [k for k in sd if k.startswith("features.") and k.endswith(".weight")] == [
        f"features.{i}.weight" for i in (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
    ]
    torch.save(sd, d / "small.pth")
    torch.save(lpips_heads(), d / "vgg.pth")
    save_file({k: v for k, v in sd.items() if k.startswith("features.")}, str(d / "vgg16.safetensors"))
    return d


@pytest.fixture(scope="module")
def lpips_loss(weight_files) -> PerceptualLoss:
    return make_perceptual_loss(
        "lpips-vgg", vgg_path=weight_files / "small.pth", lpips_path=weight_files / "vgg.pth"
    )


# --- random-vgg --------------------------------------------------------------------------------


def test_random_vgg_is_deterministic_and_labelled(random_vgg, caplog):
    a, b = images(0), images(1)
    other = PerceptualLoss("random-vgg")
    assert torch.equal(random_vgg(a, b), other(a, b))
    assert random_vgg.description.startswith(RANDOM_VGG_DESCRIPTION)
    assert "LPIPS" not in random_vgg.description.replace("NOT LPIPS", "")
    assert PerceptualLoss("random-vgg", seed=1)(a, b) != random_vgg(a, b)


def test_random_vgg_warns_once(caplog):
    perceptual._warn_random_backend.cache_clear()
    with caplog.at_level(logging.WARNING, logger="triflow3d.perceptual"):
        PerceptualLoss("random-vgg")
        PerceptualLoss("random-vgg")
    warnings = [r for r in caplog.records if "NOT LPIPS" in r.getMessage()]
    assert len(warnings) == 1


def test_random_vgg_zero_for_identical_positive_for_different(random_vgg):
    a, b = images(0), images(1)
    assert random_vgg(a, a).item() == 0.0
    d = random_vgg(a, b).item()
    assert d > 0.0
    assert random_vgg(a, (a + 0.02 * (b - a))).item() < d  # closer image -> smaller distance


def test_frozen_and_gradients_flow_to_the_input(random_vgg):
    assert all(not p.requires_grad for p in random_vgg.parameters())
    random_vgg.train()
    assert not random_vgg.training
    pred = images(0).requires_grad_(True)
    random_vgg(pred, images(1)).backward()
    assert pred.grad is not None and pred.grad.abs().sum() > 0
    assert all(p.grad is None for p in random_vgg.parameters())


def test_none_backend_and_l1_term():
    a, b = images(0), images(1)
    assert PerceptualLoss("none")(a, b).item() == 0.0
    l1 = PerceptualLoss("none", l1_weight=2.0)(a, b)
    assert l1.item() == pytest.approx(2.0 * (a - b).abs().mean().item(), rel=1e-6)
    assert make_perceptual_loss("none").description == "no perceptual term"
    with pytest.raises(ConfigError, match="backend"):
        make_perceptual_loss("lpips-alex")


# --- lpips-vgg ---------------------------------------------------------------------------------


def test_lpips_vgg_loads_torchvision_layout_strictly(lpips_loss, weight_files):
    loss = lpips_loss
    feats = torchvision_vgg16_state_dict()
    assert torch.equal(loss.distance.net.features[28].weight, feats["features.28.weight"])
    assert torch.equal(loss.distance.lin3.model[1].weight, lpips_heads()["lin3.model.1.weight"])
    same = make_perceptual_loss(
        "lpips-vgg", vgg_path=weight_files / "vgg16.safetensors", lpips_path=weight_files / "vgg.pth"
    )
    a, b = images(0), images(1)
    assert torch.equal(loss(a, b), same(a, b)) and loss(a, b) > 0 and loss(a, a) == 0
    assert "LPIPS" in loss.description


def test_lpips_vgg_matches_a_hand_computed_lpips(lpips_loss):
    """The LPIPS formula written out: scaling layer, unit-normalise, squared diff, heads, mean, sum."""
    loss = lpips_loss
    a, b = images(3, 1), images(4, 1)
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
    fa = loss.distance.net(((2 * a - 1) - shift) / scale)
    fb = loss.distance.net(((2 * b - 1) - shift) / scale)
    heads = lpips_heads()
    ref = 0.0
    for i, (x, y) in enumerate(zip(fa, fb)):
        x = x / (x.norm(dim=1, keepdim=True) + 1e-10)
        y = y / (y.norm(dim=1, keepdim=True) + 1e-10)
        ref += ((x - y) ** 2 * heads[f"lin{i}.model.1.weight"]).sum(1).mean()
    assert loss(a, b).item() == pytest.approx(ref.item(), rel=1e-5)


def test_lpips_vgg_missing_files_raise_config_error(weight_files, tmp_path, monkeypatch):
    monkeypatch.delenv(perceptual.VGG16_ENV, raising=False)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(ConfigError, match="vgg16-397923af.pth"):
        PerceptualLoss("lpips-vgg", lpips_path=weight_files / "vgg.pth")
    with pytest.raises(ConfigError, match="nope.pth"):
        PerceptualLoss("lpips-vgg", vgg_path=tmp_path / "nope.pth", lpips_path=weight_files / "vgg.pth")
    monkeypatch.setenv(perceptual.LPIPS_VGG_ENV, str(tmp_path / "heads.pth"))
    with pytest.raises(ConfigError, match="heads.pth"):
        PerceptualLoss("lpips-vgg", vgg_path=weight_files / "small.pth")


def test_lpips_vgg_paths_from_env_and_torch_hub(weight_files, tmp_path, monkeypatch):
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / "vgg16-397923af.pth").write_bytes((weight_files / "small.pth").read_bytes())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.delenv(perceptual.VGG16_ENV, raising=False)
    monkeypatch.setenv(perceptual.LPIPS_VGG_ENV, str(weight_files / "vgg.pth"))
    assert perceptual.resolve_vgg16_path() == hub / "vgg16-397923af.pth"
    assert PerceptualLoss("lpips-vgg").backend == "lpips-vgg"


def test_lpips_vgg_wrong_keys_raise_a_clear_error(weight_files, tmp_path):
    sd = {k: v for k, v in torchvision_vgg16_state_dict().items() if k.startswith("features.")}
    sd["features.1.weight"] = sd.pop("features.2.weight")  # off-by-one layout (e.g. a non-VGG16 file)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(
        CheckpointError, match=r"bad.pth.*missing keys \['features.2.weight'\].*features.1.weight"
    ):
        PerceptualLoss("lpips-vgg", vgg_path=tmp_path / "bad.pth", lpips_path=weight_files / "vgg.pth")
    heads = lpips_heads()
    heads["lin0.model.1.weight"] = torch.rand(1, 32, 1, 1)
    torch.save(heads, tmp_path / "heads.pth")
    with pytest.raises(CheckpointError, match="wrong shapes"):
        PerceptualLoss("lpips-vgg", vgg_path=weight_files / "small.pth", lpips_path=tmp_path / "heads.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        PerceptualLoss("lpips-vgg", vgg_path=tmp_path / "junk.pth", lpips_path=weight_files / "vgg.pth")
