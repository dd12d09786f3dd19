"""The paper's evaluation protocols as typed entries, beside the training recipes.

A protocol says how Table 1's 11 benchmarks are run for one checkpoint: the generation settings of each task
family (multimodal and text through lmms-eval with this project's model `llava_dpa`, MMLU-Redux through
lm-evaluation-harness on the target's text path), the judges, and how the lmms-eval tasks are split into
processes. Every setting is a field with its source in the field's metadata ("source"), which
`llava-dpa eval show` prints. Two protocols: `default` (each task's own settings, what this project reports)
and `official` (the authors' release: THUMAI-Lab/Deep-Pre-Alignment @1faf467, which evaluates with VLMEvalKit
and OpenCompass; docs/evaluation_and_analysis.md, "The official protocol").

`render` turns a protocol, a checkpoint, an output folder and the run's options (`EvalOptions`: what were the
environment variables of scripts/eval/run_paper_suite.sh, still read from there through `ENVIRONMENT`) into
the steps, each one command; `run` executes them in order through an executor (its own process by default).

Sources: "§n" is a paper section, "Table n" a paper table; paths are in the release, and EVAL is
Multimodal_eval/vlmevalkit/vlmeval/vlm/duplex_pts2_forward_vllm_prefix_custom_llava.py there.
"""
from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable, Optional


class EvalError(ValueError):
    """A protocol or option that cannot run, or a missing input; `code` is the exit status to end with."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class CommandFailed(RuntimeError):
    """A step's command exited with a non-zero status (the run stops there, with that status)."""

    def __init__(self, command: list[str], returncode: int):
        super().__init__(f"the command above exited with status {returncode}")
        self.command, self.returncode = command, returncode


def setting(default, source: str, goes: str = "gen_kwargs"):
    """A generation setting with where it comes from and where it goes on the command line: `gen_kwargs`,
    `model_args` or `flag` (a bare flag when true). None leaves the harness's or the task's own."""
    return field(default=default, metadata={"source": source, "goes": goes})


# ---- the suite: Table 1's benchmarks as lmms-eval / lm-evaluation-harness tasks ---------------------------
@dataclass(frozen=True)
class Suite:
    multimodal_tasks: tuple[str, ...] = setting(
        ("mmvet", "mmstar", "seedbench_2_plus", "mmmu_val", "mathvista_testmini_format", "mathvision_test",
         "ocrbench", "ai2d"),
        "§3.1 Benchmarks, Table 1 (lmms-eval 0.7.3 tasks; mathvista_testmini_format is the standard 0-shot "
        "format prompt of its mathvista_testmini group of three prompt variants)", goes="tasks")
    text_tasks: tuple[str, ...] = setting(
        ("openai_math", "gpqa_diamond_openai"), "§3.1 Benchmarks: MATH-500, GPQA-Diamond (lmms-eval tasks)",
        goes="tasks")
    redux_task: str = setting(
        "mmlu_redux_generative", "§3.1 Benchmarks: MMLU-Redux (not in lmms-eval: lm-evaluation-harness's "
        "zero-shot generative task, on the target's text path written by `llava-dpa export-llm`)", goes="tasks")


# ---- generation settings per task family --------------------------------------------------------------------
@dataclass(frozen=True)
class LmmsSettings:
    """An lmms-eval task family's settings: `--gen_kwargs` (in lmms-eval's names, in this order) replaces
    those keys of each task's own generation_kwargs; `system_prompt` is the target's system turn
    (`--model_args system_prompt=`, which sets the llava_dpa model's conversation template)."""
    do_sample: Optional[bool] = setting(None, "the task's own generation_kwargs (greedy)")
    temperature: Optional[float] = setting(None, "the task's own generation_kwargs")
    top_p: Optional[float] = setting(None, "the task's own generation_kwargs")
    top_k: Optional[int] = setting(None, "the task's own generation_kwargs (HF's default: the checkpoint's "
                                         "generation_config, unused when greedy)")
    presence_penalty: Optional[float] = setting(None, "none: the task's own generation_kwargs have none")
    max_new_tokens: Optional[int] = setting(None, "the task's own generation_kwargs")
    system_prompt: Optional[str] = setting(None, "the conversation template's own (qwen_3: none)", goes="model_args")


