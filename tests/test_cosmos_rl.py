"""The cosmos-rl backend on CPU: the generated TOML, the self-contained dataset script run with
plain Python, the token-budget guard, and the export check and placement around the subprocess.
(cosmos-rl itself needs a GPU: its real run is in benchmarks/cosmos_rl_sft/results/.)"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib
from conftest import TINY, TRAINING_FORMAT

from av_grounding.dataset.formats import read_cosmos
from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.builtin import build_builtin
from av_grounding.models.loading import load_model
from av_grounding.params import FormatParams, TrainParams
from av_grounding.pipeline.reporting import report_hooks
from av_grounding.training.config import resolved
from av_grounding.training.cosmos_rl import (
    FREEZE_PATTERNS,
    OUTPUTS,
    CosmosRLError,
    cosmos_config,
    prepare_run,
    train_cosmos_rl,
)

REPO = Path(__file__).resolve().parents[1]
FORMAT = TRAINING_FORMAT


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    prompts = load_prompts(FORMAT.prompts)
    return build_builtin("tiny-qwen2_5_vl", tmp_path_factory.mktemp("base") / "base", 0, prompts.system, prompts.user,
                      FORMAT.min_pixels, FORMAT.max_pixels)


def test_toml_sets_every_trap_explicitly(dataset, base, tmp_path):
    params = resolved(TrainParams(backend="cosmos-rl", epochs=3, batch_size=2, grad_accum=4, lr=1e-5, save_every=5,
                                  keep_checkpoints=3))
    run, budget = prepare_run(params, FORMAT, base, dataset, tmp_path)
    config = tomllib.loads((run / "run.toml").read_text())
    assert config["policy"]["parallelism"]["tp_size"] == 1
    assert config["train"]["compile"] is False
    assert config["train"]["timestamp"] == "run"
    assert config["train"]["ckpt"]["enable_checkpoint"] is True
    assert config["train"]["ckpt"]["export_safetensors"] is True
    assert config["train"]["ckpt"]["save_freq"] == 5
    # cosmos-rl's resume looks in every folder beside output_dir for <folder>/checkpoints/step_N
    root, name = os.path.split(config["train"]["output_dir"])
    assert root and run / root / name == run / OUTPUTS
    assert config["train"]["ckpt"]["max_keep"] == 4  # cosmos-rl counts the final save; deleting one drops its export
    assert cosmos_config(resolved(TrainParams(backend="cosmos-rl")), FORMAT, base, run, 8)["train"]["ckpt"][
        "max_keep"] == -1  # keep_checkpoints 0: all
    policy = config["train"]["train_policy"]
    assert (policy["type"], policy["mini_batch"], policy["conversation_column_name"]) == ("sft", 2, "conversations")
    assert config["train"]["train_batch_per_replica"] == 8
    assert (config["train"]["epoch"], config["train"]["optm_lr"]) == (3, 1e-5)
    assert config["policy"]["model_max_length"] == FORMAT.model_max_length
    assert "freeze_pattern" not in config["policy"]  # everything trains by default
    # Relative paths only: the run folder is a DVC output and must not depend on where it lives.
    assert (run / config["policy"]["model_name_or_path"]).resolve() == base.resolve()
    assert str(tmp_path) not in (run / "run.toml").read_text() + (run / "conversations.jsonl").read_text()
    assert budget["samples"] == len(read_cosmos(dataset / "train"))


def test_same_params_give_the_same_run_folder_bytes(dataset, base, tmp_path):
    params = resolved(TrainParams(backend="cosmos-rl"))
    first, _ = prepare_run(params, FORMAT, base, dataset, tmp_path / "a")
    second, _ = prepare_run(params, FORMAT, base, dataset, tmp_path / "b")
    for name in ("run.toml", "conversations.jsonl", "cosmos_rl_dataset.py"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name


def test_dataset_script_yields_cosmos_rl_conversations_with_plain_python(dataset, base, tmp_path):
    run, _ = prepare_run(resolved(TrainParams(backend="cosmos-rl")), FORMAT, base, dataset, tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    shown = subprocess.run([sys.executable, "-I", str(run / "cosmos_rl_dataset.py"), "--preview", "3"], cwd="/",
                           env=env, capture_output=True, text=True, timeout=60, check=True).stdout.splitlines()
    samples = {s.answer: s for s in read_cosmos(dataset / "train")}
    assert len(shown) == 3
    for line in shown:
        system, user, assistant = json.loads(line)
        assert [system["role"], user["role"], assistant["role"]] == ["system", "user", "assistant"]
        assert isinstance(system["content"], str) and isinstance(assistant["content"], str)
        image, text = user["content"]
        assert image["type"] == "image" and text["type"] == "text"
        sample = samples[assistant["content"]]
        assert Path(image["image"]).is_absolute() and Path(image["image"]).resolve() == sample.image.resolve()
        assert (image["min_pixels"], image["max_pixels"]) == (FORMAT.min_pixels, FORMAT.max_pixels)
        assert (system["content"], text["text"]) == (sample.system, sample.user)


def test_over_budget_samples_are_dropped_and_counted(dataset, base, tmp_path):
    from av_grounding.models.inputs import Encoder
    from av_grounding.models.loading import load_image_processor, load_tokenizer

    encoder = Encoder(load_tokenizer(base), load_image_processor(base), FORMAT.min_pixels, FORMAT.max_pixels, 10**6)
    lengths = sorted(len(encoder.encode(s).input_ids) for s in read_cosmos(dataset / "train"))
    limit = lengths[len(lengths) // 2]
    fmt = FormatParams(prompts=FORMAT.prompts, eval_clips=1, model_max_length=limit)
    run, budget = prepare_run(resolved(TrainParams(backend="cosmos-rl")), fmt, base, dataset, tmp_path)
    kept = sum(length <= limit for length in lengths)
    assert budget["samples"] == kept == len((run / "conversations.jsonl").read_text().splitlines())
    assert budget["samples_over_max_length"] == len(lengths) - kept > 0
    assert all("model_max_length" in reason for reason in budget["over_budget"])


def test_no_sample_within_the_budget_is_an_error_naming_the_split(dataset, base, tmp_path):
    from av_grounding.models.inputs import BudgetError

    fmt = FormatParams(prompts=FORMAT.prompts, eval_clips=1, model_max_length=10)
    with pytest.raises(BudgetError, match=r"train: no sample fits model_max_length 10"):
        prepare_run(resolved(TrainParams(backend="cosmos-rl")), fmt, base, dataset, tmp_path)


@pytest.mark.parametrize("model", TINY)
def test_freeze_patterns_select_exactly_their_part(model, tmp_path):
    """Against the real parameter names of both architectures as Hugging Face names them, as
    cosmos-rl's wrapper of them does (one more ``model.``) and as its native Qwen2.5-VL does."""
    import torch
    from transformers import AutoModelForImageTextToText

    from av_grounding.models.builtin import builtin_config

    with torch.device("meta"):
        names = [n for n, _ in AutoModelForImageTextToText.from_config(builtin_config(model)).named_parameters()]
    names += [f"model.{n}" for n in names] + [n.removeprefix("model.") for n in names if n.startswith("model.visual.")]
    names += [re.sub(r"^model\.language_model\.", "model.", n) for n in names if n.startswith("model.language_model")]

    def part(name: str) -> str:
        if "visual." in name:
            return "train_projector" if "merger" in name else "train_vision"
        return "train_llm"

    for switch, pattern in FREEZE_PATTERNS.items():
        matched = {n for n in names if re.search(pattern, n)}
        assert matched == {n for n in names if part(n) == switch}, switch


