"""`serve --engine vllm` against vLLM's own names: vLLM has no CPU wheel, so the engine runs on a stand-in built from
tests/fixtures/vllm_signatures.json (the fields and parameters of vLLM 0.11.0 and 0.11.1, read from their wheels'
source by tests/fixtures/vllm_record_signatures.py). The stand-in refuses every keyword vLLM's classes do not have,
and `VLLMEngine.start` runs as it is, importing the stand-in's modules: the arguments it gives `AsyncEngineArgs`,
the `SamplingParams` of a request, the prompt (`EmbedsPrompt`) and the abort on close are checked against those
names. What `build_service(engine="vllm")` does before vLLM starts is checked too: the model loaded on the CPU, the
target's layers dropped, the target exported in the serving dtype with the checkpoint's generation config, the
context length checked, the temporary export removed on shutdown and on a failed start."""
from __future__ import annotations

import asyncio
import enum
import json
import logging
import sys
import types
from pathlib import Path

import pytest
import torch

SIGNATURES = json.loads((Path(__file__).parent / "fixtures" / "vllm_signatures.json").read_text())
VERSIONS = sorted(v for v in SIGNATURES if v[0].isdigit())
SERVED = "dpa"


class Recorded:
    """What the stand-in vLLM was given."""

    def __init__(self):
        self.engine_args, self.calls, self.closed, self.shutdowns = [], [], [], 0


def _check_names(what: str, given, allowed, version: str) -> None:
    unknown = sorted(set(given) - set(allowed))
    if unknown:
        raise TypeError(f"{what} got unexpected keyword argument(s) {unknown}: not in vLLM {version}'s {what}")


def _strict(name: str, version: str):
    """A class taking exactly the keywords vLLM's class of that name takes (dataclass / msgspec fields)."""
    fields = tuple(SIGNATURES[version][name])

    def __init__(self, *args, **kwargs):
        if args:
            raise TypeError(f"{name} is given keywords only here, got {len(args)} positional argument(s)")
        _check_names(name, kwargs, fields, version)
        self.kwargs = kwargs
        for key, value in kwargs.items():
            setattr(self, key, value)

    return type(name, (), {"__init__": __init__, "fields": fields})


def stand_in(version: str, reply=("The ", "shape ", "is red."), finish="stop", on_start=None):
    """(namespace of the stand-in classes, Recorded). `on_start(engine_args)` runs inside from_engine_args."""
    names = SIGNATURES[version]
    recorded = Recorded()
    SamplingParams = _strict("SamplingParams", version)
    AsyncEngineArgs = _strict("AsyncEngineArgs", version)
    CompletionOutput = _strict("CompletionOutput", version)
    RequestOutput = _strict("RequestOutput", version)
    RequestOutputKind = enum.Enum("RequestOutputKind", names["RequestOutputKind"])

    class AsyncLLM:
        @classmethod
        def from_engine_args(cls, engine_args, **kwargs):
            _check_names("AsyncLLM.from_engine_args", kwargs, names["AsyncLLM.from_engine_args"], version)
            assert isinstance(engine_args, AsyncEngineArgs), engine_args
            recorded.engine_args.append(engine_args.kwargs)
            if on_start is not None:
                on_start(engine_args.kwargs)
            return cls()

        async def generate(self, prompt, sampling_params, request_id, **kwargs):
            _check_names("AsyncLLM.generate", kwargs, names["AsyncLLM.generate"], version)
            _check_names("EmbedsPrompt", prompt, names["EmbedsPrompt"], version)
            assert isinstance(sampling_params, SamplingParams) and "prompt_embeds" in prompt
            recorded.calls.append(types.SimpleNamespace(prompt=prompt, params=sampling_params, request_id=request_id))
            done = False
            try:
                for i, piece in enumerate(reply):  # DELTA: each output carries only its new text and tokens
                    last = i == len(reply) - 1
                    yield RequestOutput(request_id=request_id, prompt=None, prompt_token_ids=None,
                                        prompt_logprobs=None, finished=last, outputs=[CompletionOutput(
                                            index=0, text=piece, token_ids=[7] * (i + 1), cumulative_logprob=None,
                                            logprobs=None, finish_reason=finish if last else None,
                                            stop_reason=None)])
                    await asyncio.sleep(0)
                done = True
            finally:
                if not done:  # AsyncLLM.generate aborts the request on GeneratorExit / CancelledError
                    recorded.closed.append(request_id)

        def shutdown(self):
            recorded.shutdowns += 1

    classes = types.SimpleNamespace(SamplingParams=SamplingParams, AsyncEngineArgs=AsyncEngineArgs,
                                    RequestOutputKind=RequestOutputKind, AsyncLLM=AsyncLLM)
    return classes, recorded


