import math

import numpy as np
import pytest
import torch

from robustkd import plotting
from robustkd.image_quality import psnr, ssim, summary


def _images(shape, seed=0, lo=0.0, hi=1.0):
    g = torch.Generator().manual_seed(seed)
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _reference_ssim(a: np.ndarray, b: np.ndarray, win=11, sigma=1.5, data_range=1.0) -> float:
    """Textbook SSIM for one (C, H, W) pair: explicit Gaussian-weighted sums over every 'valid' window."""
    coords = np.arange(win) - win // 2
    g = np.exp(-coords ** 2 / (2 * sigma ** 2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    values = []
    for c in range(a.shape[0]):
        for i in range(a.shape[1] - win + 1):
            for j in range(a.shape[2] - win + 1):
                pa, pb = a[c, i:i + win, j:j + win], b[c, i:i + win, j:j + win]
                mu_a, mu_b = (w * pa).sum(), (w * pb).sum()
                var_a, var_b = (w * (pa - mu_a) ** 2).sum(), (w * (pb - mu_b) ** 2).sum()
                cov = (w * (pa - mu_a) * (pb - mu_b)).sum()
                values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                              / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
    return float(np.mean(values))


@pytest.mark.parametrize("shape", [(2, 1, 28, 28), (2, 3, 32, 32)])
def test_identical_images(shape):
    x = _images(shape)
    assert torch.allclose(ssim(x, x), torch.ones(shape[0]), atol=1e-6)
    assert torch.isinf(psnr(x, x)).all() and (psnr(x, x) > 0).all()
    assert summary(x, x) == {"psnr_mean": None, "ssim_mean": 1.0}


def test_psnr_of_constant_offset():
    x, d = _images((3, 3, 16, 16), lo=0.2, hi=0.8), 0.05
    expected = -10 * math.log10(d ** 2)  # MSE is exactly d² everywhere
    assert torch.allclose(psnr(x + d, x), torch.full((3,), expected), atol=1e-4)
    assert summary(x + d, x)["psnr_mean"] == pytest.approx(expected, abs=1e-4)


@pytest.mark.parametrize("channels", [1, 3])
def test_ssim_matches_reference(channels):
    a = _images((1, channels, 16, 16), seed=1)
    b = (a + 0.2 * torch.randn(a.shape, generator=torch.Generator().manual_seed(2))).clamp(0, 1)
    expected = _reference_ssim(a[0].double().numpy(), b[0].double().numpy())
    assert 0.1 < expected < 0.95  # a non-trivial pair, so agreement means something
    assert ssim(a, b).item() == pytest.approx(expected, abs=1e-5)
    assert ssim(a.double(), b.double()).item() == pytest.approx(expected, abs=1e-10)


def test_ssim_properties():
    x = _images((2, 3, 32, 32), seed=3)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(4))
    noisy = [(x + s * noise).clamp(0, 1) for s in (0.02, 0.1, 0.3)]
    assert torch.allclose(ssim(x, noisy[1]), ssim(noisy[1], x), atol=1e-6)
    scores = [ssim(n, x) for n in noisy]
    assert (scores[0] > scores[1]).all() and (scores[1] > scores[2]).all()
    per_channel = torch.stack([ssim(noisy[1][:, c:c + 1], x[:, c:c + 1]) for c in range(3)], 1).mean(1)
    assert torch.allclose(ssim(noisy[1], x), per_channel, atol=1e-6)
    assert torch.allclose(ssim(noisy[1].to(memory_format=torch.channels_last), x), ssim(noisy[1], x), atol=1e-6)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    x, y = _images((2, 3, 32, 32), seed=5), _images((2, 3, 32, 32), seed=6)
    assert torch.allclose(ssim(x.cuda(), y.cuda()).cpu(), ssim(x, y), atol=1e-5)
    assert torch.allclose(psnr(x.cuda(), y.cuda()).cpu(), psnr(x, y), atol=1e-4)


def test_bad_inputs():
    x = _images((1, 1, 28, 28))
    with pytest.raises(ValueError, match="x and ref"):
        ssim(x, x[..., :27])
    with pytest.raises(ValueError, match="x and ref"):
        psnr(x, x[:, :, :27])
    with pytest.raises(ValueError, match="4-D"):
        ssim(x[0], x[0])
    with pytest.raises(ValueError, match="window_size"):
        ssim(x[..., :8, :8], x[..., :8, :8])


def test_purification_grid_writes_png_atomically(tmp_path):
    x, y = _images((3, 1, 28, 28)), torch.tensor([0, 1, 2])
    names = ["clean", "adversarial", "purified: normal CAE", "purified: robust CAE", "purified: blur"]
    rows = {name: (_images((3, 1, 28, 28), seed=k), torch.tensor([0, k % 3, 2])) for k, name in enumerate(names)}
    path = tmp_path / "purification.png"
    plotting.purification_grid(x, y, rows, [str(i) for i in range(10)], "purification at ε=0.3", path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(tmp_path.iterdir()) == [path]