@dataclass(frozen=True)
class HarnessSettings:
    """MMLU-Redux's settings in lm-evaluation-harness: `--gen_kwargs` in its names (`max_gen_toks`), in this
    order; `enable_thinking` goes to the tokenizer's chat template through `--model_args`."""
    do_sample: Optional[bool] = setting(None, "the task's own generation_kwargs (greedy)")
    temperature: Optional[float] = setting(None, "the task's own generation_kwargs")
    top_p: Optional[float] = setting(None, "the task's own generation_kwargs")
    top_k: Optional[int] = setting(None, "the task's own generation_kwargs")
    max_gen_toks: Optional[int] = setting(None, "the task's own generation_kwargs")
    presence_penalty: Optional[float] = setting(None, "none: the task's own generation_kwargs have none")
    enable_thinking: Optional[bool] = setting(
        False, "the prompt the qwen_3 template gives in training and in lmms-eval: an empty think block before "
               "the reply (other families' chat templates ignore the flag)", goes="model_args")
    apply_chat_template: bool = setting(
        True, "zero-shot through the tokenizer's chat template, the prompt the target is trained with", goes="flag")


# The release's settings. Multimodal: EVAL line 152, SamplingParams(temperature=TEMPERATURE, top_p=0.9,
# max_tokens=4096); text: opencompass/opencompass/configs/mb_internal/models/qwen/
# vllm_qwen3_nothink_sft_reproduce.py lines 11-20, the infer type of ms-swift/scripts/eval_DPA_text.sh line 39.
TEXT_CONFIG = "vllm_qwen3_nothink_sft_reproduce.py"


@dataclass(frozen=True)
class ReleaseMultimodal(LmmsSettings):
    do_sample: Optional[bool] = setting(True, "EVAL line 152: vLLM samples at the temperature below")
    temperature: Optional[float] = setting(
        0.01, "EVAL line 34 (TEMPERATURE, default 0.01; Multimodal_eval/auto_evaluator.py line 280 passes 0.01), "
              "used at line 152")
    top_p: Optional[float] = setting(0.9, "EVAL line 152 (top_p=0.9)")
    top_k: Optional[int] = setting(
        0, "EVAL line 152 sets none: vLLM's default, off (0 turns off the checkpoint's generation_config top_k, "
           "which HF would otherwise apply)")
    presence_penalty: Optional[float] = setting(None, "EVAL line 152 sets none")
    max_new_tokens: Optional[int] = setting(4096, "EVAL line 152 (max_tokens=4096); auto_evaluator.py line 278")
    system_prompt: Optional[str] = setting(
        "You are a helpful assistant.", "EVAL line 41 (SYSTEM_PROMPT), given to the target at line 127",
        goes="model_args")


@dataclass(frozen=True)
class ReleaseText(LmmsSettings):
    do_sample: Optional[bool] = setting(True, f"{TEXT_CONFIG} lines 13-18 (generation_kwargs: sampling)")
    temperature: Optional[float] = setting(0.7, f"{TEXT_CONFIG} lines 13-18 (temperature 0.7)")
    top_p: Optional[float] = setting(0.8, f"{TEXT_CONFIG} lines 13-18 (top_p 0.8)")
    top_k: Optional[int] = setting(20, f"{TEXT_CONFIG} lines 13-18 (top_k 20)")
    presence_penalty: Optional[float] = setting(
        1.5, f"{TEXT_CONFIG} lines 13-18 (presence_penalty 1.5; llava_dpa's PresencePenalty is vLLM's)")
    max_new_tokens: Optional[int] = setting(32768, f"{TEXT_CONFIG} line 11 (max_out_len 32768)")
    system_prompt: Optional[str] = setting(
        None, "none: the release's OpenCompass text runs give the prompt alone (opencompass/opencompass/models/"
              "qwen3_vllm.py line 125)", goes="model_args")


