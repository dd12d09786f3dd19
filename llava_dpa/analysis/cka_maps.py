"""Layer x layer similarity heatmaps per modality (paper Figure 4): `llava-dpa analyze cka`.

The same tokens are compared at every pair of layers: a seeded uniform sample of at most `max_tokens`
visual and `max_tokens` text tokens over all probes keeps each token's states at every layer (float32,
max_tokens x L x d per modality). Linear CKA by default, debiased when the sample is small next to the
width (N < 10 d, our threshold; `--debiased yes|no` overrides). Options: `cosine` (centred mean-token
cosine) and `frechet` (the MIR distance between layers, same scaling).
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from tqdm import tqdm

from llava_dpa.analysis.frechet import layer_fd
from llava_dpa.analysis.probes import TokenSample, layer_states, probes_from_args, views_from_args
from llava_dpa.analysis.similarity import layer_similarity

MODALITIES = ("visual", "text")


def sample_tokens(view, probes, max_tokens: int = 2048, seed: int = 0) -> dict[str, torch.Tensor]:
    """{modality: [N, L, d]} — the same N tokens' states at layers 1..L."""
    generator = torch.Generator().manual_seed(seed)
    kept = {m: TokenSample(max_tokens, generator) for m in MODALITIES}
    for probe in tqdm(probes, desc=f"CKA states {view.name}"):
        states, visual, text = layer_states(view, probe)
        stacked = torch.stack(states, dim=1).float()  # [T, L, d]
        for m, mask in (("visual", visual), ("text", text)):
            kept[m].add(stacked[mask])
    for m in MODALITIES:
        if len(kept[m].rows) < 4:
            raise ValueError(f"only {len(kept[m].rows)} {m} tokens over all probes; CKA needs at least 4 (add probes)")
    return {m: torch.stack(kept[m].rows) for m in MODALITIES}


def _cosine(states: list[torch.Tensor]) -> torch.Tensor:
    means = torch.stack([s.to(torch.float64).mean(0) for s in states])
    means = means - means.mean(0, keepdim=True)
    means = means / means.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return means @ means.T


def _frechet(states: list[torch.Tensor]) -> torch.Tensor:
    n = len(states)
    out = torch.zeros(n, n, dtype=torch.float64)
    for i in range(n):
        for j in range(i + 1, n):
            out[i, j] = out[j, i] = layer_fd(states[i], states[j])
    return out


def similarity_maps(tokens: dict[str, torch.Tensor], metric: str = "cka", debiased: str = "auto") -> dict:
    maps, used = {}, {}
    for m, x in tokens.items():
        states = [x[:, k] for k in range(x.shape[1])]
        if metric == "cka":
            n, d = x.shape[0], x.shape[2]
            flag = {"yes": True, "no": False}.get(debiased, n < 10 * d)
            used[m] = "debiased linear CKA" if flag else "linear CKA"
            maps[m] = layer_similarity(states, debiased=flag)
        elif metric == "cosine":
            used[m], maps[m] = "centred mean-token cosine", _cosine(states)
        elif metric == "frechet":
            used[m], maps[m] = "Fréchet distance", _frechet(states)
        else:
            raise ValueError(f"metric {metric!r}: choose cka, cosine or frechet")
    return {"maps": maps, "metric": used, "tokens": {m: x.shape[0] for m, x in tokens.items()}}


def plot_grid(results: list[tuple[str, dict]], path: str) -> None:
    """One row per checkpoint, one column per modality."""
    from llava_dpa.analysis.plots import pyplot, save  # lazy: matplotlib, an optional dependency (the eval extra)

    plt = pyplot()
    rows = len(results)
    fig, axes = plt.subplots(rows, 2, figsize=(8, 3.6 * rows), squeeze=False)
    for r, (name, result) in enumerate(results):
        for c, m in enumerate(MODALITIES):
            ax = axes[r][c]
            values = result["maps"][m].numpy()
            n = values.shape[0]
            bounds = {"vmin": 0.0, "vmax": 1.0} if "CKA" in result["metric"][m] or "cosine" in result["metric"][m] else {}
            image = ax.imshow(values, origin="lower", cmap="viridis", extent=(0.5, n + 0.5, 0.5, n + 0.5), **bounds)
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_title(f"{name}: {m} tokens\n{result['metric'][m]}", fontsize=9)
            ax.set_xlabel("layer")
            ax.set_ylabel("layer")
            fig.colorbar(image, ax=ax, fraction=0.046)
    save(fig, path)


def run(args) -> int:
    probes = probes_from_args(args)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    results, summary = [], {}
    for view in views_from_args(args):
        result = similarity_maps(sample_tokens(view, probes, args.max_tokens, args.seed), args.metric, args.debiased)
        results.append((view.name, result))
        stem = view.name.replace(":", "_")
        for m in MODALITIES:
            torch.save(result["maps"][m], out / f"{stem}_{m}.pt")
        summary[view.name] = {"metric": result["metric"], "tokens": result["tokens"],
                              "maps": {m: result["maps"][m].tolist() for m in MODALITIES}}
    (out / "similarity.json").write_text(json.dumps(summary, indent=1))
    plot_grid(results, str(out / "similarity.png"))
    print(f"wrote {out / 'similarity.json'}, {out / 'similarity.png'}")
    return 0
