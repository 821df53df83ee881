"""Evaluation metrics against hand-computed values (CPU, tiny, seeded)."""

from __future__ import annotations

import importlib.metadata
import json
import math

import numpy as np
import pytest
import torch
import trimesh
from PIL import Image

from triflow3d.errors import ConfigError
from triflow3d.evaluation import (
    FeatureNet,
    InceptionTorchScript,
    Unavailable,
    bar_chart,
    chamfer_distance,
    classify_colour,
    classify_colours,
    compute_image_metrics,
    coverage,
    distribution_metrics,
    dominant_colour,
    f_score,
    fid_from_features,
    find_inception,
    frechet_distance,
    is_broken,
    kid_from_features,
    load_clip,
    load_inception,
    mmd,
    nn_classify,
    one_nna,
    pairwise_chamfer,
    psnr,
    sample_surface,
    save_grid,
    srgb_to_lab,
    ssim,
    versions,
    write_report,
)
from triflow3d.evaluation.features import clip_scores, r_precision
from triflow3d.shapes.palette import PALETTE, jittered


# --- geometry ------------------------------------------------------------------------------------
def test_chamfer_single_points_and_shifted_copy():
    a, b = np.array([[0.0, 0, 0]]), np.array([[1.0, 2, 2]])  # distance 3
    assert chamfer_distance(a, b) == pytest.approx(9 + 9)
    assert chamfer_distance(a, b, squared=False) == pytest.approx(3 + 3)
    pts = np.array([[0.0, 0, 0], [10, 0, 0], [0, 10, 0], [0, 0, 10]])
    assert chamfer_distance(pts, pts + [0.5, 0, 0]) == pytest.approx(0.25 + 0.25)
    # asymmetric: every a has a partner in b, but b's extra point is 1 away from a
    assert chamfer_distance(np.zeros((1, 3)), np.array([[0.0, 0, 0], [1, 0, 0]])) == pytest.approx(0 + 0.5)