@dataclass(frozen=True)
class ReleaseRedux(HarnessSettings):
    do_sample: Optional[bool] = setting(True, f"{TEXT_CONFIG} lines 13-18 (generation_kwargs: sampling)")
    temperature: Optional[float] = setting(0.7, f"{TEXT_CONFIG} lines 13-18 (temperature 0.7)")
    top_p: Optional[float] = setting(0.8, f"{TEXT_CONFIG} lines 13-18 (top_p 0.8)")
    top_k: Optional[int] = setting(20, f"{TEXT_CONFIG} lines 13-18 (top_k 20)")
    max_gen_toks: Optional[int] = setting(32768, f"{TEXT_CONFIG} line 11 (max_out_len 32768)")
    presence_penalty: Optional[float] = setting(
        1.5, f"{TEXT_CONFIG} lines 13-18 (presence_penalty 1.5); only lm-evaluation-harness's vllm model takes it "
             "(--redux-backend vllm), its hf model has none")
    enable_thinking: Optional[bool] = setting(False, f"{TEXT_CONFIG} line 20 (enable_thinking=False)",
                                              goes="model_args")
    apply_chat_template: bool = setting(
        True, "opencompass/opencompass/models/qwen3_vllm.py line 125 (the chat template, with enable_thinking)",
        goes="flag")


# The gen_kwargs an lm-evaluation-harness model cannot take: its hf model hands them to HF generate, which has
# no presence penalty (and refuses keys it does not know); its vllm model hands them to SamplingParams.
HARNESS_BACKENDS: dict[str, frozenset[str]] = {"hf": frozenset({"presence_penalty"}), "vllm": frozenset()}


@dataclass(frozen=True)
class Judges:
    """The LLM that judges MMVet and MathVista. lmms-eval reads it from MODEL_VERSION once per process, so a
    judge of its own means a process of its own."""
    judge: Optional[str] = setting(
        None, "lmms-eval's own: MODEL_VERSION from the environment (default gpt-4o-2024-11-20)", goes="env")
    mmvet_judge: Optional[str] = setting(None, "lmms-eval's own, as the judge", goes="env")
    mmvet_task: str = setting("mmvet", "the benchmark judged by a judge of its own", goes="tasks")


@dataclass(frozen=True)
class ReleaseJudges(Judges):
    judge: Optional[str] = setting(
        "gpt-4o", "Multimodal_eval/auto_evaluator.py line 258 (--judge gpt-4o), vlmeval/dataset/utils/"
                  "judge_util.py line 26", goes="env")
    mmvet_judge: Optional[str] = setting(
        "gpt-4-1106-preview", "auto_evaluator.py line 258 (gpt-4-turbo for MMVet), which judge_util.py line 15 "
                              "maps to gpt-4-1106-preview", goes="env")


# ---- the protocols ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Protocol:
    """This project's protocol: each task's own settings, the paper states no other (§3.1 names the
    benchmarks only)."""
    name: str = "default"
    description: str = "each task's own settings (greedy, the task's prompt and length): what this project reports"
    suite: Suite = Suite()
    multimodal: LmmsSettings = LmmsSettings()
    text: LmmsSettings = LmmsSettings()
    mmlu_redux: HarnessSettings = HarnessSettings()
    judges: Judges = Judges()
    per_family_runs: bool = setting(
        False, "every lmms-eval task keeps its own settings, so one lmms-eval process runs them all "
               "(OUT/lmms_eval)", goes="runs")

    def __post_init__(self):
        if not self.per_family_runs and (self.multimodal != self.text or self.judges.judge or self.judges.mmvet_judge):
            raise EvalError(f"protocol {self.name}: families with different settings or judges need per_family_runs")


