"""cosmos-rl's exports placed as model folders (training/cosmos_rl_export.py), on CPU: exports
written in cosmos-rl 0.4.7's names and layout (full weights, LoRA adapters), loaded back, and the
LoRA merge cross-checked against PEFT's ``merge_and_unload``."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, TRAINING_FORMAT
from safetensors.torch import save_file

from av_grounding.dataset.prompts import load_prompts
from av_grounding.models.builtin import build_builtin
from av_grounding.models.loading import WeightsMismatch, load_model
from av_grounding.training.cosmos_rl_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, INDEX, ExportError, place_export

FORMAT = TRAINING_FORMAT
# transformers 4.57.6's checkpoint conversion mappings (cosmos-rl's environment; Qwen3-VL has none).
# cosmos-rl 0.4.7 names exported weights by reversing them (utils.reverse_hf_checkpoint_mapping:
# the escaped target becomes the pattern, the source pattern the replacement text).
CONVERSION = {"qwen2_5_vl": {"^visual": "model.visual", r"^model(?!\.(language_model|visual))": "model.language_model"},
              "qwen3_vl": {}}


def cosmos_rl_name(model_type: str, name: str) -> str:
    """A parameter's name in cosmos-rl 0.4.7's export (its HF weight mapper's
    ``policy_map_local_key_to_hf_key``), from the transformers model's own name."""
    for pattern, replacement in {"^" + re.escape(v): k.lstrip("^") for k, v in CONVERSION[model_type].items()}.items():
        if re.match(pattern, name):
            return re.sub(pattern, replacement, name)
    return name


@pytest.fixture(scope="module", params=TINY)
def base(request, tmp_path_factory) -> Path:
    prompts = load_prompts(FORMAT.prompts)
    return build_builtin(request.param, tmp_path_factory.mktemp("base") / request.param, 0, prompts.system,
                         prompts.user, FORMAT.min_pixels, FORMAT.max_pixels)


def parameters(folder: Path) -> dict[str, torch.Tensor]:
    return {name: p.detach().clone() for name, p in load_model(folder).model.named_parameters()}


def test_cosmos_rl_names_qwen2_5_vl_language_weights_with_the_lookahead_pattern():
    """The defect the placement repairs, as cosmos-rl's mapping produces it."""
    assert cosmos_rl_name("qwen2_5_vl", "model.language_model.layers.0.mlp.up_proj.weight") == \
        "model(?!\\.(language_model|visual)).layers.0.mlp.up_proj.weight"
    assert cosmos_rl_name("qwen2_5_vl", "model.visual.blocks.0.attn.qkv.weight") == "visual.blocks.0.attn.qkv.weight"
    assert cosmos_rl_name("qwen3_vl", "model.language_model.norm.weight") == "model.language_model.norm.weight"


def full_export(base: Path, folder: Path, seed: int = 1) -> dict[str, torch.Tensor]:
    """A full fine-tuning export as cosmos-rl writes it (two chunks and an index, every weight
    moved); returns the weights it holds by the transformers model's names."""
    model = load_model(base).model
    generator = torch.Generator().manual_seed(seed)
    trained = {name: p.detach() + 0.01 * torch.randn(p.shape, generator=generator)
               for name, p in model.named_parameters()}
    names = sorted(trained)
    chunks = {"00000.safetensors": names[: len(names) // 2], "00001.safetensors": names[len(names) // 2:]}
    folder.mkdir(parents=True)
    weight_map = {}
    for file, chunk in chunks.items():
        tensors = {cosmos_rl_name(model.config.model_type, name): trained[name].contiguous() for name in chunk}
        save_file(tensors, folder / file)
        weight_map.update(dict.fromkeys(tensors, file))
    (folder / INDEX).write_text(json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map}))
    shutil.copy2(base / "config.json", folder / "config.json")
    return trained


def test_a_full_export_in_cosmos_rls_names_loads_as_the_trained_model(base, tmp_path):
    trained = full_export(base, tmp_path / "export")
    place_export(tmp_path / "export", base, tmp_path / "model")
    loaded = parameters(tmp_path / "model")
    assert loaded.keys() == trained.keys()
    for name, tensor in trained.items():
        assert torch.equal(loaded[name], tensor), name
    assert load_model(tmp_path / "model").tokenizer.convert_tokens_to_ids("<|image_pad|>") == 151655


