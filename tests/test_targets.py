"""Every supported target family trains and reloads; classes come from config.model_type."""
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

import llava_dpa  # noqa: F401
from conftest import train_cmd
from llava.model.builder import load_pretrained_model
from llava_dpa.language_models import TARGET_CLASSES, target_class_for
from llava_dpa.training.train import train
from transformers import AutoTokenizer


def tiny_lm(family, zoo, folder):
    tok = AutoTokenizer.from_pretrained(zoo["qwen3_lm"])
    common = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    model = Qwen2ForCausalLM(Qwen2Config(**common)) if family == "qwen2" else MistralForCausalLM(MistralConfig(**common))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_registry_and_auto_classes():
    for model_type, cls in TARGET_CLASSES.items():
        assert target_class_for(model_type) is cls and target_class_for(f"llava_{model_type}") is cls
        config = AutoConfig.for_model(f"llava_{model_type}", hidden_size=64, intermediate_size=128, num_hidden_layers=1,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=128)
        assert type(AutoModelForCausalLM.from_config(config)) is cls
    with pytest.raises(ValueError, match="unsupported language model type 'gpt2'"):
        target_class_for("gpt2")


@pytest.mark.parametrize("family", ["qwen2", "mistral"])
def test_qwen2_and_mistral_targets_train_and_reload(zoo, tmp_path, family):
    zoo = dict(zoo, extra_lm=tiny_lm(family, zoo, tmp_path / family))
    out = tmp_path / "ckpt"
    trainer = train(argv=train_cmd(zoo, out, stage=2, lm="extra_lm", version="qwen_3", extra=["--max_steps", "1"])[3:])
    assert type(trainer.model).__name__ == f"Llava{family.capitalize()}ForCausalLM"
    _, model, _, _ = load_pretrained_model(str(out), None, "no-family-in-this-name", device="cpu")
    assert type(model) is type(trainer.model) and model.config.model_type == f"llava_{family}"


def test_bf16_run_puts_the_tower_in_the_compute_dtype(zoo, tmp_path):
    trainer = train(argv=train_cmd(zoo, tmp_path / "bf16", stage=2, extra=["--max_steps", "1", "--bf16", "True"])[3:])
    assert trainer.model.dtype == torch.bfloat16 and trainer.model.get_vision_tower().dtype == torch.bfloat16


def test_llava_script_flags_are_translated_for_current_transformers(tmp_path):
    import transformers

    from llava_dpa.training.flags import TrainingArguments

    parser = transformers.HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(args=["--evaluation_strategy", "no", "--tf32", "True", "--bf16", "True",
                                                       "--output_dir", str(tmp_path)])
    assert args.eval_strategy == "no" and args.evaluation_strategy is None
    if torch.cuda.is_available():   # kept on a GPU; on a CPU machine dropped with a warning, and bf16 runs on the CPU
        assert args.tf32 is True and args.use_cpu is False
    else:
        assert args.tf32 is None and args.use_cpu is True
