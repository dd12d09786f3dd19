"""Conversations -> input_ids and labels, for the template the caller passes.

`preprocess` is what the dataset calls, with the dataset's own template (LLaVA's global
`default_conversation` is never read). The chat templates (`--version qwen_3`, `llama_3`) are rendered
here; LLaVA's own templates go to LLaVA's functions, which take the template as an argument
(patches/02-train-delegate.patch). llava.train.train.preprocess delegates here too
(patches/02-train-delegate.patch). Labels cover exactly the assistant replies and their end-of-turn tokens.
"""
from __future__ import annotations

from llava_dpa.data.tokenization import encode_with_targets
from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS, render

ROLE = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant"}


class ConversationError(ValueError):
    pass


def to_turns(source: list[dict]) -> list[tuple[str, str]]:
    turns = []
    for message in source:
        role = ROLE.get(message.get("from"))
        if role is None:
            raise ConversationError(f"unknown speaker {message.get('from')!r}; use human/gpt (or user/assistant)")
        turns.append((role, message["value"]))
    if turns and turns[0][0] != "user":
        turns = turns[1:]  # LLaVA's data sometimes starts with a gpt turn; llava skips it too
    for i, (role, _) in enumerate(turns):
        if role != ("user" if i % 2 == 0 else "assistant"):
            raise ConversationError("turns must alternate human, gpt, human, gpt, ...")
    if not turns or turns[-1][0] != "assistant":
        raise ConversationError("a training conversation must end with a gpt reply")
    return turns


def preprocess_chat(sources, tokenizer, conversation) -> dict:
    input_ids, labels = [], []
    for source in sources:
        text, spans = render(conversation.version, conversation.system, to_turns(source))
        ids, targets = encode_with_targets(text, spans, tokenizer)
        input_ids.append(ids)
        labels.append(targets)
    return dict(input_ids=input_ids, labels=labels)


def preprocess(sources, tokenizer, conversation, has_image: bool = False) -> dict:
    from llava import conversation as conversation_lib
    from llava.train import train as llava_train


    if conversation.version in CHAT_TEMPLATE_VERSIONS:
        return preprocess_chat(sources, tokenizer, conversation)
    if conversation.sep_style == conversation_lib.SeparatorStyle.PLAIN:
        return llava_train.preprocess_plain(sources, tokenizer, conversation=conversation)
    if conversation.sep_style == conversation_lib.SeparatorStyle.LLAMA_2:
        return llava_train.preprocess_llama_2(sources, tokenizer, has_image=has_image, conversation=conversation)
    if conversation.version.startswith("v1"):
        return llava_train.preprocess_v1(sources, tokenizer, has_image=has_image, conversation=conversation)
    if conversation.version == "mpt":
        return llava_train.preprocess_mpt(sources, tokenizer, has_image=has_image, conversation=conversation)
    raise ConversationError(f"template {conversation.version!r} has no training format here; use plain, v1, "
                            f"llama_2, mpt, qwen_3 or llama_3")