def test_pairwise_chamfer_equals_loop_with_chunking():
    g = torch.Generator().manual_seed(0)
    A, B = torch.rand(3, 50, 3, generator=g), torch.rand(4, 60, 3, generator=g)
    loop = torch.tensor([[chamfer_distance(a.numpy(), b.numpy()) for b in B] for a in A])
    for max_elements in (50 * 60, 2 * 50 * 60, 2**25):  # one pair, two pairs, all at once
        got = pairwise_chamfer(A, B, backend="torch", max_elements=max_elements)
        torch.testing.assert_close(got, loop.float(), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(pairwise_chamfer(A, B), loop.float())  # kdtree on CPU


def test_f_score_hand_computed():
    pred = np.array([[0.0, 0, 0], [1, 0, 0]])
    ref = np.array([[0.05, 0, 0], [5, 0, 0]])
    f, p, r = f_score(pred, ref, tau=0.1)
    assert (p, r, f) == pytest.approx((0.5, 0.5, 0.5))
    assert f_score(pred, pred, tau=1e-6).f == 1.0


def two_squares(split: float, colours=((204, 31, 31), (38, 84, 204))) -> trimesh.Trimesh:
    """Two disjoint unit-height rectangles in z=0 with areas split / 1-split and one colour each."""
    verts, faces, vc = [], [], []
    for k, (w, c) in enumerate(((split, colours[0]), (1 - split, colours[1]))):
        x0 = 2.0 * k
        verts += [[x0, 0, 0], [x0 + w, 0, 0], [x0 + w, 1, 0], [x0, 1, 0]]
        faces += [[4 * k, 4 * k + 1, 4 * k + 2], [4 * k, 4 * k + 2, 4 * k + 3]]
        vc += [[*c, 255]] * 4
    return trimesh.Trimesh(np.array(verts, float), np.array(faces), vertex_colors=np.array(vc), process=False)


def test_sample_surface_deterministic_area_weighted_coloured():
    mesh = two_squares(0.8)
    p1, c1 = sample_surface(mesh, 4000, seed=3)
    p2, c2 = sample_surface(mesh, 4000, seed=3)
    p3, _ = sample_surface(mesh, 4000, seed=4)
    assert p1.shape == (4000, 3) and c1.shape == (4000, 3)
    np.testing.assert_array_equal(p1, p2)
    np.testing.assert_array_equal(c1, c2)
    assert not np.array_equal(p1, p3)
    assert np.allclose(p1[:, 2], 0) and p1[:, 1].min() >= 0 and p1[:, 1].max() <= 1
    on_first = p1[:, 0] < 1.5
    assert on_first.mean() == pytest.approx(0.8, abs=0.03)  # area weighting
    np.testing.assert_allclose(
        c1[on_first], np.tile([204 / 255, 31 / 255, 31 / 255], (on_first.sum(), 1)), atol=1e-6
    )
    box = trimesh.creation.box()
    pts, cols = sample_surface(box, 500, seed=0)
    assert cols is None or cols.shape == (500, 3)
    np.testing.assert_allclose(np.abs(pts).max(axis=1), 0.5, atol=1e-6)  # every point on a face


def test_is_broken():
    assert not is_broken(trimesh.creation.box())
    assert is_broken(None)
    assert is_broken(trimesh.Trimesh())
    bad = trimesh.creation.box()
    bad.vertices[0] = [np.nan, 0, 0]
    assert is_broken(bad)


def test_nn_classify_by_chamfer():
    g = torch.Generator().manual_seed(1)
    blob = lambda c: torch.randn(32, 3, generator=g) * 0.1 + torch.tensor(c)  # noqa: E731
    refs = torch.stack([blob([0.0, 0, 0]), blob([5.0, 0, 0]), blob([0.0, 5, 0])])
    gens = torch.stack([blob([0.0, 5.1, 0]), blob([4.9, 0, 0]), blob([0.0, 0, 0.1])])
    assert nn_classify(gens, refs, ["mug", "car", "tree"]) == ["tree", "car", "mug"]


# --- distribution ----------------------------------------------------------------------------------
def test_distribution_metrics_hand_computed_1d():
    gen, ref = torch.tensor([0.0, 1.0]), torch.tensor([5.0, 20.0])
    d = lambda x, y: (x[:, None] - y[None]).abs()  # noqa: E731
    res = distribution_metrics(d(gen, ref), d(gen, gen), d(ref, ref))
    # refs 5 and 20: nearest gen at 4 and 19 -> MMD 11.5; both gens pick ref 5 -> COV 1/2
    assert res["mmd"] == pytest.approx(11.5) and res["cov"] == pytest.approx(0.5)
    # gen 0, 1 and ref 20 have a same-set nearest neighbour; ref 5 (nearest: gen 1) does not
    assert (res["1nna"], res["1nna_gen"], res["1nna_ref"]) == pytest.approx((0.75, 1.0, 0.5))


def test_distribution_identical_far_and_degenerate_sets():
    g = torch.Generator().manual_seed(2)
    shapes = torch.rand(5, 40, 3, generator=g) + torch.arange(5.0).view(5, 1, 1)  # distinct shapes
    d = pairwise_chamfer(shapes, shapes)
    copies = distribution_metrics(d, d, d)  # generated set = exact copy of the references
    assert copies["mmd"] == pytest.approx(0.0, abs=1e-5) and copies["cov"] == 1.0
    assert copies["1nna"] == 0.0  # memorisation: each sample's nearest neighbour is its twin
    zeros = torch.zeros(4, 4)  # all shapes identical: every nearest neighbour ties -> 0.5 by the tie rule
    assert distribution_metrics(zeros, zeros, zeros) == {
        "mmd": 0.0,
        "cov": 1.0,
        "1nna": 0.5,
        "1nna_gen": 0.5,
        "1nna_ref": 0.5,
    }
    far = pairwise_chamfer(shapes + 100.0, shapes)
    assert one_nna(far, d, d)["1nna"] == 1.0
    assert coverage(far) == pytest.approx(1 / 5)  # every far sample is closest to the same (last) ref
    assert mmd(far) > 1e4


# --- image ---------------------------------------------------------------------------------------
def test_psnr_and_ssim():
    g = torch.Generator().manual_seed(0)
    a = 0.1 + 0.8 * torch.rand(2, 3, 32, 32, generator=g)
    assert torch.isinf(psnr(a, a)).all()
    torch.testing.assert_close(ssim(a, a), torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(psnr(a, a + 0.1), torch.full((2,), 20.0, dtype=torch.float64))
    sign = torch.randint(0, 2, a.shape, generator=g) * 2 - 1
    torch.testing.assert_close(
        psnr(a, a + 0.05 * sign), torch.full((2,), 10 * math.log10(1 / 0.0025), dtype=torch.float64)
    )
    # constant images: SSIM = (2 a b + C1) / (a^2 + b^2 + C1) (zero variance, contrast term 1)
    c1 = 0.01**2
    expected = (2 * 0.5 * 0.6 + c1) / (0.25 + 0.36 + c1)
    assert ssim(torch.full((1, 3, 16, 16), 0.5), torch.full((1, 3, 16, 16), 0.6)).item() == pytest.approx(
        expected
    )


def test_ssim_matches_scikit_image():
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((24, 28, 3))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ref = metrics.structural_similarity(
        a, b, channel_axis=2, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0
    )
    ours = ssim(torch.from_numpy(a).permute(2, 0, 1)[None], torch.from_numpy(b).permute(2, 0, 1)[None])
    assert ours.item() == pytest.approx(ref, abs=1e-6)


def test_fid_analytic_cases():
    assert frechet_distance(np.zeros(3), np.eye(3), np.ones(3), 4 * np.eye(3)) == pytest.approx(3 + 3)
    f = np.random.default_rng(0).normal(size=(300, 6))
    assert fid_from_features(f, f) == pytest.approx(0.0, abs=1e-6)
    delta = np.array([1.0, -2.0, 0.5, 0, 0, 3])
    assert fid_from_features(f, f + delta) == pytest.approx(float(delta @ delta), rel=1e-6)
    # scaled copy: S2 = 4 S1 -> tr(S1 + 4 S1 - 2 * 2 S1) = tr(S1); means mu and 2 mu
    mu, s = f.mean(0), np.cov(f, rowvar=False)
    assert fid_from_features(f, 2 * f) == pytest.approx(float(mu @ mu + np.trace(s)), rel=1e-6)


def test_kid_identical_vs_shifted():
    f = np.random.default_rng(1).normal(size=(200, 8))
    same, _ = kid_from_features(f, f, num_subsets=20, subset_size=100)
    shifted, std = kid_from_features(f, f + 1.0, num_subsets=20, subset_size=100)
    assert shifted > 0.1 and 0 < std < 0.2 * shifted  # half-size subsets differ, but far less than the shift
    whole, whole_std = kid_from_features(f, f + 1.0, num_subsets=5, subset_size=200)  # every subset is all
    assert whole_std < 1e-9 * whole
    assert abs(same) < 0.02 * shifted
    assert kid_from_features(f, f + 1.0, num_subsets=20, subset_size=100) == (shifted, std)  # seeded


# --- colour --------------------------------------------------------------------------------------
def test_lab_reference_values():
    np.testing.assert_allclose(srgb_to_lab([1.0, 1.0, 1.0]), [100.0, 0.0, 0.0], atol=1e-3)
    np.testing.assert_allclose(srgb_to_lab([1.0, 0.0, 0.0]), [53.24, 80.09, 67.20], atol=0.05)
    np.testing.assert_allclose(srgb_to_lab([0.0, 0.0, 0.0]), [0.0, 0.0, 0.0], atol=1e-6)


def test_palette_colours_classify_to_themselves():
    names = list(PALETTE)
    assert classify_colours(np.array([PALETTE[n] for n in names])) == names
    rng = np.random.default_rng(0)
    for name in names:  # the benchmark's per-object jitter never changes the colour name
        jit = np.array([jittered(name, rng)[:3] for _ in range(50)])
        assert set(classify_colours(jit)) == {name}
    assert classify_colour([0.0, 0.0, 0.9], {"a": (0.0, 0.0, 1.0), "b": (1.0, 0.0, 0.0)}) == "a"


def test_dominant_colour_of_two_coloured_mesh():
    red, blue = np.array([204, 31, 31]) / 255, np.array([38, 84, 204]) / 255
    rgb = dominant_colour(two_squares(0.8), n_samples=5000)
    np.testing.assert_allclose(rgb, red, atol=1e-6)  # the main colour itself, not a blend
    assert classify_colour(rgb) == "red"
    assert classify_colour(dominant_colour(two_squares(0.2), n_samples=5000)) == "blue"
    np.testing.assert_allclose(dominant_colour(np.stack([red, blue, blue]), weights=[3.0, 1.0, 1.0]), red)


# --- feature networks ----------------------------------------------------------------------------
class _FakeInception(torch.nn.Module):
    def forward(self, img: torch.Tensor, return_features: bool = False) -> torch.Tensor:
        flat = img.flatten(1)
        n = img.shape[0]
        size = torch.tensor([float(img.shape[2]), float(img.shape[3])]).expand(n, 2)
        return torch.cat([flat.min(1, keepdim=True).values, flat.max(1, keepdim=True).values, size], 1)


class _ColourStats:
    name = "colour-stats"

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1)


def test_missing_networks_are_reported_unavailable(tmp_path, monkeypatch):
    missing = tmp_path / "nowhere" / "inception-2015-12-05.pt"
    inc, clip = load_inception(missing), load_clip(tmp_path / "no-clip")
    assert isinstance(inc, Unavailable) and str(missing) in inc.reason
    assert isinstance(clip, Unavailable) and "no-clip" in clip.reason
    with pytest.raises(ConfigError, match="refusing"):
        load_inception(tmp_path / "inception.pkl")
    images = torch.rand(4, 3, 16, 16)
    res = compute_image_metrics(images, images, ["a red chair"] * 4, inception=inc, clip=clip)
    for key in ("fid", "kid", "clip_score", "clip_r_precision@1"):
        assert res[key]["available"] is False and res[key]["reason"]
    assert str(missing) in res["fid"]["reason"]
    res = compute_image_metrics(images, images, None, extra=[_ColourStats()], paired=True)
    assert "no Inception network" in res["fid"]["reason"]
    assert res["fid[colour-stats]"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert res["psnr"]["value"] == math.inf and res["ssim"]["value"] == pytest.approx(1.0)
    monkeypatch.setenv("TRIFLOW3D_INCEPTION", str(tmp_path / "env.pt"))
    (tmp_path / "env.pt").write_bytes(b"")
    assert find_inception() == tmp_path / "env.pt"


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_inception_torchscript_preprocessing(tmp_path):
    path = tmp_path / "inception-2015-12-05.pt"
    torch.jit.script(_FakeInception()).save(str(path))
    net = load_inception(path)
    assert isinstance(net, InceptionTorchScript) and isinstance(net, FeatureNet)
    images = torch.zeros(3, 3, 40, 40)
    images[:, :, :20] = 1.0
    feats = net(images)
    torch.testing.assert_close(feats, torch.tensor([[0.0, 255.0, 299.0, 299.0]]).expand(3, 4))
    res = compute_image_metrics(images, torch.rand(3, 3, 40, 40), None, inception=net)
    assert res["fid"]["available"] and res["fid"]["network"] == "inception-2015-12-05"
    assert math.isfinite(res["fid"]["value"])


def test_clip_score_and_r_precision_maths():
    e = torch.eye(3)
    torch.testing.assert_close(clip_scores(e, e), torch.full((3,), 100.0))
    assert clip_scores(e[:1], -e[:1]).item() == 0.0  # clamped at 0
    sim = torch.tensor([[0.9, 0.1, 0.0], [0.5, 0.4, 0.1], [0.0, 0.2, 0.3]])
    truth = torch.tensor([0, 1, 2])
    assert r_precision(sim, truth, k=1) == pytest.approx(2 / 3)  # row 1 ranks its text second
    assert r_precision(sim, truth, k=2) == 1.0


def test_clip_scorer_on_a_tiny_random_model(tmp_path):
    transformers = pytest.importorskip("transformers")
    vocab = {c: i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab |= {f"{c}</w>": len(vocab) + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")}
    vocab |= {"<|startoftext|>": len(vocab), "<|endoftext|>": len(vocab) + 1}
    eos = vocab["<|endoftext|>"]
    text = dict(
        vocab_size=len(vocab),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
    )
    cfg = transformers.CLIPConfig(
        text_config=dict(
            text, max_position_embeddings=32, bos_token_id=eos - 1, eos_token_id=eos, pad_token_id=eos
        ),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
        ),
        projection_dim=16,
    )
    transformers.CLIPModel(cfg).save_pretrained(tmp_path)
    transformers.CLIPTokenizer(vocab=vocab, merges=[]).save_pretrained(tmp_path)
    clip = load_clip(tmp_path)
    images = torch.rand(4, 3, 40, 48)
    prompts = ["a red chair", "a blue mug", "a red chair", "a tree"]
    res = compute_image_metrics(images, None, prompts, clip=clip)
    assert res["clip_score"]["available"] and 0.0 <= res["clip_score"]["value"] <= 100.0
    assert res["clip_r_precision@1"]["n_prompts"] == 3
    assert res["clip_r_precision@1"]["value"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    assert res["fid"]["available"] is False
    emb = clip.image_embeddings(images)
    assert emb.shape == (4, 16)
    torch.testing.assert_close(emb.norm(dim=1), torch.ones(4))


# --- report --------------------------------------------------------------------------------------
def test_report_from_fake_metrics(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    bars = bar_chart({"chair": 0.5, "table": 0.25, "lamp": float("nan")}, outside / "bars.png", title="COV")
    tiles = [np.full((8, 8, 3), v) for v in (0.0, 0.5, 1.0)] + [
        torch.zeros(3, 8, 8),
        Image.new("RGB", (8, 8), "red"),
    ]
    grid = save_grid(tiles, rows=2, path=tmp_path / "out" / "grid.png", labels=["a", "b", "c", "d", "e"])
    with Image.open(grid) as im:
        assert im.size == (3 * 12 + 4, 2 * (8 + 16 + 4) + 4)  # 3 columns, 2 rows, pad 4, label 16
        assert im.getpixel((4 + 12 + 4, 4 + 4)) == (128, 128, 128)  # tile b
    metrics = {
        "failure_rate": 0.1,
        "overall": {
            "chamfer": 0.0123,
            "fid": {"available": False, "reason": "Inception TorchScript not found"},
            "kid": {"available": True, "value": 0.01, "std": 0.001},
        },
        "per_category": {
            "chair": {"mmd": 0.004, "cov": 0.5, "1nna": 0.75},
            "table": {"mmd": 0.002, "cov": 1.0},
        },
    }
    json_path, md_path = write_report(
        tmp_path / "out",
        metrics,
        {"n_points": 2048, "seed": 0},
        {"cov": bars, "grid": grid},
        versions={"torch": "x"},
    )
    data = json.loads(json_path.read_text())
    assert data["metrics"] == metrics and data["protocol"]["n_points"] == 2048
    md = md_path.read_text()
    assert "| category | mmd (x1000) | cov (%) | 1nna (%) |" in md
    assert "| chair | 4 | 50 | 75 |" in md and "| table | 2 | 100 | – |" in md
    assert "| chamfer (x1000) | 12.3 |" in md and "| fid | n/a |" in md
    assert "**fid**: Inception TorchScript not found" in md
    assert "![cov](figures/bars.png)" in md and "![grid](grid.png)" in md
    assert (tmp_path / "out" / "figures" / "bars.png").is_file()
    info = versions()
    assert info["torch"] == importlib.metadata.version("torch") and info["numpy"] == np.__version__
    assert "python" in info and "git_commit" in info


def test_line_chart_draws_each_series(tmp_path):
    from PIL import Image

    from triflow3d.evaluation.report import line_chart

    path = line_chart({"a": [(1, 1), (10, 10)], "b": [(1, 2), (10, 100)]}, tmp_path / "c.png", title="t")
    img = Image.open(path).convert("RGB")
    assert img.size == (420, 320)
    colours = {img.getpixel((x, y)) for x in range(0, 420, 2) for y in range(0, 320, 2)}
    assert (70, 110, 180) in colours and (190, 80, 70) in colours  # both lines are drawn