@dataclass(frozen=True)
class Official(Protocol):
    """The release's generation settings, system prompt and judges. Not applied: its per-dataset prompts, its
    GPT answer extraction, its uncapped image resolution (docs/evaluation_and_analysis.md)."""
    name: str = "official"
    description: str = "the release's settings (THUMAI-Lab/Deep-Pre-Alignment @1faf467: VLMEvalKit, OpenCompass)"
    multimodal: LmmsSettings = ReleaseMultimodal()
    text: LmmsSettings = ReleaseText()
    mmlu_redux: HarnessSettings = ReleaseRedux()
    judges: Judges = ReleaseJudges()
    per_family_runs: bool = setting(
        True, "the families' settings differ and lmms-eval reads one judge per process: the multimodal tasks, "
              "MMVet and the text tasks run in processes of their own (OUT/lmms_eval/{multimodal,mmvet,text})",
        goes="runs")


PROTOCOLS: tuple[Protocol, ...] = (Protocol(), Official())


def get(name: str) -> Protocol:
    for protocol in PROTOCOLS:
        if protocol.name == name:
            return protocol
    raise EvalError(f"protocol {name!r}: choose {' or '.join(p.name for p in PROTOCOLS)} (llava-dpa eval list)")


def settings_table(protocol: Protocol) -> list[tuple[str, object, str]]:
    """Every setting of `protocol` as (family.name, value, source), in declaration order."""
    rows = []
    for part in ("suite", "multimodal", "text", "mmlu_redux", "judges"):
        entry = getattr(protocol, part)
        for f in fields(entry):
            rows.append((f"{part}.{f.name}", getattr(entry, f.name), f.metadata["source"]))
    rows.append(("per_family_runs", protocol.per_family_runs,
                 next(f.metadata["source"] for f in fields(protocol) if f.name == "per_family_runs")))
    return rows


