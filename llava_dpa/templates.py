"""Chat templates `qwen_3` and `llama_3` for LLaVA's conversation registry.

They render exactly what the tokenizers' own chat templates render (Qwen3 with enable_thinking=False;
Llama 3.1/3.2 with its knowledge-date system header), so a VLM is trained and served in the format its
language model was instruction-tuned on. The same renderer returns the character spans of the
assistant replies, which the data pipeline turns into labels.

This module must not import llava at import time: llava.conversation itself imports it (see
patches/06-chat-templates.patch), so the llava classes are passed in.
"""
from __future__ import annotations

import dataclasses
from typing import Iterable

QWEN3_THINK_EMPTY = "<think>\n\n</think>\n\n"
LLAMA3_DEFAULT_DATE = "26 Jul 2024"
LLAMA3_SYSTEM_HEADER = "Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n"

# Versions whose data preprocessing is done by llava_dpa.data.preprocess.
CHAT_TEMPLATE_VERSIONS = ("qwen_3", "llama_3")


def _text(message) -> str:
    # llava's gradio path stores (text, image, mode) tuples.
    return message[0] if isinstance(message, tuple) else message


class _Rendering:
    """Accumulates rendered text and the character spans that are assistant targets."""

    def __init__(self):
        self.parts: list[str] = []
        self.spans: list[tuple[int, int]] = []
        self.pos = 0

    def emit(self, text: str, target: bool = False) -> None:
        if target:
            self.spans.append((self.pos, self.pos + len(text)))
        self.parts.append(text)
        self.pos += len(text)

    def result(self) -> tuple[str, list[tuple[int, int]]]:
        return "".join(self.parts), self.spans


def render_qwen3(system: str, turns: list[tuple[str, str | None]]) -> tuple[str, list[tuple[int, int]]]:
    """Render like Qwen3's chat template with enable_thinking=False.

    turns: (role, content) with role 'user' or 'assistant'; a trailing assistant None is the generation
    prompt. Returns the text and the [start, end) spans that are assistant targets (reply + <|im_end|>).
    """
    out = _Rendering()
    if system:
        out.emit(f"<|im_start|>system\n{system}<|im_end|>\n")
    last_user = max((i for i, (r, _) in enumerate(turns) if r == "user"), default=-1)
    for i, (role, content) in enumerate(turns):
        if role == "assistant" and content is None:
            out.emit("<|im_start|>assistant\n" + QWEN3_THINK_EMPTY)
        elif role == "assistant":
            # The template writes an (empty) think block only for replies after the last user turn.
            after_query = i > last_user
            out.emit("<|im_start|>assistant\n" + (QWEN3_THINK_EMPTY if after_query else ""))
            out.emit((content.lstrip("\n") if after_query else content) + "<|im_end|>", target=True)
            out.emit("\n")
        else:
            out.emit(f"<|im_start|>{role}\n{content}<|im_end|>\n")
    return out.result()


def render_llama3(system: str, turns: list[tuple[str, str | None]], date: str = LLAMA3_DEFAULT_DATE,
                  bos: str = "<|begin_of_text|>") -> tuple[str, list[tuple[int, int]]]:
    """Render like the Llama 3.1/3.2 instruct chat template (no tools), with a fixed date string."""
    out = _Rendering()
    out.emit(bos + "<|start_header_id|>system<|end_header_id|>\n\n" + LLAMA3_SYSTEM_HEADER.format(date=date)
             + system.strip() + "<|eot_id|>")
    for role, content in turns:
        out.emit(f"<|start_header_id|>{role}<|end_header_id|>\n\n")
        if content is not None:
            out.emit(content.strip() + "<|eot_id|>", target=role == "assistant")
    return out.result()


RENDERERS = {"qwen_3": render_qwen3, "llama_3": render_llama3}


def render(version: str, system: str, turns: list[tuple[str, str | None]]):
    try:
        return RENDERERS[version](system, turns)
    except KeyError:
        raise ValueError(f"no chat renderer for conversation version {version!r}; "
                         f"known: {sorted(RENDERERS)}") from None


def make_conversation_class(Conversation):
    """A llava Conversation whose prompt comes from `render`; `copy()` keeps the subclass."""

    @dataclasses.dataclass
    class ChatTemplateConversation(Conversation):
        def get_prompt(self):
            turns = [("user" if role == self.roles[0] else "assistant", None if msg is None else _text(msg))
                     for role, msg in self.messages[self.offset:]]
            return render(self.version, self.system, turns)[0]

        def copy(self):
            return dataclasses.replace(self, messages=[[r, m] for r, m in self.messages])

    ChatTemplateConversation.__name__ = ChatTemplateConversation.__qualname__ = "ChatTemplateConversation"
    return ChatTemplateConversation


def add_chat_templates(conv_templates: dict, Conversation, SeparatorStyle) -> None:
    """Register `qwen_3` and `llama_3` in llava.conversation.conv_templates."""
    cls = make_conversation_class(Conversation)
    # sep_style MPT makes llava's CLI stop on `sep`, which is the end-of-turn token.
    conv_templates["qwen_3"] = cls(system="", roles=("user", "assistant"), messages=[], offset=0,
                                   sep_style=SeparatorStyle.MPT, sep="<|im_end|>", version="qwen_3")
    conv_templates["llama_3"] = cls(system="", roles=("user", "assistant"), messages=[], offset=0,
                                    sep_style=SeparatorStyle.MPT, sep="<|eot_id|>", version="llama_3")


# ---- which template a checkpoint uses ---------------------------------------------------------------

# Language-model families and the template their instruct checkpoints use.
_FAMILY_TEMPLATE = {"qwen3": "qwen_3", "llama": "llama_3", "qwen2": "chatml_direct", "mistral": "mistral_instruct"}


def infer_conv_mode(config, available: Iterable[str]) -> str:
    """The conversation template recorded in a checkpoint's config (set at training time), else the
    one its language-model family uses. Never derived from the folder name."""
    available = set(available)
    recorded = getattr(config, "conv_version", None)
    if recorded and recorded != "plain" and recorded in available:
        return recorded
    model_type = getattr(config, "model_type", "")
    family = model_type[len("llava_"):] if model_type.startswith("llava_") else model_type
    guess = _FAMILY_TEMPLATE.get(family)
    if guess in available:
        return guess
    return "llava_v1"


def resolve_conv_mode(config, requested: str | None, available: Iterable[str]) -> str:
    available = list(available)
    inferred = infer_conv_mode(config, available)
    if requested is None:
        return inferred
    if requested not in available:
        raise ValueError(f"unknown --conv-mode {requested!r}; choose one of {sorted(available)}")
    if requested != inferred:
        print(f"[llava-dpa] the checkpoint's template is {inferred!r}; using --conv-mode {requested!r} as asked")
    return requested