def install(monkeypatch, version: str, **kwargs) -> tuple:
    """The stand-in as the modules `VLLMEngine.start` imports (vllm, vllm.engine.arg_utils, vllm.sampling_params,
    vllm.v1.engine.async_llm)."""
    classes, recorded = stand_in(version, **kwargs)
    modules = {name: types.ModuleType(name) for name in (
        "vllm", "vllm.engine", "vllm.engine.arg_utils", "vllm.sampling_params", "vllm.v1", "vllm.v1.engine",
        "vllm.v1.engine.async_llm")}
    modules["vllm"].__version__ = version
    modules["vllm.engine.arg_utils"].AsyncEngineArgs = classes.AsyncEngineArgs
    modules["vllm.sampling_params"].SamplingParams = classes.SamplingParams
    modules["vllm.sampling_params"].RequestOutputKind = classes.RequestOutputKind
    modules["vllm.v1.engine.async_llm"].AsyncLLM = classes.AsyncLLM
    for name, module in modules.items():
        monkeypatch.setitem(sys.modules, name, module)
    return classes, recorded


def serving_log(monkeypatch, caplog):
    """caplog at the serving logger itself (a server run earlier in this process may have reconfigured logging)."""
    logger = logging.getLogger("llava_dpa.serving")
    monkeypatch.setattr(logger, "disabled", False)
    logger.addHandler(caplog.handler)
    caplog.set_level(logging.INFO, logger="llava_dpa.serving")
    return logger


# ---- the stand-in and the engine's names --------------------------------------------------------------------------

@pytest.mark.fast
@pytest.mark.parametrize("version", VERSIONS)
def test_the_stand_in_refuses_names_vllm_does_not_have(version):
    classes, _ = stand_in(version)
    classes.SamplingParams(temperature=0.0, ignore_eos=True, output_kind=classes.RequestOutputKind.DELTA)
    with pytest.raises(TypeError, match=r"\['temprature'\]: not in vLLM"):
        classes.SamplingParams(temprature=0.0)
    with pytest.raises(TypeError, match="enable_prompt_embed"):
        classes.AsyncEngineArgs(model="m", enable_prompt_embed=True)
    assert SIGNATURES[version]["source"]["commit"] and SIGNATURES[version]["source"]["wheel_sha256"]


@pytest.mark.fast
@pytest.mark.parametrize("version", VERSIONS)
def test_start_gives_async_engine_args_vllms_own_names(version, monkeypatch, caplog, tmp_path):
    """`VLLMEngine.start`, not replaced: the exact AsyncEngineArgs it builds, every name a field of vLLM's; a
    misspelt extra argument is refused as vLLM refuses it; 0.11.0 is served with a warning that it turns prefix
    caching off with prompt embeddings, 0.11.1 without."""
    from llava_dpa.serving.engines import VLLMEngine

    classes, recorded = install(monkeypatch, version)
    serving_log(monkeypatch, caplog)
    engine = VLLMEngine.start(str(tmp_path), dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.7)
    assert recorded.engine_args == [dict(model=str(tmp_path), tokenizer=str(tmp_path), enable_prompt_embeds=True,
                                         dtype="bfloat16", max_model_len=512, gpu_memory_utilization=0.7)]
    assert set(recorded.engine_args[0]) <= set(SIGNATURES[version]["AsyncEngineArgs"])
    assert engine.sampling_params_class is classes.SamplingParams
    assert engine.delta is classes.RequestOutputKind.DELTA
    warned = "turns prefix caching off" in caplog.text
    assert warned == (version == "0.11.0"), caplog.text
    with pytest.raises(TypeError, match="max_num_seq"):
        VLLMEngine.start(str(tmp_path), max_num_seq=8)
    engine.shutdown()
    assert recorded.shutdowns == 1 and tmp_path.is_dir()  # a --target folder is the user's: kept