# ---- the run's options (the script's environment variables) -------------------------------------------------
def _option(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class EvalOptions:
    """How and where to run a protocol; nothing here changes what a benchmark measures, except the task lists
    and `limit` (debugging)."""
    python: str = _option("python", "the interpreter every command runs with (lmms-eval, lm-eval, llava-dpa)")
    device: str = _option("cuda:0", "the device (cuda when num_processes > 1: each process takes its LOCAL_RANK's GPU)")
    dtype: str = _option("bfloat16", "the model's dtype")
    batch_size: str = _option("1", "the harnesses' batch size")
    num_processes: int = _option(1, "> 1: lmms-eval under accelerate, one GPU per process")
    limit: Optional[float] = _option(None, "debugging: N documents per task (or a fraction below 1)")
    model_base: Optional[str] = _option(None, "the base LLM of a LoRA or projector-only checkpoint")
    conv_template: Optional[str] = _option(None, "the conversation template (default: the checkpoint's config)")
    mm_tasks: Optional[tuple[str, ...]] = _option(None, "the multimodal tasks instead of the suite's")
    text_tasks: Optional[tuple[str, ...]] = _option(None, "the text tasks instead of the suite's")
    redux_task: Optional[str] = _option(None, "the MMLU-Redux task instead of the suite's")
    skip_mmlu_redux: bool = _option(False, "no MMLU-Redux (no text-path export, no lm-evaluation-harness)")
    redux_backend: str = _option("hf", "lm-evaluation-harness's model for MMLU-Redux: hf, or vllm (which takes the "
                                       "presence penalty)")
    llm_only: bool = _option(False, "the checkpoint is the original LLM: only the 3 text tasks run (the "
                                    "forgetting reference)")
    judge_model: Optional[str] = _option(None, "the judge of the multimodal tasks (protocols with judges: official)")
    mmvet_judge_model: Optional[str] = _option(None, "MMVet's judge (protocols with judges: official)")

    def __post_init__(self):
        if self.redux_backend not in HARNESS_BACKENDS:
            raise EvalError(f"redux backend {self.redux_backend!r}: choose {' or '.join(HARNESS_BACKENDS)}")
        if self.num_processes < 1:
            raise EvalError(f"num_processes {self.num_processes}: at least 1")


@dataclass(frozen=True)
class EnvironmentVariable:
    """One environment variable of scripts/eval/run_paper_suite.sh and the `llava-dpa eval run` flag it becomes
    (an empty value counts as unset; a switch is on for any other value)."""
    name: str
    flag: str
    switch: bool = False


ENVIRONMENT: tuple[EnvironmentVariable, ...] = (
    EnvironmentVariable("PROTOCOL", "--protocol"),
    EnvironmentVariable("MODEL_BASE", "--model-base"),
    EnvironmentVariable("CONV_TEMPLATE", "--conv-template"),
    EnvironmentVariable("DEVICE", "--device"),
    EnvironmentVariable("DTYPE", "--dtype"),
    EnvironmentVariable("BATCH_SIZE", "--batch-size"),
    EnvironmentVariable("NUM_PROCESSES", "--num-processes"),
    EnvironmentVariable("LIMIT", "--limit"),
    EnvironmentVariable("MM_TASKS", "--mm-tasks"),
    EnvironmentVariable("TEXT_TASKS", "--text-tasks"),
    EnvironmentVariable("REDUX_TASK", "--redux-task"),
    EnvironmentVariable("SKIP_MMLU_REDUX", "--skip-mmlu-redux", switch=True),
    EnvironmentVariable("REDUX_BACKEND", "--redux-backend"),
    EnvironmentVariable("LLM_ONLY", "--llm-only", switch=True),
    EnvironmentVariable("JUDGE_MODEL", "--judge-model"),
    EnvironmentVariable("MMVET_JUDGE_MODEL", "--mmvet-judge-model"),
    EnvironmentVariable("PYTHON", "--python"),
    EnvironmentVariable("DRY_RUN", "--dry-run", switch=True),
)


def environment_arguments(environ) -> list[str]:
    """The `llava-dpa eval run` flags the environment variables of `ENVIRONMENT` set, in its order."""
    argv = []
    for var in ENVIRONMENT:
        value = environ.get(var.name, "")
        if value:
            argv += [var.flag] if var.switch else [var.flag, value]
    return argv


def task_list(text: str) -> tuple[str, ...]:
    """A comma-separated task list (empty names dropped)."""
    return tuple(t for t in text.split(",") if t)


def number(text: str) -> float:
    """A count (`5`) or a fraction (`0.1`), written back as given (`--limit`)."""
    value = float(text)
    return int(value) if value.is_integer() and "." not in text else value


# ---- rendering ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Step:
    description: str
    command: tuple[str, ...]
    done: Callable[[], bool] = lambda: False   # checked when the step's turn comes (a text path already written)


_PLAIN = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_./,=:+@%-")


def shell_word(word: str) -> str:
    """A word as a shell reads it back: bare when it has only safe characters, else single-quoted."""
    if word and set(word) <= _PLAIN:
        return word
    return "'" + word.replace("'", "'\\''") + "'"


def shell_line(command) -> str:
    """A step as printed: `+ ` and its words, each quoted only if needed, so the line can be pasted back."""
    return "+ " + " ".join(shell_word(str(w)) for w in command)


def _value(value) -> str:
    return str(value)


def _assignments(settings, goes: str, leave_out=frozenset()) -> list[str]:
    return [f"{f.name}={_value(getattr(settings, f.name))}" for f in fields(settings)
            if f.metadata.get("goes") == goes and getattr(settings, f.name) is not None and f.name not in leave_out]


def default_output(checkpoint: str) -> str:
    """eval_results/<the checkpoint folder's name> (as `basename`)."""
    name = checkpoint.rstrip("/")
    return "eval_results/" + (name.rsplit("/", 1)[-1] if name else "/" if checkpoint else "")


def render(protocol: Protocol | str, checkpoint: str, output: Optional[str] = None,
           options: EvalOptions = EvalOptions()) -> list[Step]:
    """The commands that evaluate `checkpoint` with `protocol` into `output`, in order: the lmms-eval runs,
    MMLU-Redux (the text-path export, then lm-evaluation-harness) and `llava-dpa report`."""
    protocol = get(protocol) if isinstance(protocol, str) else protocol
    out = output if output is not None else default_output(checkpoint)
    suite, opts, py = protocol.suite, options, options.python
    mm_tasks = opts.mm_tasks if opts.mm_tasks is not None else suite.multimodal_tasks
    text_tasks = opts.text_tasks if opts.text_tasks is not None else suite.text_tasks
    redux_task = opts.redux_task if opts.redux_task is not None else suite.redux_task
    device = "cuda" if opts.num_processes > 1 else opts.device   # each process binds its LOCAL_RANK's GPU
    limit = ["--limit", _value(opts.limit)] if opts.limit is not None else []
    model_args = f"pretrained={checkpoint},dtype={opts.dtype}"
    if opts.model_base:
        model_args += f",model_base={opts.model_base}"
    if opts.conv_template:
        model_args += f",conv_template={opts.conv_template}"
    if opts.num_processes > 1:
        lmms = [py, "-m", "accelerate.commands.launch", "--num_processes", str(opts.num_processes), "-m", "lmms_eval"]
    else:
        lmms = [py, "-m", "lmms_eval"]

    def lmms_run(description, tasks, folder, settings: LmmsSettings, judge=None) -> Step:
        gen = _assignments(settings, "gen_kwargs")
        args = ",".join([model_args, *_assignments(settings, "model_args")])
        command = [*(["env", f"MODEL_VERSION={judge}"] if judge else []), *lmms, "--model", "llava_dpa",
                   "--model_args", args, "--tasks", ",".join(tasks), "--device", device, "--batch_size",
                   opts.batch_size, "--output_path", f"{out}/{folder}", "--log_samples",
                   *(["--gen_kwargs", ",".join(gen)] if gen else []), *limit]
        return Step(description, tuple(command))

    steps = []
    if not protocol.per_family_runs:
        tasks = text_tasks if opts.llm_only else (*mm_tasks, *text_tasks)
        steps.append(lmms_run("lmms-eval: every task with its own settings", tasks, "lmms_eval", protocol.multimodal))
    else:
        judges = protocol.judges
        if not opts.llm_only:
            judged = [t for t in mm_tasks if t != judges.mmvet_task]
            if judged:
                steps.append(lmms_run("lmms-eval: the multimodal tasks", judged, "lmms_eval/multimodal",
                                      protocol.multimodal, opts.judge_model or judges.judge))
            if judges.mmvet_task in mm_tasks:
                steps.append(lmms_run(f"lmms-eval: {judges.mmvet_task}, with its own judge", [judges.mmvet_task],
                                      f"lmms_eval/{judges.mmvet_task}", protocol.multimodal,
                                      opts.mmvet_judge_model or judges.mmvet_judge))
        steps.append(lmms_run("lmms-eval: the text tasks", text_tasks, "lmms_eval/text", protocol.text))

    if not opts.skip_mmlu_redux:
        text_model = checkpoint
        if not opts.llm_only:
            text_model = f"{out}/text_path"
            export = [py, "-m", "llava_dpa.cli", "export-llm", checkpoint, text_model]
            if opts.model_base:
                export += ["--model-base", opts.model_base]
            steps.append(Step("the target's text path as a plain LLM (LoRA merged)", tuple(export),
                              lambda: Path(text_model, "config.json").is_file()))
        redux = protocol.mmlu_redux
        gen = _assignments(redux, "gen_kwargs", leave_out=HARNESS_BACKENDS[opts.redux_backend])
        args = ",".join([f"pretrained={text_model},dtype={opts.dtype}", *_assignments(redux, "model_args")])
        flags = [f"--{f.name}" for f in fields(redux) if f.metadata.get("goes") == "flag" and getattr(redux, f.name)]
        command = [py, "-m", "lm_eval", "--model", opts.redux_backend, "--model_args", args, "--tasks", redux_task,
                   *flags, "--device", device, "--batch_size", opts.batch_size, "--output_path", f"{out}/lm_eval",
                   "--log_samples", *(["--gen_kwargs", ",".join(gen)] if gen else []), *limit]
        steps.append(Step("lm-evaluation-harness: MMLU-Redux on the text path", tuple(command)))
    steps.append(Step("the Table 1 row (llava-dpa report)", (py, "-m", "llava_dpa.cli", "report", out)))
    return steps


# ---- running ------------------------------------------------------------------------------------------------
def run_command(command) -> None:
    """A step's command as its own process (how `llava-dpa eval run` executes every step)."""
    proc = subprocess.run(list(command))
    if proc.returncode != 0:
        raise CommandFailed(list(command), proc.returncode)


def _importable(python: str, module: str) -> bool:
    """Whether `python` (the interpreter the steps run with, perhaps not this one) can import `module`."""
    try:
        probe = subprocess.run([python, "-c", f"import {module}"], stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, timeout=300)
    except OSError as exc:
        raise EvalError(f"cannot run the interpreter {python!r} ({exc.strerror}): name one with --python "
                        "(PYTHON)", code=3) from None
    return probe.returncode == 0


def check_inputs(checkpoint: str, options: EvalOptions) -> None:
    """What a real run needs before its first step: a checkpoint folder, lmms-eval, and lm-evaluation-harness
    where MMLU-Redux runs (checked first, not after hours of lmms-eval)."""
    if not os.path.isfile(os.path.join(checkpoint, "config.json")):
        raise EvalError(f"{checkpoint}: no config.json; pass a checkpoint folder")
    if not _importable(options.python, "lmms_eval"):
        raise EvalError(f"the suite runs lmms-eval, which {options.python} cannot import: install the eval extra, "
                        "pip install 'llava-dpa[eval]' (make setup-eval)", code=3)
    if not options.skip_mmlu_redux and not _importable(options.python, "lm_eval"):
        raise EvalError("MMLU-Redux needs lm-evaluation-harness: pip install 'lm-eval>=0.4.8' (or set "
                        "SKIP_MMLU_REDUX=1, --skip-mmlu-redux)", code=3)


def run(protocol: Protocol | str, checkpoint: str, output: Optional[str] = None, options: EvalOptions = EvalOptions(),
        dry_run: bool = False, execute: Callable[[tuple[str, ...]], None] = run_command, stdout=None) -> list[Step]:
    """Run `protocol`'s steps in order, each printed as a shell line, then executed through `execute(command)`
    unless `dry_run`. A text path already exported is not exported again. Returns the steps that ran."""
    stdout = stdout or sys.stdout
    steps = render(protocol, checkpoint, output, options)
    if not dry_run:
        check_inputs(checkpoint, options)
    ran = []
    for step in steps:
        if step.done():
            print(f"[eval] {step.description}: already there, skipped", file=sys.stderr, flush=True)
            continue
        print(shell_line(step.command), file=stdout, flush=True)
        if not dry_run:
            execute(step.command)
        ran.append(step)
    return ran


__all__ = ["CommandFailed", "ENVIRONMENT", "EnvironmentVariable", "EvalError", "EvalOptions", "HARNESS_BACKENDS",
           "HarnessSettings", "Judges", "LmmsSettings", "Official", "PROTOCOLS", "Protocol", "Step", "Suite",
           "default_output", "environment_arguments", "get", "number", "render", "run", "run_command", "settings_table",
           "shell_line", "task_list"]
