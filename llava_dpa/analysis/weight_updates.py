"""How much stage 2 rewrote the target LLM (paper Appendix C): update density and intrusion dimension."""
from __future__ import annotations

import torch

DEFAULT_TAU = 1e-5
DEFAULT_EPSILON = 0.5


def module_type(name: str) -> str:
    for key in ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "embed_tokens", "lm_head"):
        if key in name:
            return key
    return "norm" if "norm" in name else "other"


def update_density(base: dict[str, torch.Tensor], tuned: dict[str, torch.Tensor], tau: float = DEFAULT_TAU) -> dict:
    """Fraction of entries with |theta_tuned - theta_base| > tau: overall and per module type. Tensors must
    be paired by name and share a dtype (a bf16 vs fp32 comparison would count rounding as updates)."""
    changed, total = {}, {}
    for name, w0 in base.items():
        if name not in tuned:
            raise KeyError(f"{name} is in the base model but not in the tuned one (map the names first)")
        w1 = tuned[name]
        if w0.dtype != w1.dtype:
            raise TypeError(f"{name}: dtypes differ ({w0.dtype} vs {w1.dtype}); load both in the same dtype")
        if w0.shape != w1.shape:
            raise ValueError(f"{name}: shapes differ ({tuple(w0.shape)} vs {tuple(w1.shape)})")
        kind = module_type(name)
        changed[kind] = changed.get(kind, 0) + int(((w1 - w0).abs() > tau).sum())
        total[kind] = total.get(kind, 0) + w0.numel()
    result = {kind: changed[kind] / total[kind] for kind in total}
    result["total"] = sum(changed.values()) / sum(total.values())
    return result


def intruder_dimensions(w_base: torch.Tensor, w_tuned: torch.Tensor, k: int = 10,
                        epsilon: float = DEFAULT_EPSILON) -> int:
    """Among the top-k left singular vectors of W_tuned, how many have max |cos| < epsilon with every left
    singular vector of W_base (Shuttleworth et al. 2024)."""
    u0 = torch.linalg.svd(w_base.to(torch.float64), full_matrices=False).U
    u1 = torch.linalg.svd(w_tuned.to(torch.float64), full_matrices=False).U[:, :k]
    best = (u1.T @ u0).abs().max(dim=1).values
    return int((best < epsilon).sum())
