"""LLaVA's serving stack (controller, model worker, gradio web UI) for every checkpoint kind.

The patched `llava.serve.model_worker` and `llava.serve.gradio_web_server` (patches/14-serve-worker.patch,
15-serve-web.patch) delegate here: whether a model is multimodal and which conversation template it speaks
come from its config (never its folder name); requests are validated and every refusal names the problem
and the fix; images are decoded under a pixel limit. See docs/serving_llava.md.
"""