def lora_export(base: Path, folder: Path, rank: int, alpha: float, rslora: bool) -> dict[str, tuple]:
    """A LoRA export as cosmos-rl writes it: factors on every linear layer but the output layer
    (its ``all-linear``), its adapter config, and the files it copies from the base. Returns the
    factors (A, B) by module name of the transformers model."""
    model = load_model(base).model
    generator = torch.Generator().manual_seed(2)
    factors = {name: (torch.randn(rank, module.in_features, generator=generator),
                      torch.randn(module.out_features, rank, generator=generator))
               for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and name != "lm_head"}
    folder.mkdir(parents=True)
    model_type = model.config.model_type
    save_file({f"base_model.model.{cosmos_rl_name(model_type, f'{name}.lora_{half}.weight')}": tensor
               for name, pair in factors.items() for half, tensor in zip("AB", pair)}, folder / ADAPTER_WEIGHTS)
    config = {"r": rank, "lora_alpha": alpha, "lora_dropout": 0.05, "target_modules": "all-linear",
              "use_rslora": rslora, "modules_to_save": None, "alpha_pattern": None, "r_pattern": None,
              "init_lora_weights": True, "lora_names": ["default"], "lora_path": None, "primary_adapter": None,
              "base_model_name_or_path": str(base), "peft_type": "LORA"}
    (folder / ADAPTER_CONFIG).write_text(json.dumps(config))
    for name in ("config.json", "chat_template.json", INDEX):  # what cosmos-rl copies when missing
        if (base / name).is_file():
            shutil.copy2(base / name, folder / name)
    return factors


@pytest.mark.parametrize("rslora", [False, True])
def test_a_lora_export_is_merged_as_peft_merges_it(base, tmp_path, rslora):
    """PEFT, given the same factors on the same modules, is the independent reference."""
    from peft import LoraConfig, get_peft_model

    factors = lora_export(base, tmp_path / "export", rank=4, alpha=8.0, rslora=rslora)
    place_export(tmp_path / "export", base, tmp_path / "model")
    assert not (tmp_path / "model" / ADAPTER_WEIGHTS).exists() and not (tmp_path / "model" / ADAPTER_CONFIG).exists()
    merged = parameters(tmp_path / "model")

    reference = get_peft_model(load_model(base).model, LoraConfig(r=4, lora_alpha=8.0, use_rslora=rslora,
                                                                   target_modules=sorted(factors)))
    with torch.no_grad():
        for name, module in reference.base_model.model.named_modules():
            if name in factors:
                module.lora_A["default"].weight.copy_(factors[name][0])
                module.lora_B["default"].weight.copy_(factors[name][1])
    expected = {name: p.detach() for name, p in reference.merge_and_unload().named_parameters()}
    unchanged = parameters(base)
    assert merged.keys() == expected.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(merged[name], tensor, rtol=1e-5, atol=1e-5, msg=name)
        assert torch.equal(merged[name], unchanged[name]) == (name.removesuffix(".weight") not in factors), name


def test_an_export_whose_weights_are_not_the_bases_is_an_error_naming_it(base, tmp_path):
    full_export(base, tmp_path / "export")
    index = json.loads((tmp_path / "export" / INDEX).read_text())
    index["weight_map"]["model.extra_head.weight"] = "00000.safetensors"
    (tmp_path / "export" / INDEX).write_text(json.dumps(index))
    with pytest.raises(ExportError, match=r"export: the exported weights are not the base model's: "
                                          r"0 missing \(\), 1 unknown \(model\.extra_head\.weight\)"):
        place_export(tmp_path / "export", base, tmp_path / "model")
    assert not (tmp_path / "model").exists()


