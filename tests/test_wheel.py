"""A plain install works: the built wheel carries the patches and the registry's DeepSpeed configs, installs
into a fresh virtualenv as a new user would (then llava-torch with --no-deps, then `llava-dpa patch-llava`),
and trains one step and chats from outside the repository; without any extra its command line starts."""
import importlib.metadata
import sys
import zipfile

from conftest import PY, REPO, on_line, run, train_cmd


@on_line("5", "the wheel is one pure-Python package for both lines; installing it and a training step take two "
              "minutes, and the 4.57 line's suite is the longer")
def test_the_wheel_installs_patches_llava_trains_and_chats_outside_the_repository(zoo, tmp_path):
    run([PY, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp_path / "dist", REPO],
        timeout=900)
    wheel = next((tmp_path / "dist").glob("llava_dpa-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    patches = sorted(p.name for p in (REPO / "patches").glob("*.patch"))
    assert sorted(n.split("/")[-1] for n in names if n.startswith("llava_dpa/patches/")) == patches
    assert "llava_dpa/recipes/deepspeed/zero3.json" in names

    venv = tmp_path / "venv"
    run([sys._base_executable, "-m", "venv", venv])
    vpy = venv / "bin" / "python"
    pins = [f"{name}=={importlib.metadata.version(name)}" for name in ("torch", "transformers", "bitsandbytes")]
    run([vpy, "-m", "pip", "install", "-q", pins[0]], timeout=900)          # the local CPU wheel of torch
    run([vpy, "-m", "pip", "install", "-q", wheel, *pins[1:]], timeout=900)
    run([vpy, "-m", "pip", "install", "-q", "--no-deps", "llava-torch==1.2.2.post1"], timeout=900)
    run([vpy, "-m", "pip", "uninstall", "-q", "-y", "torchvision"], check=False)
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    patched = run([venv / "bin" / "llava-dpa", "patch-llava"], cwd=outside)
    assert patched.stdout.count(": applied") == len(patches)
    assert "site-packages/llava_dpa" in run([vpy, "-c", "import llava_dpa; print(llava_dpa.__file__)"], cwd=outside).stdout
    # installed without extras: the command line starts, and the serve command names its extra (issue #26)
    assert "export-hf" in run([venv / "bin" / "llava-dpa", "--help"], cwd=outside).stdout
    refused = run([venv / "bin" / "llava-dpa", "serve", "no-checkpoint"], cwd=outside, check=False)
    assert refused.returncode == 2 and "pip install 'llava-dpa[serve]'" in refused.stderr, refused.stderr

    out = outside / "run"
    cmd = train_cmd(zoo, out, stage=2, extra=["--max_steps", "1"])
    run([vpy, *cmd[1:]], cwd=outside)
    assert (out / "model.safetensors").is_file() and (out / "run_config.json").is_file()
    chat = run([vpy, "-m", "llava.serve.cli", "--model-path", out, "--image-file", f"{zoo['images']}/img_000.png",
                "--device", "cpu", "--temperature", "0", "--max-new-tokens", "3", "--debug"],
               input="What color is the shape?\n\n", cwd=outside)
    assert "'outputs'" in chat.stdout
