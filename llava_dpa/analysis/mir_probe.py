"""MIR per layer of a checkpoint over probe images and texts (paper Figures 3, 5, 6): `llava-dpa analyze mir`.

Streaming in two passes over the probes, in float64, so no hidden state is kept:
1. per layer and modality, every token's norm (one scalar each), the text norms' mean (the text-centric
   scale s_k = 1 / mean ||t||), and a seeded uniform sample of tokens (`median_sample`) for the
   coordinate-wise median vector that replaces outliers;
2. per layer and modality, running sums and outer products of the scaled tokens, outliers (norm more
   than 3 sigma from the median norm) replaced by that median vector.
Then the exact Fréchet distance per layer (frechet.frechet_distance) and MIR = log10(sum FD).
Our choice where the paper is silent: the median vector is exact whenever a layer has at most
`median_sample` tokens of a modality, otherwise it is the median of that seeded sample (stated in the
output). Layer L is the model's last hidden state, which HF returns after the final norm.
"""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import torch
from tqdm import tqdm

from llava_dpa.analysis.frechet import RunningMoments, frechet_distance
from llava_dpa.analysis.probes import TokenSample, layer_states, probes_from_args, views_from_args

MODALITIES = ("visual", "text")


def _states(view, probes, desc):
    for probe in tqdm(probes, desc=desc):
        yield layer_states(view, probe)


def mir_per_layer(view, probes, median_sample: int = 4096, seed: int = 0) -> dict:
    """{'fd': [FD_1..FD_L], 'mir': log10(sum), 'tokens': {...}, 'median_exact': bool, ...} for one model."""
    generator = torch.Generator().manual_seed(seed)
    norms, reservoirs = None, None
    for states, visual, text in _states(view, probes, f"MIR pass 1/2 {view.name}"):
        if norms is None:
            norms = [{m: [] for m in MODALITIES} for _ in states]
            reservoirs = [{m: TokenSample(median_sample, generator) for m in MODALITIES} for _ in states]
        for k, h in enumerate(states):
            for m, mask in (("visual", visual), ("text", text)):
                tokens = h[mask].to(torch.float64)
                norms[k][m].append(tokens.norm(dim=-1))
                reservoirs[k][m].add(tokens)
    if norms is None:
        raise ValueError("no probes given")
    layers = []
    for k in range(len(norms)):
        entry = {}
        for m in MODALITIES:
            n = torch.cat(norms[k][m])
            if n.numel() < 2:
                raise ValueError(f"only {n.numel()} {m} token(s) over all probes; add probes or longer texts")
            vector = torch.stack(reservoirs[k][m].rows).median(dim=0).values
            entry[m] = {"median": n.median(), "std": n.std(unbiased=True), "vector": vector}
        entry["scale"] = 1.0 / torch.cat(norms[k]["text"]).mean().item()
        layers.append(entry)

    moments = [{m: RunningMoments(view.model.config.hidden_size) for m in MODALITIES} for _ in layers]
    outliers = [{m: 0 for m in MODALITIES} for _ in layers]
    for states, visual, text in _states(view, probes, f"MIR pass 2/2 {view.name}"):
        for k, h in enumerate(states):
            for m, mask in (("visual", visual), ("text", text)):
                tokens = h[mask].to(torch.float64)
                stat = layers[k][m]
                far = (tokens.norm(dim=-1) - stat["median"]).abs() > 3 * stat["std"]
                if far.any():
                    tokens = tokens.clone()
                    tokens[far] = stat["vector"]
                    outliers[k][m] += int(far.sum())
                moments[k][m].update(tokens * layers[k]["scale"])
    fd = []
    for k, layer_moments in enumerate(moments):
        (mu_v, cov_v), (mu_t, cov_t) = (layer_moments[m].mean_cov(f"{m} tokens at layer {k + 1}") for m in MODALITIES)
        fd.append(frechet_distance(mu_v, cov_v, mu_t, cov_t))
    return {"model": view.name, "fd": fd, "mir": math.log10(sum(fd)) if sum(fd) > 0 else float("-inf"),
            "tokens": {m: moments[0][m].n for m in MODALITIES},
            "outliers_replaced": outliers,
            "median_exact": all(r[m].exact for r in reservoirs for m in MODALITIES),
            "probes": len(probes)}


def write_csv(results: list[dict], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["model", "layer", "fd", "mir"])
        for r in results:
            for k, value in enumerate(r["fd"], 1):
                writer.writerow([r["model"], k, f"{value:.10g}", f"{r['mir']:.6f}"])


def plot_curves(results: list[dict], path: str, title: str = "Modality gap per layer") -> None:
    """Figure 5 style: FD_k against the relative layer depth, one curve per checkpoint (depths differ)."""
    from llava_dpa.analysis.plots import pyplot, save  # lazy: matplotlib, an optional dependency (the eval extra)

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in results:
        n = len(r["fd"])
        ax.plot([(k + 1) / n for k in range(n)], r["fd"], marker="o", markersize=3,
                label=f"{r['model']} (MIR {r['mir']:.3f})")
    ax.set_xlabel("relative layer depth")
    ax.set_ylabel("Fréchet distance (visual vs text)")
    ax.set_yscale("log")
    ax.set_title(title)
    ax.legend(fontsize=8)
    save(fig, path)


def run(args) -> int:
    probes = probes_from_args(args)
    results = [mir_per_layer(view, probes, args.median_sample, args.seed) for view in views_from_args(args)]
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    write_csv(results, str(out / "mir.csv"))
    (out / "mir.json").write_text(json.dumps(results, indent=1, default=float))
    plot_curves(results, str(out / "mir.png"))
    for r in results:
        note = "" if r["median_exact"] else " (outlier median from a seeded token sample)"
        print(f"{r['model']}: MIR {r['mir']:.4f} over {r['probes']} probes, {r['tokens']['visual']} visual / "
              f"{r['tokens']['text']} text tokens{note}")
    print(f"wrote {out / 'mir.csv'}, {out / 'mir.json'}, {out / 'mir.png'}")
    return 0
