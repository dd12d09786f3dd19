"""A tower's selected layer stays that layer after the whole model is asked for its hidden states (MIR, CKA).

transformers 5.x records hidden states with hooks it installs on first request; asked from the outer model after
a nested tower had installed its own, it installs them on the tower again and the tower then records each layer
twice (`hidden_states[-2]` becomes another layer, silently). The loader and training install them once from the
top (`language_models.base.hook_hidden_states_from_the_top`). Reference: a fresh Hugging Face vision model built
from the tower's folder. On 4.57 (no hooks) the same assertions hold trivially."""
import torch
from PIL import Image
from transformers import CLIPVisionModel

from llava_dpa.loading import load_pretrained_model
from llava_dpa.towers.base import clear_feature_memos


def test_the_towers_layer_survives_a_hidden_states_request_to_the_whole_model(baseline_stage2, zoo):
    from llava.mm_utils import process_images

    tokenizer, model, processor, _ = load_pretrained_model(str(baseline_stage2), None, None, device="cpu",
                                                           dtype=torch.float32)
    tower = model.get_vision_tower()
    image = Image.open(f"{zoo['images']}/img_001.png").convert("RGB")
    pixels = process_images([image], processor, model.config)
    reference = CLIPVisionModel.from_pretrained(zoo["clip"]).eval()
    with torch.no_grad():
        expected = reference(pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
        before = tower(pixels)                      # the tower asks its ViT for hidden states first
        ids = tokenizer("a b c", return_tensors="pt").input_ids
        out = model(input_ids=ids, output_hidden_states=True)   # then the whole model
        assert len(out.hidden_states) == model.config.num_hidden_layers + 1
        clear_feature_memos(model)
        after = tower(pixels)
        layers = tower.vision_tower(pixels, output_hidden_states=True).hidden_states
    assert len(layers) == reference.config.num_hidden_layers + 1
    torch.testing.assert_close(before, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(after, expected, rtol=0, atol=1e-5)
