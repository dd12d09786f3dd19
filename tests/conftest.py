"""Shared test machinery: running commands, free ports, and the trained checkpoints that many tests read.

Expensive checkpoints are built once per test session. Under pytest-xdist (`make test-line` runs two workers)
the first worker to need one builds it in a folder both workers see, under a file lock; the other waits and
reuses it (`built_once`). Fixtures that hand out live objects (a trainer) cannot cross processes: the tests
that share one carry the same `xdist_group` mark, so they run on one worker.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from filelock import FileLock

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
from llava_dpa.zoo.recipes import TINY_PINPOINTS  # noqa: F401,E402  (tests import it from here)

WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def on_line(major: str, why: str):
    """Run a test on one transformers line only (`make test` runs both): for an expensive test whose subject does
    not depend on the line, or whose line-dependent part another test covers on both. `why` says which."""
    import transformers

    return pytest.mark.skipif(not transformers.__version__.startswith(f"{major}."),
                              reason=f"runs on the {major}.x line only: {why}")
if WORKER:
    # Two workers on two cores: each worker, and every process it starts, computes on one thread, so the
    # workers do not fight over the cores (and a 2-rank DeepSpeed job gets one core per rank).
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = "1"
    torch.set_num_threads(1)


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def run(cmd, env=None, check=True, input=None, timeout=600, cwd=REPO):
    """Run a command (list) in its own process group and return the CompletedProcess; on failure show its
    output. On a timeout the whole group is killed (a launcher's ranks, a recipe's training) and the error
    shows what the command had printed."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="false", **(env or {}))
    cmd = [str(c) for c in cmd]
    proc = subprocess.Popen(cmd, env=full_env, stdin=subprocess.PIPE if input is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(input, timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        stdout, stderr = proc.communicate()
        raise AssertionError(f"command timed out after {timeout} s (its process group was killed): {' '.join(cmd)}\n"
                             f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-6000:]}") from None
    finally:
        _kill_group(proc)  # nothing it started outlives it
    done = subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
    if check and done.returncode != 0:
        raise AssertionError(f"command failed ({done.returncode}): {' '.join(cmd)}\n"
                             f"--- stdout ---\n{stdout[-4000:]}\n--- stderr ---\n{stderr[-6000:]}")
    return done


#: Ports the tests hand to servers and rendezvous: below Linux's ephemeral range (32768-60999), from which the OS
#: picks every port-0 bind and outgoing connection, so nothing else in the session is given one of them.
PORTS = range(20000, 32000)
_handed_out: set[int] = set()


def worker_ports(worker: str | None = WORKER, count: int | None = None) -> range:
    """A process's share of PORTS: xdist worker gwN of `count` (PYTEST_XDIST_WORKER_COUNT) gets the N-th of
    count + 1 disjoint slices, the last one is the controller's or a run without xdist; so two workers never hand
    out the same port."""
    if count is None:
        count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    index = int(worker[2:]) if worker and worker.startswith("gw") else count
    width = len(PORTS) // (count + 1)
    return range(PORTS.start + index * width, PORTS.start + (index + 1) * width)


def free_port() -> int:
    """A TCP port on 127.0.0.1 for a launcher's rendezvous or a server: from this worker's own slice of PORTS (no
    other xdist worker hands it out), never handed out twice in this process, and free now (checked by binding).
    A port the OS picks (bind to 0) could be taken by the other worker between its release and the server's bind."""
    ports = worker_ports()
    # Start where this process's id points, so a second session running beside this one starts elsewhere.
    start = os.getpid() % len(ports)
    for i in range(len(ports)):
        port = ports[(start + i) % len(ports)]
        if port in _handed_out:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or in TIME_WAIT after a server stopped
                continue
        _handed_out.add(port)
        return port
    raise AssertionError(f"no free port left in {ports} (this process handed out {len(_handed_out)})")


def in_process(command) -> None:
    """Run a training or `llava-dpa` command in this process: `python -m llava.train.train_mem ARGS` is
    `train(attn_implementation="flash_attention_2", argv=ARGS)` (what train_mem.py calls), `python -m
    llava_dpa.cli ARGS` is `main(ARGS)`. The recipe runner's executor in tests."""
    command = [str(c) for c in command]
    module, args = command[2], command[3:]
    assert command[1] == "-m", command
    if module in ("llava.train.train_mem", "llava.train.train"):
        from llava_dpa.training.train import train

        train(attn_implementation="flash_attention_2" if module.endswith("train_mem") else None, argv=args)
    elif module == "llava_dpa.cli":
        from llava_dpa.cli import main

        assert main(args) == 0, command
    else:
        raise AssertionError(f"no in-process form for {command}")


def in_process_logged_call(call) -> str:
    """`call()`, returning what it printed (the trainability table, the banner, the log lines)."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        call()
    return printed.getvalue()


def in_process_logged(command) -> str:
    """`in_process(command)`, returning what it printed."""
    return in_process_logged_call(lambda: in_process(command))


def train_cmd(zoo, output, *, stage: int, lm="qwen3_lm", tower=None, version=None, extra=(), module="llava.train.train_mem"):
    """A registry baseline's stage command on the tiny zoo (llava_dpa.zoo.recipes), with the defaults these tests
    were written against: a CLIP tower, square images, a frozen tower, LLaVA's plain stage 1, no stage-1 input.
    `cmd[3:]` is the argv of `train(argv=...)`."""
    from llava_dpa.recipes.render import stage_command
    from llava_dpa.zoo.recipes import tiny_flags, tiny_settings

    tower = tower or zoo["clip"]
    entry = "llava-next-llama3.2-3b" if lm == "llama_lm" else "llava-next-qwen3-4b"
    not_clip = any(key in tower for key in ("qwen2_5_vl", "perceiver", "dpa"))
    overrides = tiny_flags(stage) + [
        "--model_name_or_path", zoo[lm], "--vision_tower", tower, "--output_dir", str(output),
        "--mm_vision_select_layer", "-1" if not_clip else "-2", "--image_aspect_ratio", "square",
        "--mm_patch_merge_type", "flat", "--weight_decay", "0.0", "--adam_beta2", "0.999"]
    if stage == 1:
        overrides += ["--version", "plain", "--learning_rate", "1e-3", "--max_steps", "3"]
    else:
        overrides += ["--version", version or ("llama_3" if lm == "llama_lm" else "qwen_3"), "--learning_rate", "3e-3",
                      "--num_train_epochs", "12"]
    drop = ("--pretrain_mm_mlp_adapter", "--unfreeze_mm_vision_tower", "--mm_vision_tower_lr", "--mm_projector_lr",
            "--image_grid_pinpoints", "--lr_scheduler_kwargs", "--lr_scheduler_type", "--stage")
    command = stage_command(entry, stage, tiny_settings(zoo, Path(output).parent), overrides, drop)
    args = [PY, "-m", module] + command.argv
    if stage == 1:
        args += ["--tune_mm_mlp_adapter", "True"]
    else:
        args += ["--lr_scheduler_type", "cosine"]
    return args + list(extra)


def losses(folder) -> dict[int, float]:
    """A finished run's logged training loss per step (trainer_state.json)."""
    history = json.loads((Path(folder) / "trainer_state.json").read_text())["log_history"]
    return {h["step"]: h["loss"] for h in history if "loss" in h}


# ---- built once per session, shared by the xdist workers ------------------------------------------------------

def _shared_root(tmp_path_factory) -> Path:
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKER else base  # under xdist: the run's folder above each worker's own


@contextmanager
def _locked(tmp_path_factory, name):
    root = _shared_root(tmp_path_factory)
    with FileLock(str(root / f"{name}.lock")):
        yield root / name


def built_once(tmp_path_factory, name: str, build) -> Path:
    """`root/name`, made by `build(folder)` by the first worker that asks; `.complete` marks it finished. A
    failed build leaves no mark, so the next asker builds again (and fails with its own traceback)."""
    with _locked(tmp_path_factory, name) as folder:
        if not (folder / ".complete").is_file():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            build(folder)
            (folder / ".complete").touch()
        return folder


@pytest.fixture(scope="session")
def zoo(tmp_path_factory):
    from llava_dpa.zoo import build_zoo

    return build_zoo(built_once(tmp_path_factory, "zoo", build_zoo))


def _logged_run(cmd, folder: Path):
    """A subprocess run whose output is kept beside its checkpoint (train.log), for tests that read it."""
    proc = run(cmd)
    (folder / "train.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)


@pytest.fixture(scope="session")
def baseline_stage1(zoo, tmp_path_factory):
    """Stage 1 of a CLIP + tiny-Qwen3 baseline through LLaVA's own `python -m llava.train.train_mem` (its log is
    train.log: test_entry_points reads the flash-attention fallback warning there)."""
    return built_once(tmp_path_factory, "baseline_stage1",
                      lambda out: _logged_run(train_cmd(zoo, out, stage=1), out))


@pytest.fixture(scope="session")
def baseline_stage2(zoo, baseline_stage1, tmp_path_factory):
    """The baseline's stage 2 (in this process), trained on the synthetic questions."""
    return built_once(tmp_path_factory, "baseline_stage2", lambda out: in_process(train_cmd(
        zoo, out, stage=2, extra=["--pretrain_mm_mlp_adapter", str(baseline_stage1 / "mm_projector.bin")])))


@pytest.fixture(scope="session")
def perceiver(zoo, tmp_path_factory):
    """An untrained perceiver: the tiny Qwen2.5-VL ViT + a second tiny Qwen3 LM, random projector."""
    return built_once(tmp_path_factory, "perceiver", lambda out: in_process([
        PY, "-m", "llava_dpa.cli", "make-perceiver", "--vision", zoo["qwen2_5_vl_vit"], "--language-model",
        zoo["qwen3_lm_b"], "--output", str(out), "--seed", "0"]))


@pytest.fixture(scope="session")
def dpa_stage1(zoo, perceiver, tmp_path_factory):
    return built_once(tmp_path_factory, "dpa_stage1",
                      lambda out: in_process(train_cmd(zoo, out, stage=1, tower=str(perceiver))))


@pytest.fixture(scope="session")
def dpa_stage2(zoo, perceiver, dpa_stage1, tmp_path_factory):
    return built_once(tmp_path_factory, "dpa_stage2", lambda out: in_process(train_cmd(
        zoo, out, stage=2, tower=str(perceiver),
        extra=["--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--mm_vision_tower_lr", "2e-4"])))


#: the official release's tiny checkpoint (tests/fixtures/official_dpa, made by its make_fixture.py)
OFFICIAL_FIXTURE = REPO / "tests" / "fixtures" / "official_dpa"


def official_merged_source(folder: Path) -> Path:
    """The release's merged layout (config.json + pytorch_model.bin) in `folder`/official, with the paths a real
    checkpoint records (Hub names, absent here)."""
    import gzip

    src = folder / "official"
    src.mkdir()
    config = json.loads((OFFICIAL_FIXTURE / "checkpoint" / "config.json").read_text())
    config["perceiver_config"].update(vit_path="Qwen/Qwen2.5-VL-3B-Instruct", llm_path="Qwen/Qwen3-0.6B")
    config["thinker_name_or_path"] = "Qwen/Qwen3-4B"
    (src / "config.json").write_text(json.dumps(config))
    with gzip.open(OFFICIAL_FIXTURE / "checkpoint" / "pytorch_model.bin.gz", "rb") as f, \
            open(src / "pytorch_model.bin", "wb") as g:
        shutil.copyfileobj(f, g)
    return src


def official_import_args(**extra) -> dict:
    """import_official's keyword arguments for the fixture: its configs and tokenizer, no log."""
    configs = OFFICIAL_FIXTURE / "configs"
    tokenizer = str(OFFICIAL_FIXTURE / "tokenizer")
    return {"vit_config": str(configs / "vit"), "perceiver_lm_config": str(configs / "llm"),
            "target_config": str(configs / "thinker"), "target_tokenizer": tokenizer, "perceiver_tokenizer": tokenizer,
            "log": lambda *_: None, **extra}


@pytest.fixture(scope="session")
def official_import(tmp_path_factory) -> Path:
    """`llava-dpa import-official` of the release's merged layout, once per session (read-only for the tests): the
    folder `import_official` wrote (`dpa`), beside the source it read (`official`)."""
    def build(folder):
        from llava_dpa.official.importer import import_official

        import_official(str(official_merged_source(folder)), str(folder / "dpa"), **official_import_args())

    return built_once(tmp_path_factory, "official_import", build) / "dpa"


#: the LoRA / QLoRA DPA runs that test_dpa.py checks in memory and test_cross_line.py loads on the other line
ADAPTER_FLAGS = ["--max_steps", "2", "--lora_enable", "True", "--lora_r", "8", "--lora_alpha", "16",
                 "--learning_rate", "1e-2"]
#: each run's learning rates besides --learning_rate: the LoRA run names one per part, the QLoRA run none (every
#: part then trains at --learning_rate); test_dpa.py reads both from the trainers' optimizer groups
ADAPTER_LEARNING_RATES = {16: ["--mm_vision_tower_lr", "2e-3", "--mm_projector_lr", "5e-3", "--perceiver_lr", "3e-3"],
                          4: []}


@pytest.fixture(scope="session")
def dpa_adapters(zoo, perceiver, dpa_stage1, tmp_path_factory):
    """bits -> (checkpoint folder, trainer) of a DPA LoRA (16) and QLoRA (4) stage-2 run, trained in this
    process; its tests carry `xdist_group("dpa_adapters")` so that one worker holds the trainers."""
    from llava_dpa.training.train import train

    made = {}
    for bits in (16, 4):
        out = tmp_path_factory.mktemp(f"dpa_lora{bits}")
        made[bits] = out, train(argv=train_cmd(zoo, out, stage=2, tower=str(perceiver), extra=[
            "--pretrain_mm_mlp_adapter", str(dpa_stage1 / "mm_projector.bin"), "--bits", str(bits),
            *ADAPTER_FLAGS, *ADAPTER_LEARNING_RATES[bits]])[3:])
    return made


#: the registry's runs shrunk further: one step of two samples
REGISTRY_TINY = ["--max_steps", "1", "--per_device_train_batch_size", "2"]
REGISTRY_LORA = ["--lora_r", "8", "--lora_alpha", "16"]


def registry_rows():
    """(entry, overrides) of every registry row the tests read, in the order `registry` trains them."""
    import dataclasses

    from llava_dpa.recipes.paper import REGISTRY
    from llava_dpa.zoo.recipes import TINY_FLAGS

    tiny = TINY_FLAGS + REGISTRY_TINY
    return [
        ("llava-next-qwen3-4b", tiny), ("dpa-qwen3-4b", tiny),
        ("dpa-llama3.2-3b", tiny), ("llava-next-llama3.2-3b", tiny),
        ("llava-next-qwen3-32b", tiny + REGISTRY_LORA), ("dpa-qwen3-32b", tiny + REGISTRY_LORA),
        # the zoo has 34 stage-2 samples, so the nested perceiver levels shrink to 6 and 14
        (dataclasses.replace(REGISTRY["perceiver-10k"], stage2_subset=6), tiny),
        (dataclasses.replace(REGISTRY["perceiver-250k"], stage2_subset=14), tiny),
        ("perceiver-stage1-only", tiny), ("perceiver-untrained", []), ("dpa-qwen3-4b-10k-perceiver", tiny),
        (dataclasses.replace(REGISTRY["llava-next-qwen3-4b-large-mlp"], projector_budget=100_000, projector_depth=3),
         tiny),
        ("dpa-qwen3-4b-instruction-context", tiny), ("llava-next-qwen3-4b-perceiver-vit", tiny),
        ("dpa-qwen3-4b-random-perceiver-lm", tiny),
    ]


@pytest.fixture(scope="session")
def registry(zoo, tmp_path_factory):
    """The cluster settings of one checkpoints folder holding every registry row the tests read, each trained by
    `run_entry` with its prerequisites (shared stages once, completed steps skipped) through the in-process
    executor. test_recipes.py drives the real launcher end to end in a folder of its own."""
    from llava_dpa.recipes.runner import run_entry
    from llava_dpa.zoo.recipes import tiny_settings

    def build(folder):
        printed = []
        for entry, extra in registry_rows():
            printed.append(in_process_logged_call(lambda: run_entry(entry, tiny_settings(zoo, folder), extra=extra,
                                                                    with_prerequisites=True, execute=in_process)))
        (folder / "registry.log").write_text("".join(printed))

    return tiny_settings(zoo, built_once(tmp_path_factory, "registry", build))


@contextmanager
def _torch_layer_init_kept():
    """LLaVA's scripts switch torch's Linear and LayerNorm init off for the whole process
    (llava.utils.disable_torch_init); a script run in this process must not leave later random models
    uninitialised (NaN weights)."""
    saved = torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters
    try:
        yield
    finally:
        torch.nn.Linear.reset_parameters, torch.nn.LayerNorm.reset_parameters = saved


def entry_point(module: str, *args, stdin: str = "") -> str:
    """`python -m MODULE ARGS < stdin` run in this process (the module's own `__main__` block); what it printed."""
    import io
    import runpy
    from unittest import mock

    argv = [module, *map(str, args)]
    with mock.patch.object(sys, "argv", argv), mock.patch.object(sys, "stdin", io.StringIO(stdin)), \
            _torch_layer_init_kept():
        return in_process_logged_call(lambda: runpy.run_module(module, run_name="__main__"))


def answer_questions(checkpoint, questions, images, answers, *extra) -> list[dict]:
    """LLaVA's `python -m llava.eval.model_vqa_loader` (what scripts/eval/llava_vqa.sh runs) in this process,
    greedy; the answers file's rows."""
    entry_point("llava.eval.model_vqa_loader", "--model-path", checkpoint, "--question-file", questions,
                "--image-folder", images, "--answers-file", answers, "--temperature", "0", *extra)
    return [json.loads(line) for line in Path(answers).read_text().splitlines()]


def tower_outputs_for_questions(model, tokenizer, processor, zoo, questions):
    """The vision tower's output for one image asked each question (the qwen_3 template), each computed afresh: the
    tower's inference memo is emptied before every forward, and the test fails unless the tower encoded each time,
    so no answer is one remembered from an earlier question."""
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image

    from llava_dpa.towers.base import clear_feature_memos

    seen = []
    tower = model.get_vision_tower()
    handle = tower.register_forward_hook(lambda m, i, o: seen.append(o.detach().clone()))
    image = process_images([Image.open(f"{zoo['images']}/img_001.png").convert("RGB")], processor, model.config)
    try:
        for question in questions:
            conv = conv_templates["qwen_3"].copy()
            conv.append_message("user", "<image>\n" + question)
            conv.append_message("assistant", None)
            ids = tokenizer_image_token(conv.get_prompt(), tokenizer, return_tensors="pt")[None]
            clear_feature_memos(model)
            encoded = tower.memo.computations
            with torch.no_grad():
                model(input_ids=ids, images=image, image_sizes=[(32, 32)])
            assert tower.memo.computations == encoded + 1, "the tower did not encode the image for this question"
    finally:
        handle.remove()
    assert len(seen) == len(questions)
    return seen


def instruction_context_copy(checkpoint, perceiver, out) -> Path:
    """A copy of a DPA checkpoint whose perceiver reads the question (`perceiver_instruction_context`, with the
    perceiver's tokenizer beside it): the same weights, that one setting apart."""
    out = Path(out)
    shutil.copytree(checkpoint, out)
    config = json.loads((out / "config.json").read_text())
    config["perceiver_instruction_context"] = True
    (out / "config.json").write_text(json.dumps(config))
    (out / "perceiver_tokenizer").mkdir()
    for f in Path(perceiver).glob("*"):
        if f.name.startswith(("tokenizer", "special_tokens", "chat_template")):
            shutil.copy(f, out / "perceiver_tokenizer")
    return out


def tower_folder_weights(path, select_layer=-2):
    """A ViT folder's weights under the keys of the tower's encoder, mapped as the tower's own loader maps them
    (a CLIP folder saved by transformers 5 has no `vision_model` level; the encoder keeps it)."""
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from llava_dpa.llava_integration.tower_registry import build_vision_tower
    from llava_dpa.towers import weights as W

    tower = build_vision_tower(SimpleNamespace(mm_vision_tower=str(path), mm_vision_select_layer=select_layer),
                               delay_load=True)
    return W.select_submodule_state(load_file(f"{path}/model.safetensors"), tower.encoder, tower.checkpoint_prefixes,
                                    str(path))


@pytest.fixture
def weight_reads(monkeypatch):
    """The folders the towers read weights from (towers/weights.load_state_dict), in order."""
    from llava_dpa.towers import weights

    reads, read = [], weights.load_state_dict

    def counted(path, *args, **kwargs):
        reads.append(str(path))
        return read(path, *args, **kwargs)

    monkeypatch.setattr(weights, "load_state_dict", counted)
    return reads


def two_turn_generate(checkpoint, image_path):
    """What llava.serve.cli does for two turns (the whole conversation re-sent each turn, the same image tensor)."""
    from llava.conversation import conv_templates
    from llava.mm_utils import process_images, tokenizer_image_token
    from PIL import Image

    from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
    from llava_dpa.loading import load_pretrained_model

    tokenizer, model, processor, _ = load_pretrained_model(str(checkpoint), None, None, device="cpu", dtype=torch.float32)
    image = Image.open(image_path).convert("RGB")
    pixels = process_images([image], processor, model.config)
    conv = conv_templates[model.config.conv_version].copy()
    for turn, question in enumerate(("What colour is it?", "And its shape?")):
        conv.append_message(conv.roles[0], ("<image>\n" if turn == 0 else "") + question)
        conv.append_message(conv.roles[1], None)
        ids = tokenizer_image_token(conv.get_prompt(), tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        with torch.inference_mode():
            out = model.generate(ids, images=pixels, image_sizes=[image.size], max_new_tokens=2, do_sample=False)
        conv.messages[-1][-1] = tokenizer.decode(out[0], skip_special_tokens=True)
    return model.get_vision_tower()


# ---- greedy answers computed two ways ---------------------------------------------------------------------------

#: two next-token logits this close are a near-tie: float noise (left padding, another BLAS, another
#: transformers line) may order them either way, so greedy decoding may part there and nowhere else
NEAR_TIE = 1e-3


def assert_same_greedy(model, tokenizer, prompt_ids, a: str, b: str, tie: float = NEAR_TIE, **inputs) -> None:
    """`a` and `b`, one prompt's greedy answers computed two ways, are equal, or part at a near-tie: where their
    tokens first differ, the model (run here on the prompt and the shared part) ranks those two tokens first and
    second, within `tie`. `inputs` are the forward's image arguments."""
    if a == b:
        return
    eos = tokenizer.eos_token_id
    ta, tb = (tokenizer(t, add_special_tokens=False).input_ids + [eos] for t in (a, b))
    k = next(i for i, (x, y) in enumerate(zip(ta, tb)) if x != y)
    ids = torch.cat([prompt_ids.reshape(1, -1), torch.tensor([ta[:k]], dtype=torch.long)], dim=1)
    with torch.no_grad():
        logits = model(input_ids=ids, **inputs).logits[0, -1].float()
    top2 = set(logits.topk(2).indices.tolist())
    gap = (logits[ta[k]] - logits[tb[k]]).abs().item()
    assert {ta[k], tb[k]} == top2 and gap <= tie, (
        f"greedy answers {a!r} and {b!r} part at token {k}, where the logits are not a near-tie "
        f"(gap {gap:.2e}, top two {sorted(top2)}, tokens {ta[k]} / {tb[k]})")


class GreedyReference:
    """A checkpoint's greedy answers computed here with `model.generate`, as LLaVA's CLI and eval scripts compute
    them (this project's loader, fp32 on CPU, the image preprocessing, the template's stop), so that another path's
    answer is checked against an independent computation on the same model and input, not against what a few CPU
    training steps happened to teach it."""

    def __init__(self, checkpoint, model_base=None):
        from llava_dpa.loading import load_pretrained_model

        self.tokenizer, self.model, self.processor, _ = load_pretrained_model(
            str(checkpoint), None if model_base is None else str(model_base), "x", device="cpu", dtype=torch.float32)

    def prompt(self, question: str) -> str:
        """A first turn asking `question` about one image, in the checkpoint's template (what the eval scripts send)."""
        from llava.conversation import conv_templates

        conv = conv_templates[self.model.config.conv_version].copy()
        conv.append_message(conv.roles[0], "<image>\n" + question)
        conv.append_message(conv.roles[1], None)
        return conv.get_prompt()

    def check(self, image_path, prompt: str, other: str, max_new_tokens: int) -> str:
        """Assert that `other`, another path's greedy answer to `prompt` about the image, is the one computed here,
        or parts from it only at a near-tie (`assert_same_greedy`); returns the answer computed here."""
        from llava.conversation import conv_templates
        from llava.mm_utils import (
            KeywordsStoppingCriteria,
            process_images,
            tokenizer_image_token,
        )
        from PIL import Image

        from llava_dpa.data.tokenization import IMAGE_TOKEN_INDEX
        from llava_dpa.llava_integration.inference import decode_reply

        image = Image.open(image_path).convert("RGB")
        inputs = {"images": process_images([image], self.processor, self.model.config), "image_sizes": [image.size]}
        ids = tokenizer_image_token(prompt, self.tokenizer, IMAGE_TOKEN_INDEX, return_tensors="pt")[None]
        conv = conv_templates[self.model.config.conv_version]
        stop = conv.sep2 if conv.sep_style.name == "TWO" else conv.sep  # as llava.serve.cli chooses it
        with torch.inference_mode():
            out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False, use_cache=True,
                                      stopping_criteria=[KeywordsStoppingCriteria([stop], self.tokenizer, ids)],
                                      **inputs)
        text = decode_reply(self.tokenizer, out, ids)
        assert_same_greedy(self.model, self.tokenizer, ids, text, other, **inputs)
        return text
