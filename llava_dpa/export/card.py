"""The model card (README.md) written into an exported folder."""
from __future__ import annotations

from string import Template

CARD = Template("""---
library_name: transformers
pipeline_tag: image-text-to-text
tags:
- llava-dpa
- deep-pre-alignment
- custom_code
---

# $source (llava-dpa export)

**What it is.** A vision-language model trained with llava-dpa (Deep Pre-Alignment for LLaVA): $kind.
Exported by `llava-dpa export-hf` from the LLaVA-format checkpoint `$source` (LoRA adapters, if any, merged).
Conversation template: `$template`. Weights: `model.safetensors` ($dtype).

**It needs `trust_remote_code=True`.** The model, its configuration and its processor are defined by the three
Python files in this folder (`configuration_llava_dpa.py`, `modeling_llava_dpa.py`, `processing_llava_dpa.py`);
they import only `torch` and `transformers` (transformers 4.57 or 5.x). Read them before you load the model:
`trust_remote_code=True` runs them.

## Loading

```python
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor

model = AutoModelForImageTextToText.from_pretrained(PATH, trust_remote_code=True, dtype=torch.float32)
processor = AutoProcessor.from_pretrained(PATH, trust_remote_code=True)

messages = [{"role": "user", "content": [{"type": "image", "image": Image.open("cat.jpg")},
                                         {"type": "text", "text": "What is in the picture?"}]}]
inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
out = model.generate(**inputs, max_new_tokens=64, do_sample=False)
print(processor.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))
```

(On transformers 4.57 pass `torch_dtype=` instead of `dtype=`.)

The processor puts each image's placeholders where the image goes and builds what the perceiver reads (the
text before each image, re-encoded with the perceiver's own tokenizer, when the model's perceiver reads it).
Images in a conversation are read in the order they appear.

## Provenance

Exported from a llava-dpa checkpoint; its logits equal the LLaVA path's for the same inputs (the exporter's
tests check this on tiny models). See llava-dpa's docs/export.md.
""")


def render_card(kind: str, template: str, dtype: str, source: str) -> str:
    return CARD.substitute(kind=kind, template=template, dtype=dtype, source=source)