@pytest.mark.fast
def test_a_vllm_before_0_11_is_refused_by_name(monkeypatch, tmp_path):
    from llava_dpa.serving.engines import VLLMEngine

    install(monkeypatch, VERSIONS[0])
    monkeypatch.setattr(sys.modules["vllm"], "__version__", "0.10.2")
    with pytest.raises(RuntimeError, match=r"vLLM 0\.10\.2 is installed; --engine vllm needs vLLM >= 0\.11"):
        VLLMEngine.start(str(tmp_path))


@pytest.mark.fast
@pytest.mark.parametrize("version", VERSIONS)
def test_sampling_params_are_vllms_own_fields(version):
    """Greedy and sampled requests map to SamplingParams fields that vLLM has; the stop ids are given whole and
    vLLM's own tokenizer-eos stop is switched off (ignore_eos), so it stops where the hf engine stops."""
    from llava_dpa.serving.engines import Sampling, VLLMEngine

    classes, _ = stand_in(version)
    delta = classes.RequestOutputKind.DELTA
    engine = VLLMEngine(None, classes.SamplingParams, delta)
    greedy = engine.sampling_params(Sampling(max_tokens=7, temperature=0, top_p=0.5, top_k=20, seed=3,
                                             stop=["xyz"], stop_token_ids=[5, 9], presence_penalty=0.5,
                                             frequency_penalty=0.25))
    assert greedy.kwargs == dict(n=1, max_tokens=7, temperature=0.0, top_p=1.0, seed=3, stop=["xyz"],
                                 stop_token_ids=[5, 9], ignore_eos=True, presence_penalty=0.5,
                                 frequency_penalty=0.25, skip_special_tokens=True, output_kind=delta)
    sampled = engine.sampling_params(Sampling(max_tokens=9, temperature=0.7, top_p=0.5, top_k=20, seed=None))
    assert (sampled.temperature, sampled.top_p, sampled.top_k, sampled.seed, sampled.stop) == (0.7, 0.5, 20, None,
                                                                                              None)


@pytest.mark.fast
@pytest.mark.parametrize("version", VERSIONS)
def test_a_request_streams_deltas_and_a_left_one_is_aborted(version):
    """The prompt is vLLM's EmbedsPrompt ([tokens, hidden] on the CPU); DELTA outputs become the reply's pieces with
    the token count; closing the stream early closes vLLM's generator (AsyncLLM aborts the request then)."""
    from llava_dpa.serving.engines import Sampling, VLLMEngine

    classes, recorded = stand_in(version, finish="abort")
    engine = VLLMEngine(classes.AsyncLLM(), classes.SamplingParams, classes.RequestOutputKind.DELTA)
    embeds = torch.randn(5, 8)

    async def whole():
        return [d async for d in engine.generate(embeds, Sampling(max_tokens=5, temperature=0), "req-0")]

    deltas = asyncio.run(whole())
    assert [(d.text, d.finish_reason, d.completion_tokens) for d in deltas] == [
        ("The ", None, 1), ("shape ", None, 3), ("is red.", "stop", 6)]  # vLLM's "abort" ends the reply: stop
    prompt = recorded.calls[0].prompt
    assert set(prompt) == {"prompt_embeds"} and torch.equal(prompt["prompt_embeds"], embeds)
    assert recorded.closed == []

    async def first_only():
        stream = engine.generate(embeds, Sampling(max_tokens=5, temperature=0), "req-1")
        first = await stream.__anext__()
        await stream.aclose()  # the client went away
        return first

    assert asyncio.run(first_only()).text == "The "
    assert recorded.closed == ["req-1"]


