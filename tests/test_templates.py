"""qwen_3 / llama_3 templates equal the tokenizers' chat templates, and labels cover exactly the replies."""
import pytest
import torch
from transformers import AutoTokenizer

import llava_dpa  # noqa: F401
from llava.conversation import conv_templates
from llava.mm_utils import tokenizer_image_token
from llava_dpa.data.preprocess import preprocess_chat
from llava_dpa.data.tokenization import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava_dpa.templates import infer_conv_mode, resolve_conv_mode
from llava_dpa.training.model_setup import ensure_pad_token

pytestmark = pytest.mark.fast  # pure logic: no training subprocess

CASES = [("qwen_3", "qwen3_lm", {"enable_thinking": False}, "<|im_end|>"), ("llama_3", "llama_lm", {}, "<|eot_id|>")]
DIALOG = [("user", "What is 2 plus 3?"), ("assistant", "five"), ("user", "What shape is it?"), ("assistant", "a square")]


def messages(turns):
    return [{"role": r, "content": c} for r, c in turns]


def conversation(version, turns, generation=False):
    conv = conv_templates[version].copy()
    for role, content in turns:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], content)
    if generation:
        conv.append_message(conv.roles[1], None)
    return conv


@pytest.mark.parametrize("version,lm,kw,end", CASES)
def test_generation_prompt_equals_chat_template_token_for_token(zoo, version, lm, kw, end):
    tok = AutoTokenizer.from_pretrained(zoo[lm])
    history = DIALOG[:3]
    prompt = conversation(version, history, generation=True).get_prompt()
    assert prompt == tok.apply_chat_template(messages(history), add_generation_prompt=True, tokenize=False, **kw)
    assert tokenizer_image_token(prompt, tok) == tok.apply_chat_template(
        messages(history), add_generation_prompt=True, tokenize=True, return_dict=False, **kw)


@pytest.mark.parametrize("version,lm,kw,end", CASES)
def test_training_labels_are_exactly_the_replies_and_end_tokens(zoo, version, lm, kw, end):
    tok = AutoTokenizer.from_pretrained(zoo[lm])
    source = [{"from": "human" if r == "user" else "gpt", "value": c} for r, c in DIALOG]
    out = preprocess_chat([source], tok, conv_templates[version])
    ids, labels = out["input_ids"][0], out["labels"][0]
    # the whole sequence is the chat template's own tokenization of the conversation
    # return_dict=False: transformers 5 returns a BatchEncoding otherwise
    assert ids.tolist() == tok.apply_chat_template(messages(DIALOG), tokenize=True, return_dict=False, **kw)
    kept = labels[labels != IGNORE_INDEX].tolist()
    expected = tok("five" + end, add_special_tokens=False).input_ids + tok("a square" + end, add_special_tokens=False).input_ids
    assert kept == expected
    # labels equal the ids wherever they are kept
    mask = labels != IGNORE_INDEX
    assert torch.equal(labels[mask], ids[mask])


@pytest.mark.parametrize("version,lm,kw,end", CASES)
def test_image_placeholders_become_image_tokens_and_are_never_labels(zoo, version, lm, kw, end):
    tok = AutoTokenizer.from_pretrained(zoo[lm])
    source = [{"from": "human", "value": "<image>\n<image>\nAre the two shapes the same color?"},
              {"from": "gpt", "value": "yes"}]
    out = preprocess_chat([source], tok, conv_templates[version])
    ids, labels = out["input_ids"][0], out["labels"][0]
    assert (ids == IMAGE_TOKEN_INDEX).sum() == 2
    assert (labels[ids == IMAGE_TOKEN_INDEX] == IGNORE_INDEX).all()
    assert tok.decode(labels[labels != IGNORE_INDEX]) == "yes" + end


def test_llama3_prompt_has_a_single_bos(zoo):
    tok = AutoTokenizer.from_pretrained(zoo["llama_lm"])
    prompt = conversation("llama_3", [("user", "<image>\nhi")], generation=True).get_prompt()
    ids = tokenizer_image_token(prompt, tok)
    assert ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id


def test_pad_token_is_set_for_tokenizers_without_unk(zoo):
    qwen = AutoTokenizer.from_pretrained(zoo["qwen3_lm"])
    llama = AutoTokenizer.from_pretrained(zoo["llama_lm"])
    assert qwen.unk_token is None and llama.unk_token is None and llama.pad_token is None
    ensure_pad_token(qwen)
    ensure_pad_token(llama)
    assert qwen.pad_token == "<|endoftext|>"
    assert llama.pad_token == "<|finetune_right_pad_id|>"
    assert llama.pad_token_id != llama.convert_tokens_to_ids("<|eot_id|>")


def test_conv_mode_comes_from_config_and_can_be_overridden():
    class Cfg:
        model_type = "llava_qwen3"

    keys = list(conv_templates)
    assert infer_conv_mode(Cfg(), keys) == "qwen_3"
    Cfg.model_type = "llava_llama"
    assert infer_conv_mode(Cfg(), keys) == "llama_3"
    Cfg.conv_version = "qwen_3"  # recorded at training time wins over the family
    assert infer_conv_mode(Cfg(), keys) == "qwen_3"
    assert resolve_conv_mode(Cfg(), "llava_v1", keys) == "llava_v1"
    with pytest.raises(ValueError, match="unknown --conv-mode"):
        resolve_conv_mode(Cfg(), "nope", keys)