def test_adapters_on_modules_the_base_lacks_or_per_module_ranks_are_errors(base, tmp_path):
    lora_export(base, tmp_path / "export", rank=2, alpha=4.0, rslora=False)
    config = json.loads((tmp_path / "export" / ADAPTER_CONFIG).read_text())
    (tmp_path / "export" / ADAPTER_CONFIG).write_text(json.dumps({**config, "r_pattern": {"q_proj": 8}}))
    with pytest.raises(ExportError, match=r"adapter_config\.json: r_pattern is not supported"):
        place_export(tmp_path / "export", base, tmp_path / "model")
    (tmp_path / "export" / ADAPTER_CONFIG).write_text(json.dumps(config))
    save_file({"base_model.model.model.no_such.proj.lora_A.weight": torch.zeros(2, 3),
               "base_model.model.model.no_such.proj.lora_B.weight": torch.zeros(3, 2)},
              tmp_path / "export" / ADAPTER_WEIGHTS)
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors: 1 adapted weights the base model lacks "
                                          r"\(model\.no_such\.proj\.weight\)"):
        place_export(tmp_path / "export", base, tmp_path / "model")
    with pytest.raises(ExportError, match="is not a local folder"):
        place_export(tmp_path / "export", "nvidia/Cosmos-Reason1-7B", tmp_path / "model")


def test_misshapen_or_unreadable_adapters_are_errors_naming_the_file(base, tmp_path):
    factors = lora_export(base, tmp_path / "export", rank=2, alpha=4.0, rslora=False)
    module = sorted(factors)[0]
    model_type = json.loads((base / "config.json").read_text())["model_type"]
    down, up = factors[module]
    prefix = f"base_model.model.{cosmos_rl_name(model_type, module)}"
    save_file({f"{prefix}.lora_A.weight": down, f"{prefix}.lora_B.weight": up[:1].contiguous()},
              tmp_path / "export" / ADAPTER_WEIGHTS)  # B with one row: it would broadcast over W
    with pytest.raises(ExportError, match=rf"adapter_model\.safetensors: B @ A of .*{re.escape(module.split('.')[-1])}"
                                          r"\.weight is 1 x "):
        place_export(tmp_path / "export", base, tmp_path / "model")
    save_file({f"{prefix}.lora_A.weight": down, f"{prefix}.lora_B.weight": up[:, :1].contiguous()},
              tmp_path / "export" / ADAPTER_WEIGHTS)  # ranks that disagree
    with pytest.raises(ExportError, match=r"are not r x in and out x r"):
        place_export(tmp_path / "export", base, tmp_path / "model")
    (tmp_path / "export" / ADAPTER_WEIGHTS).write_bytes(b"not safetensors")
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors: cannot read it as safetensors"):
        place_export(tmp_path / "export", base, tmp_path / "model")
    (tmp_path / "export" / ADAPTER_WEIGHTS).unlink()
    with pytest.raises(ExportError, match=r"adapter_model\.safetensors: cannot read it as safetensors"):
        place_export(tmp_path / "export", base, tmp_path / "model")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]  # no half-written folder left


def test_an_index_naming_absent_shards_is_an_error_naming_it(base, tmp_path):
    full_export(base, tmp_path / "export")
    (tmp_path / "export" / "00001.safetensors").unlink()
    with pytest.raises(ExportError, match=r"model\.safetensors\.index\.json: names weight files the folder lacks: "
                                          r"00001\.safetensors"):
        place_export(tmp_path / "export", base, tmp_path / "model")


def test_a_folder_whose_weights_loading_drops_is_an_error_naming_it(base, tmp_path):
    """What the stage would have loaded unrepaired: transformers initialises the dropped weights
    at random and goes on; load_model stops."""
    shutil.copytree(base, tmp_path / "model")
    for file in (tmp_path / "model").glob("*.safetensors"):
        file.unlink()
    full_export(base, tmp_path / "export")
    for file in (tmp_path / "export").glob("*.safetensors"):
        shutil.copy2(file, tmp_path / "model" / file.name)
    shutil.copy2(tmp_path / "export" / INDEX, tmp_path / "model" / INDEX)
    if "qwen2_5_vl" in base.name:
        with pytest.raises(WeightsMismatch, match=r"model: the weights do not fit .*: \d+ missing \([^()]+ and \d+ "
                                                  r"more\); \d+ unexpected \(model\.language_model\(\?!"):
            load_model(tmp_path / "model")
    else:  # cosmos-rl names Qwen3-VL's weights as the hub does
        load_model(tmp_path / "model")