# ---- what build_service does before vLLM starts ----------------------------------------------------------------

def _config_folder(folder: Path, max_positions: int) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"model_type": "qwen3", "max_position_embeddings": max_positions}))
    return folder


@pytest.mark.fast
def test_max_model_len_is_checked_against_the_targets_positions_before_loading(monkeypatch, tmp_path):
    from llava_dpa.serving import server as serving

    def no_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the length was checked")

    monkeypatch.setattr(serving, "load_pretrained_model", no_load)
    checkpoint = _config_folder(tmp_path / "ckpt", 1024)
    with pytest.raises(ValueError, match=r"--max-model-len 4096 is over the max_position_embeddings of the "
                                         r"checkpoint .*\(1024\).*pass --max-model-len 1024 or less"):
        serving.build_service(checkpoint, engine="vllm", max_model_len=4096)
    target = _config_folder(tmp_path / "target", 512)
    with pytest.raises(ValueError, match=r"of the target .*\(512\)"):
        serving.build_service(checkpoint, engine="vllm", target=str(target), max_model_len=1000)
    with pytest.raises(ValueError, match="unknown engine 'tgi': choose hf or vllm"):
        serving.build_service(checkpoint, engine="tgi")


def qwen3_generation_copy(checkpoint: Path, out: Path, tokenizer) -> tuple[Path, list[int]]:
    """The checkpoint (its files linked) with Qwen3's generation config: eos <|im_end|> and <|endoftext|>, where
    config.json names one eos (the zoo's generation config names one too)."""
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    assert len(set(eos)) == 2 and tokenizer.unk_token_id not in eos, eos
    out.mkdir()
    for f in checkpoint.iterdir():
        if f.name != "generation_config.json":
            (out / f.name).symlink_to(f)
    config = json.loads((checkpoint / "generation_config.json").read_text())
    config["eos_token_id"] = eos
    (out / "generation_config.json").write_text(json.dumps(config))
    return out, eos


@pytest.fixture(scope="module")
def qwen3_eos_checkpoint(dpa_stage2, tmp_path_factory):
    from llava_dpa.loading import load_tokenizer

    return qwen3_generation_copy(Path(dpa_stage2), tmp_path_factory.mktemp("gen") / "dpa_qwen3_eos",
                                 load_tokenizer(str(dpa_stage2)))


def _spy_loads(monkeypatch, serving) -> list:
    loads, load = [], serving.load_pretrained_model

    def spied(*args, **kwargs):
        out = load(*args, **kwargs)
        loads.append((kwargs.get("device"), kwargs.get("dtype"), out[1]))
        return out

    monkeypatch.setattr(serving, "load_pretrained_model", spied)
    return loads


