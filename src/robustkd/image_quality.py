"""Image-quality metrics (PSNR, SSIM) for judging a purification defence: purified image vs the clean one.

Inputs are float batches (N, C, H, W) in [0, data_range]; every metric is returned per image, shape (N,).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

K1, K2 = 0.01, 0.03  # Wang et al. (2004) stabilising constants


def _check(x: torch.Tensor, ref: torch.Tensor) -> None:
    if x.dim() != 4:
        raise ValueError(f"x must be 4-D (N, C, H, W), got shape {tuple(x.shape)}")
    if x.shape != ref.shape:
        raise ValueError(f"x and ref must have the same shape, got x {tuple(x.shape)} and ref {tuple(ref.shape)}")


def _work_dtype(x: torch.Tensor) -> torch.dtype:
    # Half precision loses the E[x²] - E[x]² differences SSIM relies on; float64 stays float64.
    return torch.promote_types(x.dtype, torch.float32)


def psnr(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB per image; +inf where the images are identical."""
    _check(x, ref)
    dtype = _work_dtype(x)
    mse = (x.to(dtype) - ref.to(dtype)).square().flatten(1).mean(1)
    return 10 * torch.log10(data_range ** 2 / mse)  # mse == 0 → data_range²/0 = inf → inf dB


def _gaussian_window(window_size: int, sigma: float, channels: int, dtype, device) -> torch.Tensor:
    coords = torch.arange(window_size, dtype=dtype, device=device) - window_size // 2
    g = torch.exp(-coords.square() / (2 * sigma ** 2))
    g = g / g.sum()
    return torch.outer(g, g).expand(channels, 1, window_size, window_size)  # one filter per channel (groups=C)


def ssim(x: torch.Tensor, ref: torch.Tensor, data_range: float = 1.0, window_size: int = 11,
         sigma: float = 1.5) -> torch.Tensor:
    """Structural similarity (Wang et al. 2004) per image, averaged over channels and valid pixels.

    Gaussian-weighted local statistics with population (not sample) covariance and a 'valid' convolution,
    the convention of skimage (gaussian_weights=True, use_sample_covariance=False) and pytorch-msssim.
    """
    _check(x, ref)
    if window_size < 1 or window_size % 2 == 0:
        raise ValueError(f"window_size must be a positive odd integer, got {window_size}")
    if min(x.shape[-2:]) < window_size:
        raise ValueError(f"x is {x.shape[-2]}x{x.shape[-1]}, smaller than window_size={window_size}")
    dtype = _work_dtype(x)
    x, ref = x.to(dtype), ref.to(dtype)
    channels = x.shape[1]
    window = _gaussian_window(window_size, sigma, channels, dtype, x.device)
    # One grouped conv over the five stacked maps instead of five separate calls.
    stats = F.conv2d(torch.cat([x, ref, x * x, ref * ref, x * ref]), window, groups=channels)
    mu_x, mu_r, e_xx, e_rr, e_xr = stats.chunk(5)
    var_x, var_r, cov = e_xx - mu_x.square(), e_rr - mu_r.square(), e_xr - mu_x * mu_r
    c1, c2 = (K1 * data_range) ** 2, (K2 * data_range) ** 2
    luminance = (2 * mu_x * mu_r + c1) / (mu_x.square() + mu_r.square() + c1)
    ssim_map = luminance * (2 * cov + c2) / (var_x + var_r + c2)
    return ssim_map.flatten(1).mean(1)


def summary(x: torch.Tensor, ref: torch.Tensor) -> dict:
    """Batch means: PSNR over finite values only (None when every pair is identical), and SSIM."""
    p = psnr(x, ref)
    finite = p[torch.isfinite(p)]
    return {"psnr_mean": round(finite.mean().item(), 4) if finite.numel() else None,
            "ssim_mean": round(ssim(x, ref).mean().item(), 4)}

