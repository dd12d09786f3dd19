"""What LLaVA's gradio web server (`llava.serve.gradio_web_server`, patches/15-serve-web.patch) asks here.

LLaVA chose the conversation template from the model's *name* ("llava" + "v1" + ...): a Qwen3 checkpoint got
`llava_v0` and answered nothing. Here the web server asks the model's worker, which reads it from the config.
"""
from __future__ import annotations

import logging

import requests

logger = logging.getLogger("llava_dpa.serving")

#: what the web server uses when a worker does not say (a worker without patches/14-serve-worker.patch)
FALLBACK_TEMPLATE = "llava_v1"


def worker_status(controller_url: str, model_name: str, timeout: float = 10.0) -> dict:
    address = requests.post(controller_url + "/get_worker_address", json={"model": model_name},
                            timeout=timeout).json().get("address", "")
    if not address:
        return {}
    return requests.post(address + "/worker_get_status", timeout=timeout).json()


def template_for(controller_url: str, model_name: str) -> str:
    """The conversation template of `model_name`'s worker (read from the checkpoint's config by the worker)."""
    from llava.conversation import conv_templates

    try:
        template = worker_status(controller_url, model_name).get("conv_template")
    except (requests.RequestException, ValueError) as exc:
        logger.warning("could not ask %s's worker for its template (%s); using %s", model_name, exc,
                       FALLBACK_TEMPLATE)
        template = None
    if template not in conv_templates:
        logger.warning("%s's worker names the template %r, which llava.conversation does not have (a worker "
                       "without patches/14-serve-worker.patch, or another llava); using %s: its answers may be "
                       "wrong", model_name, template, FALLBACK_TEMPLATE)
        return FALLBACK_TEMPLATE
    return template


def with_image(text: str) -> str:
    """The first message of a conversation with an image: the placeholder first, as llava.serve.cli writes it
    (LLaVA's web UI appended it, so the same question was a different prompt than in the CLI)."""
    return "<image>\n" + text
