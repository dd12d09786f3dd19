"""Analysis metrics against the sanity checks of shared/reference/analysis-metrics.md."""
import numpy as np
import pytest
import torch

from llava_dpa.analysis.frechet import NotEnoughTokens, RunningMoments, frechet_distance, layer_fd, mir
from llava_dpa.analysis.similarity import layer_similarity, linear_cka
from llava_dpa.analysis.weight_updates import intruder_dimensions, update_density

pytestmark = pytest.mark.fast  # pure logic: no training subprocess


def moments(x):
    m = RunningMoments(x.shape[1])
    for chunk in x.split(97):  # streamed in pieces
        m.update(chunk)
    return m.mean_cov()


def test_frechet_identical_is_zero_and_gaussians_match_closed_form():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(5000, 8, generator=g, dtype=torch.float64)
    assert frechet_distance(*moments(x), *moments(x)) < 1e-10
    d, n = 8, 200_000
    a = 1.0 + 0.5 * torch.randn(n, d, generator=g, dtype=torch.float64)
    b = -1.0 + 2.0 * torch.randn(n, d, generator=g, dtype=torch.float64)
    expected = d * (1.0 - -1.0) ** 2 + d * (0.5 - 2.0) ** 2
    assert frechet_distance(*moments(a), *moments(b)) == pytest.approx(expected, rel=0.01)


def test_mir_layer_distance_invariances_and_direction():
    g = torch.Generator().manual_seed(1)
    text = torch.randn(400, 6, generator=g) + 3
    visual = 2 * torch.randn(300, 6, generator=g) - 1
    fd = layer_fd(visual, text)
    assert layer_fd(10 * visual, 10 * text) == pytest.approx(fd, rel=1e-9)           # scale-free
    assert layer_fd(visual[torch.randperm(300)], text[torch.randperm(400)]) == pytest.approx(fd, rel=1e-9)
    closer = visual + 0.5 * (text.mean(0) - visual.mean(0))
    assert layer_fd(closer, text) < fd
    assert mir([fd, fd]) == pytest.approx(np.log10(2 * fd))
    with pytest.raises(NotEnoughTokens, match="at least 7 are needed"):
        layer_fd(visual[:5], text)


def test_linear_cka_reference_values_and_properties():
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    assert linear_cka(x, y) == pytest.approx(0.55761, abs=1e-5)
    assert linear_cka(x, y, debiased=True) == pytest.approx(0.51346, abs=1e-5)
    q, _ = torch.linalg.qr(torch.randn(10, 10, dtype=torch.float64))
    assert linear_cka(x, 3.0 * x @ q) == pytest.approx(1.0)
    grid = layer_similarity([x, y, x + 0.1 * y])
    assert torch.allclose(grid.diag(), torch.ones(3, dtype=torch.float64)) and torch.allclose(grid, grid.T)


def test_update_density_checks():
    g = torch.Generator().manual_seed(2)
    base = {"model.layers.0.mlp.up_proj.weight": torch.randn(64, 64, generator=g),
            "model.layers.0.self_attn.q_proj.weight": torch.randn(64, 64, generator=g)}
    same = {k: v.clone() for k, v in base.items()}
    assert update_density(base, same)["total"] == 0.0
    tuned = {k: v.clone() for k, v in base.items()}
    flat = tuned["model.layers.0.mlp.up_proj.weight"].view(-1)
    flat[: flat.numel() // 4] += 1e-3  # exactly a quarter of this matrix moves by more than tau
    result = update_density(base, tuned)
    assert result["up_proj"] == pytest.approx(0.25) and result["q_proj"] == 0.0 and result["total"] == pytest.approx(0.125)
    with pytest.raises(TypeError, match="dtypes differ"):
        update_density(base, {k: v.to(torch.bfloat16) for k, v in base.items()})


def test_intruder_dimension_checks():
    g = torch.Generator().manual_seed(3)
    w0 = torch.randn(64, 64, generator=g, dtype=torch.float64)
    assert intruder_dimensions(w0, w0.clone()) == 0
    assert intruder_dimensions(w0, w0 + 1e-4 * torch.randn(64, 64, generator=g, dtype=torch.float64)) == 0
    u = torch.randn(64, generator=g, dtype=torch.float64)
    v = torch.randn(64, generator=g, dtype=torch.float64)
    top = torch.linalg.svdvals(w0)[0]
    spike = 3 * top * torch.outer(u / u.norm(), v / v.norm())
    assert intruder_dimensions(w0, w0 + spike) == 1
