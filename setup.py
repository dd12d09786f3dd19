"""llava-dpa: Deep Pre-Alignment (a small VLM as the vision encoder) for LLaVA.

llava-torch is deliberately NOT a dependency here: its pins (torch 2.0, transformers 4.36) are far too
old, so it is installed with --no-deps (see the Makefile) and then patched (`llava-dpa patch-llava`).
Ranges admit both the CPU stack tested here (torch 2.13; transformers 4.57.6 and 5.24) and current GPU
stacks (torch 2.11, transformers 5.17); `constraints.txt` pins the other tested versions.
"""
from pathlib import Path

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
# Exactly the tested transformers: the 4.57 line (4.57.6) and 5.17 through 5.24 (the GPU images ship 5.17;
# 5.24 is the newest the CI runs). 5.0-5.16 are excluded: untested.
TRANSFORMERS = "transformers>=4.57.6,<5.25," + ",".join(f"!=5.{minor}.*" for minor in range(17))


class BuildPyWithPatches(build_py):
    """patches/ stays at the top of the repository (the requested layout); a built wheel carries a copy in
    llava_dpa/patches, where an installed `llava-dpa patch-llava` finds it."""

    def run(self):
        super().run()
        target = Path(self.build_lib) / "llava_dpa" / "patches"
        target.mkdir(parents=True, exist_ok=True)
        for patch in sorted((HERE / "patches").glob("*.patch")):
            self.copy_file(str(patch), str(target / patch.name))


setup(
    cmdclass={"build_py": BuildPyWithPatches},
    name="llava-dpa",
    version="0.1.0",
    description="Deep Pre-Alignment for LLaVA: a perceiver VLM as a drop-in vision tower",
    packages=find_packages(include=["llava_dpa", "llava_dpa.*"]),
    # the registry refers to its DeepSpeed configs, so they ship with the package (scripts/train/deepspeed links here)
    package_data={"llava_dpa.recipes": ["deepspeed/*.json"]},
    python_requires=">=3.10",
    install_requires=[
        "torch>=2.4",
        TRANSFORMERS,
        "tokenizers>=0.20",
        "peft>=0.13",
        "accelerate>=1.0",
        "safetensors>=0.4",
        "sentencepiece",
        "protobuf",
        "pillow",
        "numpy",
        "requests",
        "shortuuid",
        "tqdm",
        "einops",
        "pyyaml",
    ],
    extras_require={
        "qlora": ["bitsandbytes>=0.45"],
        "deepspeed": ["deepspeed>=0.15"],
        "flash-attn": ["flash-attn>=2.6"],
        "eval": ["lmms-eval>=0.7.3", "matplotlib>=3.7"],
        "analysis": ["matplotlib>=3.7"],
        # LLaVA's controller, model worker and gradio web UI (docs/serving_llava.md). gradio 5.50.0: the last line
        # whose huggingface-hub range admits both transformers lines (6.x needs hub>=1.16, which 4.57 refuses) and
        # that runs LLaVA's tuple chatbot (6.x takes messages only); playwright drives the web UI test's system
        # chromium (no browser is downloaded)
        "serve": ["gradio==5.50.0", "fastapi>=0.115.2,<1", "uvicorn>=0.30", "playwright>=1.45", "openai>=1.58"],
        # `llava-dpa serve --engine vllm` (docs/serving.md), on a CUDA machine (vLLM has no CPU wheel). One stated
        # stack: vLLM 0.11.1 pins torch 2.9.0 and requires transformers < 5, so vLLM serves on the 4.57 line
        # (4.57.6: installed into a 5.x environment, pip moves transformers to it). 0.11.1 rather than 0.11.0:
        # 0.11.0 switches prefix caching off whenever prompt embeddings are enabled (engine/arg_utils.py,
        # _set_default_args); 0.11.1 caches prompt-embeds prefixes (vLLM PR #27219)
        "vllm": ["vllm==0.11.1", "torch==2.9.0", "transformers==4.57.6"],
        "dev": ["pytest>=8", "pytest-xdist>=3.5", "filelock>=3.12", "import-linter>=2.1", "bitsandbytes>=0.45", "deepspeed>=0.15",
                "matplotlib>=3.7"],
    },
    entry_points={"console_scripts": ["llava-dpa=llava_dpa.cli:main"],
                  "lmms_eval.models": ["llava_dpa=llava_dpa.eval.lmms_plugin:manifest"]},
)
