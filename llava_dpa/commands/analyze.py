"""`llava-dpa analyze {mir,cka,updates,cost}`: argument parsing only; each tool lives in its module."""
from __future__ import annotations

import json

from llava_dpa.analysis import cka_maps, mir_probe, update_report
from llava_dpa.analysis.cost import sizes
from llava_dpa.analysis.flops import training_flops
from llava_dpa.analysis.plots import pyplot
from llava_dpa.analysis.update_report import DEFAULTS


def _probe_args(p) -> None:
    p.add_argument("checkpoint", nargs="+", help="checkpoint folder(s): DPA, baseline or perceiver VLM")
    p.add_argument("--images", required=True, help="an image folder, or a LLaVA json/jsonl data file")
    p.add_argument("--image-folder", default=None, help="where a LLaVA data file's images are")
    p.add_argument("--texts", default=None, help="a text file, one probe text per line (default: image only)")
    p.add_argument("--num-probes", type=int, default=None, help="a seeded random subset of this many probes")
    p.add_argument("--component", action="append", choices=["target", "perceiver"], default=None,
                   help="per checkpoint: its target LLM (default) or the perceiver's LM in its own text space")
    p.add_argument("--model-base", default=None, help="the base LLM, for LoRA or projector-only checkpoints")
    p.add_argument("--device", default="cpu")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help="output folder")


def _mir(args):
    pyplot()  # the figure needs matplotlib (the analysis extra): asked before the models load, not after
    return mir_probe.run(args)


def _cka(args):
    pyplot()  # as for mir
    return cka_maps.run(args)


def _updates(args):
    return update_report.run(args)


def _cost(args):
    s = sizes(args.target, perceiver_lm=args.perceiver_lm)
    f = training_flops(args.target, args.perceiver_lm, image_size=args.image_size, tiles=args.tiles,
                       text_tokens=args.text_tokens)
    if args.format == "json":
        print(json.dumps({"parameters": s, "flops_per_sample": f}, indent=1))
        return 0
    print(f"parameters: baseline {s['baseline'] / 1e9:.2f}B, DPA {s['dpa'] / 1e9:.2f}B "
          f"(ratio {s['dpa'] / s['baseline']:.3f}); perceiver {s['perceiver'] / 1e9:.2f}B")
    print(f"training FLOPs per sample ({f['tokens']['visual']} visual + {f['tokens']['text']} text tokens), TFLOPs:")
    print(f"{'component':22s}{'DPA fwd':>10s}{'DPA st1':>10s}{'DPA st2':>10s}{'base fwd':>10s}{'base st1':>10s}"
          f"{'base st2':>10s}")
    names = [n for n in dict.fromkeys(list(f["dpa"]["forward"]) + list(f["baseline"]["forward"])) if n != "total"]
    names.append("total")
    for name in names:
        cells = [f[m][k].get(name) for m in ("dpa", "baseline") for k in ("forward", "stage1", "stage2")]
        print(f"{name:22s}" + "".join(f"{c / 1e12:10.3f}" if c is not None else f"{'-':>10s}" for c in cells))
    r = f["ratio_dpa_over_baseline"]
    print(f"DPA / baseline: forward {r['forward']:.3f}, stage 1 {r['stage1']:.3f}, stage 2 {r['stage2']:.3f}")
    return 0


def register(sub) -> None:
    analyze = sub.add_parser("analyze", help="the paper's analyses: MIR, layer similarity, weight updates, cost")
    tools = analyze.add_subparsers(dest="tool", required=True)

    p = tools.add_parser("mir", help="MIR per layer (Figures 3, 5, 6): CSV, JSON and a PNG overlay")
    _probe_args(p)
    p.add_argument("--median-sample", type=int, default=4096,
                   help="tokens kept per layer and modality for the outlier median (exact below this count)")
    p.set_defaults(func=_mir)

    p = tools.add_parser("cka", help="layer x layer similarity heatmaps per modality (Figure 4): JSON and PNG grid")
    _probe_args(p)
    p.add_argument("--metric", choices=["cka", "cosine", "frechet"], default="cka")
    p.add_argument("--debiased", choices=["auto", "yes", "no"], default="auto",
                   help="debiased CKA; auto: when the token sample is under 10x the width")
    p.add_argument("--max-tokens", type=int, default=2048, help="tokens sampled per modality")
    p.set_defaults(func=_cka)


    p = tools.add_parser("updates", help="update density and intrusion dimension vs the base LLM (Table 10)")
    p.add_argument("--base", required=True, help="the base LLM folder")
    p.add_argument("--tuned", action="append", required=True, help="a trained checkpoint (repeatable)")
    p.add_argument("--model-base", default=None, help="base for LoRA checkpoints (default: --base)")
    p.add_argument("--tau", default=DEFAULTS["tau"], help="comma-separated update thresholds (sweep)")
    p.add_argument("--epsilon", default=DEFAULTS["epsilon"], help="comma-separated cosine thresholds (sweep)")
    p.add_argument("--top-k", type=int, default=10)
    p.add_argument("--device", default="cpu", help="where the SVDs run")
    p.add_argument("--output", required=True)
    p.set_defaults(func=_updates)

    p = tools.add_parser("cost", help="sizes from configs and analytic training FLOPs per sample (Table 5)")
    p.add_argument("--target", default="qwen3-4b", help="qwen3-4b, qwen3-32b or llama-3.2-3b")
    p.add_argument("--perceiver-lm", default="qwen3-0.6b")
    p.add_argument("--image-size", type=int, default=448)
    p.add_argument("--tiles", type=int, default=1)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.set_defaults(func=_cost)