def test_switches_and_lora_become_freeze_patterns_and_lora_table(dataset, base, tmp_path):
    params = resolved(TrainParams(backend="cosmos-rl", train_vision=False, lora=True, lora_rank=8))
    run, _ = prepare_run(params, FORMAT, base, dataset, tmp_path)
    config = tomllib.loads((run / "run.toml").read_text())
    assert config["policy"]["freeze_pattern"] == [FREEZE_PATTERNS["train_vision"]]
    assert config["policy"]["lora"]["r"] == 8


def test_lora_on_a_base_that_is_not_a_local_folder_stops_before_cosmos_rl_runs(dataset, tmp_path):
    """Its export is the adapter alone, merged into the base weights afterwards."""
    params = resolved(TrainParams(backend="cosmos-rl", lora=True))
    with pytest.raises(CosmosRLError, match=r"train\.model 'nvidia/Cosmos-Reason1-7B': LoRA through cosmos-rl needs"):
        prepare_run(params, FORMAT, "nvidia/Cosmos-Reason1-7B", dataset, tmp_path)
    assert not (tmp_path / "cosmos-rl").exists()


def _executable(folder: Path, body: str) -> str:
    path = folder / "cosmos-rl"
    path.write_text(f"#!{sys.executable}\n{body}")
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return str(path)


