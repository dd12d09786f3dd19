"""Layer-by-layer similarity of the same tokens (paper Figure 4): linear CKA, feature-space form."""
from __future__ import annotations

import torch


def _centre(x: torch.Tensor) -> torch.Tensor:
    x = x.to(torch.float64)
    return x - x.mean(0, keepdim=True)


def linear_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool = False) -> float:
    """||Y^T X||_F^2 / (||X^T X||_F ||Y^T Y||_F) on column-centred X [N, d1], Y [N, d2]; `debiased` uses the
    unbiased HSIC estimator (Kornblith et al. 2019; use it when N is not much larger than d)."""
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"CKA compares the same tokens: {x.shape[0]} vs {y.shape[0]} rows")
    if not debiased:
        x, y = _centre(x), _centre(y)
        return float((y.T @ x).pow(2).sum() / ((x.T @ x).norm() * (y.T @ y).norm()))
    return float(_hsic_unbiased(x, y) / (_hsic_unbiased(x, x) * _hsic_unbiased(y, y)).sqrt())


def _hsic_unbiased(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    n = x.shape[0]
    if n < 4:
        raise ValueError("debiased CKA needs at least 4 tokens")
    k = x.to(torch.float64) @ x.to(torch.float64).T
    l = y.to(torch.float64) @ y.to(torch.float64).T
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    ones = torch.ones(n, dtype=torch.float64)
    term = (k * l).sum() + (ones @ k @ ones) * (ones @ l @ ones) / ((n - 1) * (n - 2)) \
        - 2 * (ones @ k @ l @ ones) / (n - 2)
    return term / (n * (n - 3))


def layer_similarity(states: list[torch.Tensor], debiased: bool = False) -> torch.Tensor:
    """states[k]: [N, d] for layer k (same tokens at every layer) -> [L, L] CKA matrix (diagonal 1, symmetric)."""
    n = len(states)
    out = torch.eye(n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = linear_cka(states[i], states[j], debiased)
    return out
