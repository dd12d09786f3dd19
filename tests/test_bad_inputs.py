"""Bad data and bad flags fail with messages that name the sample or flag; training skips bad samples
unless --strict_data True, and the log counts them."""
import json
from types import SimpleNamespace

import pytest
from transformers import AutoTokenizer

import llava_dpa  # noqa: F401
from conftest import train_cmd
from llava import conversation as conversation_lib
from llava_dpa.data.dataset import DataSpec, LazySupervisedDataset, SampleError
from llava_dpa.llava_integration.tower_registry import build_vision_tower
from llava_dpa.training.train import train

GOOD = {"id": "good", "image": "img_000.png", "conversations": [
    {"from": "human", "value": "<image>\nWhat color is the shape?"}, {"from": "gpt", "value": "red"}]}


def make_dataset(zoo, tmp_path, records, strict=False, max_len=1024):
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    tok = AutoTokenizer.from_pretrained(zoo["qwen3_lm"], model_max_length=max_len)
    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=zoo["clip"], mm_vision_select_layer=-2))
    # the dataset holds its template; LLaVA's global default_conversation is left alone
    spec = DataSpec(conversation=conversation_lib.conv_templates["qwen_3"], image_folder=zoo["images"],
                    image_processor=tower.image_processor, image_aspect_ratio="square", strict=strict,
                    tokens_per_image=tower.num_patches)
    return LazySupervisedDataset(str(path), tok, spec)


def bad(**changes):
    sample = json.loads(json.dumps(GOOD))
    sample.update(changes)
    return sample


@pytest.mark.parametrize("sample,message", [
    (bad(id="missing", image="nope.png"), r"sample #0 \(id 'missing'\): image .*nope.png does not exist"),
    (bad(id="noplaceholder", conversations=[{"from": "human", "value": "What?"}, {"from": "gpt", "value": "x"}]),
     r"'noplaceholder'.*1 image\(s\) but 0 <image> placeholder"),
    (bad(id="noimage", image=None), r"'noimage'.*<image> placeholder\(s\) but the sample has no 'image'"),
    (bad(id="long", conversations=[{"from": "human", "value": "<image>\n" + "red " * 600}, {"from": "gpt", "value": "x"}]),
     r"'long'.*exceeds --model_max_length 256"),
])
def test_strict_mode_names_the_sample(zoo, tmp_path, sample, message):
    dataset = make_dataset(zoo, tmp_path, [sample], strict=True, max_len=256)
    with pytest.raises(SampleError, match=message):
        dataset[0]


def test_corrupt_image_is_named(zoo, tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    dataset = make_dataset(zoo, tmp_path, [bad(id="corrupt", image=str(tmp_path / "broken.png"))], strict=True)
    with pytest.raises(SampleError, match=r"'corrupt'.*broken.png cannot be read"):
        dataset[0]


def test_default_mode_skips_and_counts(zoo, tmp_path):
    dataset = make_dataset(zoo, tmp_path, [bad(id="missing", image="nope.png"), GOOD])
    item = dataset[0]  # falls through to the next valid sample
    assert item["input_ids"].numel() > 0 and dataset.skipped == 1


def test_training_logs_skipped_samples_and_strict_flag_stops(zoo, tmp_path):
    records = json.loads(open(zoo["stage2_data"]).read())[:8]
    records[2] = bad(id="missing", image="nope.png")
    data = tmp_path / "mixed.json"
    data.write_text(json.dumps(records))
    out = tmp_path / "run"
    train(argv=train_cmd(zoo, out, stage=2, extra=["--data_path", str(data), "--max_steps", "2",
                                                   "--per_device_train_batch_size", "4"])[3:])
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert max(h.get("skipped_samples", 0) for h in history) >= 1
    with pytest.raises(SampleError, match="id 'missing'"):
        train(argv=train_cmd(zoo, tmp_path / "strict", stage=2, extra=["--data_path", str(data), "--max_steps", "2",
                                                                        "--strict_data", "True"])[3:])


def test_unknown_version_and_unknown_tower_flags(zoo, tmp_path):
    with pytest.raises(ValueError, match="unknown --version 'qwen9'"):
        train(argv=train_cmd(zoo, tmp_path / "v", stage=2, version="qwen9")[3:])
    with pytest.raises(ValueError, match="no_such_vit.*does not exist|does not exist.*no_such_vit"):
        train(argv=train_cmd(zoo, tmp_path / "t", stage=1, tower=str(tmp_path / "no_such_vit"))[3:])


def test_anyres_grid_must_match_the_tower(zoo, tmp_path):
    with pytest.raises(ValueError, match="not multiples of.*image size 32|image size 32.*not multiples of"):
        train(argv=train_cmd(zoo, tmp_path / "g", stage=1, extra=["--image_aspect_ratio", "anyres",
                                                                  "--image_grid_pinpoints", "[(48, 96)]"])[3:])