def test_a_run_that_exports_nothing_is_an_error_naming_the_log(dataset, base, tmp_path):
    """cosmos-rl's launcher exits 0 even when a worker crashed: the export is what counts."""
    crashed = _executable(tmp_path, "print('worker 0: CUDA error: out of memory')\n")
    params = resolved(TrainParams(backend="cosmos-rl", cosmos_rl_executable=crashed))
    with pytest.raises(CosmosRLError, match=r"(?s)cosmos-rl\.log.*exited with code 0.*out of memory"):
        train_cosmos_rl(params, FORMAT, base, dataset, tmp_path / "train", report_hooks(tmp_path / "live", None))


def test_exports_left_by_a_crashed_attempt_do_not_count_as_success(dataset, base, tmp_path):
    """A rerun whose cosmos-rl fails (here at once, exit 1) must not place the older exports."""
    output = tmp_path / "train"
    stale = output / "cosmos-rl" / "outputs" / "safetensors" / "step_20"
    stale.mkdir(parents=True)
    (stale / "00000.safetensors").write_bytes(b"weights of an interrupted run")
    failing = _executable(tmp_path, "import sys\nprint('Process exited as soon as launched')\nsys.exit(1)\n")
    params = resolved(TrainParams(backend="cosmos-rl", cosmos_rl_executable=failing))
    with pytest.raises(CosmosRLError, match=r"(?s)exited with code 1.*before this run: 20, after: 20.*as soon as"):
        train_cosmos_rl(params, FORMAT, base, dataset, output, report_hooks(tmp_path / "live", None))
    assert not (output / "model").exists()


def test_missing_executable_is_a_clear_error(dataset, base, tmp_path):
    params = resolved(TrainParams(backend="cosmos-rl", cosmos_rl_executable=str(tmp_path / "nowhere" / "cosmos-rl")))
    with pytest.raises(CosmosRLError, match=r"cosmos_rl_executable.*not found"):
        train_cosmos_rl(params, FORMAT, base, dataset, tmp_path / "train", report_hooks(tmp_path / "live", None))


