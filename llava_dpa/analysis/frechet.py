"""Modality integration rate (MIR, Huang et al. 2025): Fréchet distances between visual and text token
states, per layer, computed exactly in float64.

Statistics are streamed (running sums and outer products), so no hidden state is stored.
"""
from __future__ import annotations

import math

import torch


class NotEnoughTokens(ValueError):
    pass


class RunningMoments:
    """Running mean and covariance (N-1) of row vectors, in float64."""

    def __init__(self, dim: int):
        self.n = 0
        self.sum = torch.zeros(dim, dtype=torch.float64)
        self.outer = torch.zeros(dim, dim, dtype=torch.float64)

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().to(torch.float64).reshape(-1, self.sum.shape[0]).cpu()
        self.n += x.shape[0]
        self.sum += x.sum(0)
        self.outer += x.T @ x

    def mean_cov(self, what: str = "tokens"):
        d = self.sum.shape[0]
        if self.n <= d:
            raise NotEnoughTokens(f"{self.n} {what} for a {d}-dimensional covariance; at least {d + 1} are needed "
                                  f"(add samples)")
        mean = self.sum / self.n
        cov = (self.outer - self.n * torch.outer(mean, mean)) / (self.n - 1)
        return mean, (cov + cov.T) / 2


def sqrtm_psd(m: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(m)
    return (vectors * values.clamp(min=0).sqrt()) @ vectors.T


def frechet_distance(mu1, cov1, mu2, cov2) -> float:
    """||mu1-mu2||^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), exact: tr((S1 S2)^(1/2)) is the sum of the square
    roots of the eigenvalues of S1^(1/2) S2 S1^(1/2) (two eigh calls, float64)."""
    mu1, mu2, cov1, cov2 = (t.to(torch.float64) for t in (mu1, mu2, cov1, cov2))
    root = sqrtm_psd(cov1)
    middle = root @ cov2 @ root
    trace_sqrt = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum()
    fd = (mu1 - mu2).pow(2).sum() + cov1.trace() + cov2.trace() - 2 * trace_sqrt
    return float(fd.clamp(min=0))


def scale_and_replace_outliers(tokens: torch.Tensor, scale: float) -> torch.Tensor:
    """Text-centric scaling, then tokens whose norm is over 3 sigma from the median norm are replaced by
    the coordinate-wise median vector (not dropped)."""
    x = tokens.to(torch.float64) * scale
    norms = x.norm(dim=-1)
    if x.shape[0] > 1:
        outliers = (norms - norms.median()).abs() > 3 * norms.std(unbiased=True)
        if outliers.any():
            x = x.clone()
            x[outliers] = x.median(dim=0).values
    return x


def layer_fd(visual: torch.Tensor, text: torch.Tensor) -> float:
    """FD between pooled visual and text tokens of one layer ([N_v, d], [N_t, d]), with MIR's text-centric
    scaling s = 1 / mean ||t|| and outlier replacement per modality."""
    scale = 1.0 / text.to(torch.float64).norm(dim=-1).mean().item()
    stats = []
    for tokens, what in ((visual, "visual tokens"), (text, "text tokens")):
        moments = RunningMoments(tokens.shape[-1])
        moments.update(scale_and_replace_outliers(tokens, scale))
        stats.append(moments.mean_cov(what))
    return frechet_distance(*stats[0], *stats[1])


def mir(per_layer_fd: list[float]) -> float:
    return math.log10(sum(per_layer_fd))
