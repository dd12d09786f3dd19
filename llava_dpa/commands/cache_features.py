"""`llava-dpa cache-features`: its arguments; the work is `llava_dpa.data.feature_cache`'s."""
from __future__ import annotations

from llava_dpa.data.anyres import parse_pinpoints
from llava_dpa.data.dataset import DataSpec, load_records
from llava_dpa.data.feature_cache import build_cache
from llava_dpa.llava_integration.tower_registry import build_tower
from llava_dpa.towers.options import TowerOptions


def register(sub) -> None:
    p = sub.add_parser("cache-features", help="precompute a frozen tower's or perceiver's features for stage 1")
    p.add_argument("--vision_tower", required=True, help="the tower or perceiver, as training's --vision_tower")
    p.add_argument("--data_path", required=True)
    p.add_argument("--image_folder", default=None)
    p.add_argument("--image_aspect_ratio", default="square")
    p.add_argument("--image_grid_pinpoints", default=None)
    p.add_argument("--mm_vision_select_layer", type=int, default=-2)
    p.add_argument("--mm_vision_select_feature", default="patch")
    p.add_argument("--mm_projector_type", default="mlp2x_gelu",
                   help="as training's (qwen_merger makes a Qwen2.5-VL tower stop before its merger MLP)")
    p.add_argument("--output", required=True)
    p.add_argument("--shard-size", type=int, default=256, help="images per safetensors shard")
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=_cli)


def _cli(a) -> int:
    options = TowerOptions(vision_tower=a.vision_tower, mm_vision_select_layer=a.mm_vision_select_layer,
                           mm_vision_select_feature=a.mm_vision_select_feature,
                           image_aspect_ratio=a.image_aspect_ratio, mm_projector_type=a.mm_projector_type)
    tower = build_tower(options)
    tower.to(a.device)
    spec = DataSpec(conversation=None, image_folder=a.image_folder, image_aspect_ratio=a.image_aspect_ratio,
                    image_grid_pinpoints=parse_pinpoints(a.image_grid_pinpoints), image_processor=tower.image_processor)
    build_cache(tower, spec, load_records(a.data_path), a.output, a.shard_size)
    return 0