def test_exports_are_placed_where_infer_loads_models(dataset, base, tmp_path):
    """An executable that writes what cosmos-rl exports (safetensors + config per step) stands in
    for the GPU run here; the stage must pick the last step as the model, keep earlier steps as
    checkpoints, and complete each with the tokenizer and image processor."""
    exporter = _executable(tmp_path, (
        "import shutil, sys, tomllib\n"
        "config = tomllib.load(open('run.toml', 'rb'))\n"
        "out = f\"{config['train']['output_dir']}/safetensors\"\n"
        "for step in (2, 4):\n"
        "    print(f'[rank0]:[cosmos] INFO - Step: {step}/4, Loss: {3.0 / step:.5f}, Grad norm: 1.5, '\n"
        "          'Iteration time: 0.25s, optimizer/lr_model.language_model: 1.0e-05, '\n"
        "          'optimizer/lr_model.visual: 1.0e-05')\n"
        "    shutil.copytree(config['policy']['model_name_or_path'], f'{out}/step_{step}',\n"
        "                    ignore=shutil.ignore_patterns('tokenizer*', 'preprocessor*', 'chat_template*'))\n"))
    output = tmp_path / "train"
    params = resolved(TrainParams(backend="cosmos-rl", cosmos_rl_executable=exporter))
    summary = train_cosmos_rl(params, FORMAT, base, dataset, output,
                              report_hooks(tmp_path / "live", tmp_path / "timing.json"))
    assert (summary["steps"], summary["backend"], summary["final_loss"]) == (4, "cosmos-rl", 0.75)
    timing = json.loads((tmp_path / "timing.json").read_text())
    assert timing["per_step"]["step"] == [2, 4] and timing["step_seconds"] == 0.5  # cosmos-rl's step timer
    assert timing["model_tflops_per_s"] is None  # not counted for cosmos-rl
    loss = (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").read_text().splitlines()
    # DVCLive numbers optimizer steps from 0 for both backends: cosmos-rl's "Step: 2" (two steps done) logs at 1.
    assert [line.split("\t")[:2] for line in loss[1:]] == [["1", "1.5"], ["3", "0.75"]]
    assert sorted(p.name for p in (output / "checkpoints").iterdir()) == ["step_000002"]
    loaded = load_model(output / "model")
    assert loaded.tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655
    assert not (output / "cosmos-rl" / "outputs").exists()


LOGITS = """
import json, sys, torch, transformers
from transformers import AutoModelForImageTextToText, AutoTokenizer
for folder in sys.argv[1:]:
    model = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    ids = tokenizer.apply_chat_template([{"role": "user", "content": "a car at [1.5, 2]"}], add_generation_prompt=True)
    ids = ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    print(json.dumps({"version": transformers.__version__, "architectures": model.config.architectures,
                      "ids": list(ids), "top": logits.topk(5).indices.tolist(), "logits": logits[:50].tolist()}))
"""


@pytest.mark.slow
def test_tiny_models_are_the_same_model_under_cosmos_rls_transformers_4(tmp_path):
    """cosmos-rl runs transformers 4.57, the project 5.x: each saved tiny model must load as the
    same tokenizer and the same network in both (rotary sections, tied head, architectures). One
    process per version reads both architectures' folders."""
    side = tmp_path / "transformers4"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--target", str(side),
                    "transformers==4.57.6", "tokenizers==0.22.2", "huggingface_hub==0.36.2"], check=True, timeout=600)
    prompts = load_prompts(FORMAT.prompts)
    folders = [str(build_builtin(model, tmp_path / model, 0, prompts.system, prompts.user, FORMAT.min_pixels,
                                 FORMAT.max_pixels)) for model in TINY]
    outputs = []
    for extra_path in ("", str(side)):
        env = {**os.environ, "PYTHONPATH": extra_path, "PYTHONWARNINGS": "ignore"}
        run = subprocess.run([sys.executable, "-c", LOGITS, *folders], env=env, check=False, capture_output=True,
                             text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        outputs.append([json.loads(line) for line in run.stdout.strip().splitlines()[-len(folders):]])
    for model, new, old in zip(TINY, *outputs):
        assert (new["version"][0], old["version"]) == ("5", "4.57.6"), model
        assert old["architectures"] == new["architectures"] and old["ids"] == new["ids"], model
        assert old["top"] == new["top"], model
        assert old["logits"] == pytest.approx(new["logits"], abs=1e-5), model


def test_dataset_script_names_the_file_and_item_of_a_malformed_conversation(dataset, base, tmp_path):
    run, _ = prepare_run(resolved(TrainParams(backend="cosmos-rl")), FORMAT, base, dataset, tmp_path)
    lines = (run / "conversations.jsonl").read_text().splitlines()
    (run / "conversations.jsonl").write_text("\n".join([lines[0], '{"role": "user"', *lines[2:]]) + "\n")
    shown = subprocess.run([sys.executable, "-I", str(run / "cosmos_rl_dataset.py"), "--preview", "3"],
                           check=False, capture_output=True, text=True, timeout=60)
    assert shown.returncode != 0 and len(shown.stdout.splitlines()) == 1
    assert f"{run / 'conversations.jsonl'}: conversation 1" in shown.stderr
