"""The DPA splice as a library function: chat messages and images in, the target's input embeddings out.

What LLaVA's model feeds its target LLM is `prepare_inputs_labels_for_multimodal(...)`'s `inputs_embeds`: the
prompt's text tokens through the target's embedding table, with every `<image>` placeholder replaced by that
image's visual tokens (the tower, the perceiver for DPA, then the projector/aligner, LLaVA's anyres merge and
newline tokens). A stock target (a plain Qwen3/LLaMA with 1-D positions) fed these embeddings computes what the
LLaVA model computes: this is what lets `llava-dpa serve` run the target on an engine that knows nothing of
DPA (Hugging Face `generate` with `inputs_embeds`, vLLM with `prompt_embeds`).

    from llava_dpa.serving.splice import Splice
    splice = Splice.from_checkpoint(CKPT, device="cpu")
    spliced = splice.embed([{"role": "user", "content": [{"type": "image", "image": pil},
                                                         {"type": "text", "text": "What colour is it?"}]}])
    spliced.embeds      # [tokens, hidden] for the target; spliced.input_ids, spliced.prompt, spliced.images

Images are encoded once per conversation: each image's visual tokens are kept in an LRU cache keyed by the
image's content (a hash of its pixels) and by what the tower reads besides the pixels for that image: nothing
for a ViT (the baseline); the question of the image's turn for a perceiver with the instruction context; for the
Qwen-VL-native perceiver, which reads a sample as one sequence, the text before the image and, through the key
of the image before it, every earlier image and text of the sample. A conversation re-sent with one more turn
hits the cache for every image it already had; a new image, or an image under other text its perceiver reads, is
encoded. Blocks come from the LLaVA path's own code (`llava_integration.multimodal_inputs.image_features`: the tower,
the projector, the anyres merge and newline tokens, whole images), on the image alone or, for a sequence-reading
perceiver, on the sample's images together, so the spliced embeddings equal the LLaVA path's
(tests/test_openai_serve.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import threading
from collections import OrderedDict

import torch
from llava.constants import DEFAULT_IM_END_TOKEN, DEFAULT_IM_START_TOKEN
from llava.conversation import SeparatorStyle, conv_templates
from llava.mm_utils import process_images, tokenizer_image_token
from transformers import AutoModelForCausalLM

from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
from llava_dpa.llava_integration.inference import conv_mode_for, to_model
from llava_dpa.llava_integration.multimodal_inputs import image_features
from llava_dpa.loading import load_pretrained_model
from llava_dpa.perceiver.instruction import tiles_per_image
from llava_dpa.serving.requests import IMAGE_TOKEN, RequestError, check_image_count
from llava_dpa.templates import CHAT_TEMPLATE_VERSIONS
from llava_dpa.text_path import language_config, language_state_dict

#: how many images' visual tokens the splice keeps (each a [tokens, hidden] tensor)
DEFAULT_CACHE_IMAGES = 64


@dataclasses.dataclass
class Spliced:
    """One prompt, spliced: `embeds` [tokens, hidden] is what the target reads."""
    prompt: str                 # the rendered conversation, with one `<image>` per image
    input_ids: torch.Tensor     # [text tokens + one IMAGE_TOKEN_INDEX per image]
    images: list                # the PIL images, in order
    embeds: torch.Tensor        # [tokens, hidden], on the model's device, at its dtype
    encoded: int = 0            # images encoded by this call (the rest came from the cache)

    def __len__(self) -> int:
        return int(self.embeds.shape[0])


class ImageCache:
    """LRU of image blocks, keyed by (image content, what the tower reads for it); thread-safe."""

    def __init__(self, size: int = DEFAULT_CACHE_IMAGES):
        self.size = int(size)
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, key):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                self.hits += 1
                return self._items[key]
            self.misses += 1
            return None

    def put(self, key, value) -> None:
        if self.size <= 0:
            return
        with self._lock:
            self._items[key] = value
            self._items.move_to_end(key)
            while len(self._items) > self.size:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


def image_digest(image) -> str:
    """The content of a PIL image: its mode, size and pixels (two encodings of one picture are one image)."""
    digest = hashlib.sha256(f"{image.mode}:{image.size}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


def conversation_prompt(template: str, messages: list[dict]) -> tuple[str, list]:
    """Render chat messages in a LLaVA conversation template: (the prompt up to the assistant's reply, images).

    messages: {"role": "system" | "user" | "assistant", "content": str | [parts]}, a part {"type": "text",
    "text": str} or {"type": "image", "image": PIL image}. An image part becomes `<image>` where it stands; a
    message's parts are joined by newlines, so [image, text] renders "<image>\\ntext", LLaVA's own layout.
    The conversation must end with a user message. Raises RequestError naming what is wrong."""
    if template not in conv_templates:
        raise RequestError(f"unknown conversation template {template!r}")
    conv = conv_templates[template].copy()
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of chat messages")
    images: list = []
    turns: list[tuple[str, str]] = []
    for index, message in enumerate(messages):
        role = message.get("role")
        text = _message_text(message.get("content"), index, role, images)
        if role in ("system", "developer"):
            if index != 0:
                raise RequestError(f"message {index + 1} is a {role} message after the conversation started: put "
                                   f"the system message first (one at most)")
            _set_system(conv, text)
            continue
        if role not in ("user", "assistant"):
            raise RequestError(f"message {index + 1} has role {role!r}: this model takes system, user and "
                               f"assistant messages (no tools or functions)")
        expected = "user" if not turns or turns[-1][0] == "assistant" else "assistant"
        if role != expected:
            raise RequestError(f"message {index + 1} is a {role} message where a {expected} message is due: "
                               f"user and assistant messages must alternate, starting with the user")
        turns.append((role, text))
    if not turns or turns[-1][0] != "user":
        raise RequestError("the conversation must end with a user message (the one to answer)")
    for role, text in turns:
        conv.append_message(conv.roles[0] if role == "user" else conv.roles[1], text)
    conv.append_message(conv.roles[1], None)
    return conv.get_prompt(), images


def _message_text(content, index: int, role, images: list) -> str:
    if isinstance(content, str):
        parts = [{"type": "text", "text": content}]
    elif isinstance(content, list):
        parts = content
    elif content is None and role == "assistant":
        parts = []
    else:
        raise RequestError(f"message {index + 1}: 'content' must be a string or a list of parts, got "
                           f"{type(content).__name__}")
    pieces = []
    for part in parts:
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text":
            text = part.get("text")
            if not isinstance(text, str):
                raise RequestError(f"message {index + 1}: a text part needs a string 'text'")
            if IMAGE_TOKEN in text:
                raise RequestError(f"message {index + 1}: its text contains {IMAGE_TOKEN!r}, which this server "
                                   f"reserves for images: send images as image parts and remove the placeholder")
            pieces.append(text)
        elif kind == "image":
            if role != "user":
                raise RequestError(f"message {index + 1}: only user messages may carry images, not {role}")
            images.append(part["image"])
            pieces.append(IMAGE_TOKEN)
        else:
            raise RequestError(f"message {index + 1}: unsupported content part type {kind!r}: send 'text' and "
                               f"'image_url' parts")
    return "\n".join(pieces)


def _set_system(conv, text: str) -> None:
    """The template's system turn set to `text`; the chat templates render it in the model's own format."""
    if conv.version in CHAT_TEMPLATE_VERSIONS or conv.sep_style in (SeparatorStyle.SINGLE, SeparatorStyle.TWO,
                                                                    SeparatorStyle.LLAMA_2):
        conv.system = text
        return
    header = "<|im_start|>system\n"
    if conv.sep_style == SeparatorStyle.MPT and conv.system.startswith(header):
        conv.system = header + text if text else ""
        return
    raise RequestError(f"a system message does not fit this model's conversation template {conv.version!r}: "
                       f"send the conversation without it")


class Splice:
    """A checkpoint's splice: the prompt's text embedded by the target's table, each image's visual tokens from
    the tower (the perceiver for DPA) and the projector, cached per image. The model's target layers are not
    used here (an engine runs them), so a vLLM server may drop them (`drop_target_layers`)."""

    def __init__(self, model, tokenizer, image_processor, template: str | None = None,
                 cache_images: int = DEFAULT_CACHE_IMAGES):
        self.model, self.tokenizer, self.image_processor = model, tokenizer, image_processor
        self.template = template or conv_mode_for(model, None)
        self.multimodal = bool(getattr(model.config, "mm_vision_tower", None))
        self.cache = ImageCache(cache_images)

    @classmethod
    def from_checkpoint(cls, path, model_base=None, device="cpu", dtype=None, **kwargs) -> "Splice":
        tokenizer, model, processor, _ = load_pretrained_model(str(path), model_base, None, device=device,
                                                               dtype=dtype)
        return cls(model, tokenizer, processor, **kwargs)

    @property
    def hidden_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[1])

    # ---- the public function --------------------------------------------------------------------------
    def embed(self, messages: list[dict]) -> Spliced:
        prompt, images = conversation_prompt(self.template, messages)
        return self.embed_prompt(prompt, images)

    @torch.inference_mode()
    def embed_prompt(self, prompt: str, images: list) -> Spliced:
        """A rendered prompt with one `<image>` per image (in order) -> the target's input embeddings."""
        check_image_count(prompt, images, self.multimodal)
        text = prompt
        if images and getattr(self.model.config, "mm_use_im_start_end", False):
            text = prompt.replace(IMAGE_TOKEN, DEFAULT_IM_START_TOKEN + IMAGE_TOKEN + DEFAULT_IM_END_TOKEN)
        input_ids = tokenizer_image_token(text, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")
        input_ids = input_ids.to(self.model.device)
        # the text tokens in one embedding call, as LLaVA's splice does (patches/13-one-embedding-call)
        text_embeds = self.model.get_input_embeddings()(input_ids.clamp(min=0))
        if not images:
            return Spliced(prompt, input_ids, [], text_embeds)
        blocks, encoded = self._image_blocks(input_ids, images)
        pieces, start = [], 0
        where = torch.where(input_ids == IMAGE_TOKEN_INDEX)[0].tolist()
        for position, block in zip(where, blocks):
            pieces += [text_embeds[start:position], block.to(text_embeds.device, text_embeds.dtype)]
            start = position + 1
        pieces.append(text_embeds[start:])
        return Spliced(prompt, input_ids, list(images), torch.cat(pieces), encoded)

    # ---- images ---------------------------------------------------------------------------------------
    def pixels(self, image):
        """One image as LLaVA's processor makes it for this model (tiles for anyres, native size for whole-image
        towers), at the tower's dtype on the model's device."""
        processed = process_images([image], self.image_processor, self.model.config)
        return to_model(processed, self.model)

    def _image_blocks(self, input_ids, images) -> tuple[list, int]:
        pixels = [self.pixels(image) for image in images]
        per_image = self._per_image_tower_inputs(input_ids, pixels)
        digests = [image_digest(image) for image in images]
        if self._reads_the_sample(per_image):
            return self._sample_blocks(images, pixels, per_image, digests)
        blocks, encoded = [], 0
        for image, pixel, inputs, digest in zip(images, pixels, per_image, digests):
            key = (digest, repr(inputs))
            block = self.cache.get(key)
            if block is None:
                block = self._encode_one(pixel, image.size, inputs)
                self.cache.put(key, block)
                encoded += 1
            blocks.append(block)
        return blocks, encoded

    def _reads_the_sample(self, per_image) -> bool:
        """The Qwen-VL-native perceiver reads a sample as one sequence (prefix, text, image, text, image...): an
        image's tokens depend on everything before it in the sample, earlier images included."""
        tower = self.model.get_vision_tower()
        return bool(getattr(tower, "per_image_features", False)) and per_image[0] is not None

    def _sample_blocks(self, images, pixels, per_image, digests) -> tuple[list, int]:
        """Blocks of a sequence-reading tower: image k's key is its content and context and the keys before it;
        on any miss the sample's images are encoded together, as LLaVA's splice encodes them."""
        keys, key = [], None
        for digest, inputs in zip(digests, per_image):
            key = (digest, repr(inputs["contexts"][0][0]), key)
            keys.append(key)
        cached = [self.cache.get(k) for k in keys]
        if all(block is not None for block in cached):
            return cached, 0
        contexts = {"contexts": [[inputs["contexts"][0][0] for inputs in per_image]]}
        sizes = [image.size for image in images]
        blocks = [b.detach() for b in image_features(self.model, [p[0] for p in pixels], sizes, contexts)]
        for k, block in zip(keys, blocks):
            self.cache.put(k, block)
        return blocks, len(blocks)

    def _per_image_tower_inputs(self, input_ids, pixels) -> list:
        """What the tower reads besides each image, computed by the tower from the whole conversation (as LLaVA's
        splice does) and split per image."""
        tower = self.model.get_vision_tower()
        # each image's own tensor without process_images' batch level: [C, H, W], or [tiles, C, H, W] for anyres
        batch = [p[0] for p in pixels]
        inputs = tower.tower_inputs(input_ids[None], None, batch)
        if inputs is None:
            return [None] * len(pixels)
        if set(inputs) != {"contexts"}:
            raise NotImplementedError(f"{type(tower).__name__} reads {sorted(inputs)} besides the images; the splice "
                                      f"knows how to split only 'contexts' per image")
        contexts = inputs["contexts"]
        if getattr(tower, "per_image_features", False):  # [sample][image] -> one context per image
            return [{"contexts": [[c]]} for c in contexts[0]]
        out, start = [], 0  # a context per tile: split by each image's tiles
        for count in tiles_per_image(batch):
            out.append({"contexts": contexts[start:start + count]})
            start += count
        return out

    def _encode_one(self, pixel, size, tower_inputs) -> torch.Tensor:
        """One image's block through LLaVA's own feature code (`multimodal_inputs.image_features`: tower, projector,
        anyres merge, newline tokens), with the image's own share of the conversation's tower inputs."""
        return image_features(self.model, pixel, [size], tower_inputs)[0].detach()


def input_embeddings(checkpoint, messages: list[dict], model_base=None, device="cpu", dtype=None) -> torch.Tensor:
    """The target's input embeddings [tokens, hidden] for `messages` (see `Splice.embed`), loading `checkpoint`."""
    return Splice.from_checkpoint(checkpoint, model_base, device=device, dtype=dtype).embed(messages).embeds


def stock_target(model):
    """The checkpoint's target LLM as the stock transformers class (Qwen3ForCausalLM, LlamaForCausalLM...),
    sharing the LLaVA model's weight tensors (no copy): what an engine that knows nothing of LLaVA runs."""
    if not hasattr(model, "get_vision_tower"):  # a plain language model already
        return model
    config = language_config(model)
    config.architectures = None
    with torch.device("meta"):
        plain = AutoModelForCausalLM.from_config(config, dtype=model.dtype,
                                                 attn_implementation=model.config._attn_implementation)
    plain.load_state_dict(language_state_dict(model), strict=True, assign=True)
    if getattr(config, "tie_word_embeddings", False):
        plain.tie_weights()
    # modules with non-persistent buffers (the rotary table) are not in the state dict: the LLaVA model's own
    # module of the same name (the same class, built from the same config) serves
    for owner in {name.rpartition(".")[0] for name, buffer in plain.named_buffers() if buffer.is_meta}:
        plain.set_submodule(owner, model.get_submodule(owner))
    left = [n for n, t in [*plain.named_parameters(), *plain.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"the stock target's {left[:3]} have no values in the LLaVA model")
    plain.generation_config = model.generation_config
    return plain.eval()


def drop_target_layers(model) -> None:
    """Free the target's decoder layers and LM head in a process that only splices (an engine elsewhere runs the
    target): the embedding table, the tower, the projector and the newline token stay."""
    model.get_model().layers = torch.nn.ModuleList()
    model.lm_head = torch.nn.Identity()
