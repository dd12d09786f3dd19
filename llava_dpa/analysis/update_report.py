"""Update density and intrusion dimension of trained target LLMs against their base LLM (paper Table 10):
`llava-dpa analyze updates --base <LLM> --tuned <checkpoint> [--tuned ...]`.

- Only the target LLM is compared: the VLM's parameters are renamed to the base LLM's (text_path) and the
  projector and tower are left out; tied embeddings are counted once (lm_head is skipped when tied).
- Full checkpoints and plain models are read tensor by tensor from their safetensors files, in their stored
  dtype; a pair whose dtypes differ is refused (rounding would count as updates). LoRA / QLoRA / projector-only
  checkpoints are loaded and merged first (load_pretrained_model), in the base's stored dtype.
- Update density per module type and in total, for every --tau; intrusion dimension (top-k left singular
  vectors of each attention / MLP matrix) per module type, in total and per matrix, for every --epsilon. All
  tuned checkpoints are compared in one pass, so each base SVD is computed once.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

import torch
from tqdm import tqdm

from llava_dpa.analysis.weight_updates import DEFAULT_EPSILON, DEFAULT_TAU, module_type
from llava_dpa.loading import load_pretrained_model
from llava_dpa.text_path import is_multimodal_key, language_state_dict

MATRIX_TYPES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


class WeightReader:
    """name -> tensor of a model folder's language-model weights, under the base LLM's names."""

    def __init__(self, folder: str, model_base: str | None = None, dtype: torch.dtype | None = None):
        self.folder = Path(folder)
        config_path = self.folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder}: no config.json; is this a model folder?")
        self.config = json.loads(config_path.read_text())
        self.files = sorted(self.folder.glob("*.safetensors"))
        self.tied = bool(self.config.get("tie_word_embeddings", False))
        self._merged = None
        needs_loader = (self.folder / "adapter_config.json").is_file() or not self.files
        if needs_loader:
            self._merged = self._load_merged(model_base, dtype)
            self.index = {k: None for k in self._merged}
        else:
            from safetensors import safe_open

            self.index = {}
            for f in self.files:
                with safe_open(str(f), "pt") as handle:
                    for key in handle.keys():
                        if not is_multimodal_key(key):
                            self.index[key] = f
        if self.tied:
            self.index.pop("lm_head.weight", None)

    def _load_merged(self, model_base, dtype):
        if model_base is None:
            raise ValueError(f"{self.folder} is a LoRA or projector-only checkpoint: pass --model-base (its base LLM)")
        _, model, _, _ = load_pretrained_model(str(self.folder), model_base, None, device="cpu", dtype=dtype)
        return {k: v.detach() for k, v in language_state_dict(model).items()}

    def names(self) -> list[str]:
        return list(self.index)

    def get(self, name: str) -> torch.Tensor:
        if self._merged is not None:
            return self._merged[name]
        from safetensors import safe_open

        with safe_open(str(self.index[name]), "pt") as handle:
            return handle.get_tensor(name)

    def dtype(self) -> torch.dtype:
        return self.get(next(iter(self.index))).dtype


def compare(base: WeightReader, tuned: list[WeightReader], taus: list[float], epsilons: list[float], top_k: int,
            device: str = "cpu") -> list[dict]:
    """One pass over the base's parameters for every tuned model: each base matrix's SVD is computed once,
    used for every tuned model and epsilon, then dropped (holding all of a 32B model's would not fit)."""
    for reader in tuned:
        missing = [n for n in base.names() if n not in reader.index]
        if missing:
            raise KeyError(f"{len(missing)} base parameter(s) have no counterpart in {reader.folder}, e.g. "
                           f"{missing[:3]}; is it a checkpoint of this base LLM?")
    totals: dict[str, int] = {}
    changed = [{tau: {} for tau in taus} for _ in tuned]
    intruders = [{eps: {} for eps in epsilons} for _ in tuned]
    per_matrix = [[] for _ in tuned]
    for name in tqdm(base.names(), desc="weights"):
        w0 = base.get(name)
        kind = module_type(name)
        totals[kind] = totals.get(kind, 0) + w0.numel()
        is_matrix = kind in MATRIX_TYPES and w0.ndim == 2
        u0 = torch.linalg.svd(w0.to(device, torch.float64), full_matrices=False).U if is_matrix else None
        for i, reader in enumerate(tuned):
            w1 = reader.get(name)
            if w0.dtype != w1.dtype:
                raise TypeError(f"{name}: dtypes differ ({w0.dtype} in {base.folder} vs {w1.dtype} in "
                                f"{reader.folder}); compare checkpoints saved in the same dtype")
            if w0.shape != w1.shape:
                raise ValueError(f"{name}: shapes differ ({tuple(w0.shape)} vs {tuple(w1.shape)})")
            # float32 holds the difference of two bf16/fp16 values exactly
            delta = (w1.to(device, torch.float32) - w0.to(device, torch.float32)).abs()
            for tau in taus:
                changed[i][tau][kind] = changed[i][tau].get(kind, 0) + int((delta > tau).sum())
            if is_matrix:
                u1 = torch.linalg.svd(w1.to(device, torch.float64), full_matrices=False).U[:, :top_k]
                best = (u1.T @ u0).abs().max(dim=1).values
                row = {"parameter": name, "module": kind}
                for eps in epsilons:
                    count = int((best < eps).sum())
                    intruders[i][eps][kind] = intruders[i][eps].get(kind, 0) + count
                    row[f"eps={eps:g}"] = count
                per_matrix[i].append(row)
    results = []
    for i, reader in enumerate(tuned):
        density = {}
        for tau in taus:
            row = {kind: changed[i][tau].get(kind, 0) / totals[kind] for kind in totals}
            row["total"] = sum(changed[i][tau].values()) / sum(totals.values())
            density[f"{tau:g}"] = row
        intrusion = {}
        for eps in epsilons:
            row = {kind: intruders[i][eps].get(kind, 0) for kind in MATRIX_TYPES if kind in totals}
            row["total"] = sum(row.values())
            intrusion[f"{eps:g}"] = row
        results.append({"model": reader.folder.name, "density": density, "intrusion": intrusion,
                        "per_matrix": per_matrix[i], "parameters": sum(totals.values()), "top_k": top_k})
    return results


def _floats(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"{text!r}: give comma-separated numbers, e.g. 1e-5,1e-4") from None


def run(args) -> int:
    taus, epsilons = _floats(args.tau), _floats(args.epsilon)
    base = WeightReader(args.base)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tuned = [WeightReader(folder, args.model_base or args.base, dtype=base.dtype()) for folder in args.tuned]
    results = compare(base, tuned, taus, epsilons, args.top_k, args.device)
    (out / "updates.json").write_text(json.dumps(results, indent=1))
    with open(out / "updates.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "metric", "threshold", "module", "value"])
        for r in results:
            for tau, row in r["density"].items():
                writer.writerows([r["model"], "update_density", tau, k, f"{v:.6f}"] for k, v in row.items())
            for eps, row in r["intrusion"].items():
                writer.writerows([r["model"], "intrusion_dimension", eps, k, v] for k, v in row.items())
    with open(out / "intrusion_per_matrix.csv", "w", newline="") as f:
        rows = [dict(model=r["model"], **m) for r in results for m in r["per_matrix"]]
        if rows:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    tau0, eps0 = f"{taus[0]:g}", f"{epsilons[0]:g}"
    print(f"| Model | Update density (tau={tau0}) | Intrusion dimension (eps={eps0}, top-{args.top_k}) |")
    print("|---|---|---|")
    for r in results:
        print(f"| {r['model']} | {r['density'][tau0]['total']:.3f} | {r['intrusion'][eps0]['total']} |")
    print(f"wrote {out / 'updates.json'}, {out / 'updates.csv'}, {out / 'intrusion_per_matrix.csv'}")
    return 0


DEFAULTS = {"tau": f"{DEFAULT_TAU:g}", "epsilon": f"{DEFAULT_EPSILON:g}"}