def test_serve_starts_vllm_on_the_exported_target_without_its_layers(qwen3_eos_checkpoint, zoo, monkeypatch):
    """`build_service(engine="vllm")` with `start` as it is: the model is loaded on the CPU; when vLLM starts, the
    serving process holds no decoder layer and no LM head; the target folder vLLM gets loads as the stock Qwen3 with
    the checkpoint's generation config, and gives the LLaVA model's logits on the prompt embeddings vLLM receives;
    vLLM stops on exactly what the hf engine stops on; shutdown removes the temporary export."""
    from fastapi.testclient import TestClient
    from test_openai_serve import as_openai, conversation, llava_path
    from transformers import AutoModelForCausalLM, GenerationConfig

    from llava_dpa.serving import server as serving
    from llava_dpa.serving.engines import HFEngine, Sampling
    from llava_dpa.serving.openai_api import create_app
    from llava_dpa.serving.splice import Splice

    checkpoint, eos = qwen3_eos_checkpoint
    loads, at_start = _spy_loads(monkeypatch, serving), {}

    def on_start(args):
        model = loads[-1][2]
        at_start.update(layers=len(model.get_model().layers), head=type(model.lm_head).__name__,
                        export=json.loads((Path(args["model"]) / "llava_dpa_export.json").read_text()))

    _, recorded = install(monkeypatch, "0.11.1", on_start=on_start)
    service = serving.build_service(checkpoint, engine="vllm", device="cpu", model_name=SERVED)
    try:
        args = recorded.engine_args[0]
        target = Path(args["model"])
        assert target.parent.name.startswith(serving.TARGET_PREFIX) and args["tokenizer"] == str(target)
        assert (args["dtype"], args["max_model_len"]) == ("float32", service.max_length)
        assert [(device, dtype) for device, dtype, _ in loads] == [("cpu", torch.float32)]
        assert at_start == {"layers": 0, "head": "Identity",
                            "export": {"source": str(checkpoint.resolve()), "model_base": None, "dtype": "float32"}}
        assert GenerationConfig.from_pretrained(target).eos_token_id == eos  # the checkpoint's, not config.json's
        messages = conversation(zoo)
        with TestClient(create_app(service)) as client:
            answer = client.post("/v1/chat/completions", json={"model": SERVED, "messages": as_openai(messages),
                                                               "max_tokens": 5, "temperature": 0})
        assert answer.status_code == 200 and answer.json()["choices"][0]["message"]["content"] == "The shape is red."
        call = recorded.calls[-1]
        full = Splice.from_checkpoint(checkpoint)  # the whole model, layers included
        spliced = full.embed(messages)
        assert torch.equal(call.prompt["prompt_embeds"], spliced.embeds)
        stock = AutoModelForCausalLM.from_pretrained(target, dtype=torch.float32)
        assert type(stock).__name__ == "Qwen3ForCausalLM"
        with torch.inference_mode():
            logits = stock(inputs_embeds=call.prompt["prompt_embeds"][None]).logits[0]
        torch.testing.assert_close(logits, llava_path(full, spliced)[1], rtol=0, atol=1e-5)
        # the stop ids: vLLM is given the hf engine's whole set (both eos ids and the template's end of turn) and
        # adds nothing of its own (ignore_eos)
        hf = HFEngine(full.model, full.tokenizer).generate_kwargs(
            spliced.embeds, Sampling(max_tokens=5, temperature=0, stop_token_ids=service.stop_token_ids))
        assert set(call.params.stop_token_ids) == set(hf["eos_token_id"]) >= set(eos)
        assert call.params.ignore_eos is True
    finally:
        service.engine.shutdown()
    assert recorded.shutdowns == 1 and not target.parent.exists()


def test_a_failed_start_removes_the_export_written_in_the_serving_dtype(dpa_stage2, monkeypatch):
    """vLLM refusing to start (its worker's free-memory check raises ValueError) leaves no temporary folder; the
    export it was given was written in the serving dtype (bfloat16 here), not float32."""
    from safetensors import safe_open

    from llava_dpa.serving import server as serving

    seen = {}

    def refuse(args):
        seen["target"] = Path(args["model"])
        with safe_open(str(seen["target"] / "model.safetensors"), "pt") as f:
            seen["dtypes"] = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118 (safe_open is no dict)
        raise ValueError("Free memory on device (10.0/139.8 GiB) on startup is less than desired GPU memory "
                         "utilization (0.8, 111.8 GiB)")

    install(monkeypatch, "0.11.1", on_start=refuse)
    with pytest.raises(ValueError, match="Free memory on device"):
        serving.build_service(dpa_stage2, engine="vllm", device="cpu", dtype="bfloat16")
    assert seen["dtypes"] == {"BF16"}
    assert not seen["target"].parent.exists()


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
