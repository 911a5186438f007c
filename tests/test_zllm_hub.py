"""Tests of the synthetic model hub generator of the zLLM/BitX experiment (experiments/storage/zllm/hub.py).

The tiny hub is generated once per module and checked against what each kind of upload must look like
at the bit level: frozen tensors bit-identical, fine-tuned tensors close, merged LoRA confined to q/v.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
safetensors = pytest.importorskip("safetensors")

from safetensors import safe_open  # noqa: E402

from experiments.storage.zllm.hub import (  # noqa: E402
    INDEX_FILE_NAME,
    KIND_BASE,
    KIND_DTYPE,
    KIND_DUPLICATE,
    KIND_FROZEN,
    KIND_FULL,
    KIND_INSTRUCT,
    KIND_LORA,
    TRUTH_FILENAME,
    generate_hub,
    hub_params,
)


@pytest.fixture(scope="module")
def tiny_hub(tmp_path_factory):
    return generate_hub(tmp_path_factory.mktemp("zllm") / "hub", preset="tiny", seed=0)


def file_digests(root: Path) -> dict[str, str]:
    return {
        path.relative_to(root).as_posix(): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*"))
        if path.is_file()
    }


def load_repo(repo_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a repo, following the shard index when there is one."""
    index = repo_dir / INDEX_FILE_NAME
    if index.exists():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    tensors = {}
    for name in files:
        with safe_open(str(repo_dir / name), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    return tensors


def words(tensor: torch.Tensor) -> torch.Tensor:
    """The raw 16-bit words of a bf16/fp16 tensor (bitwise comparisons, unlike ==, see -0.0 and NaN)."""
    return tensor.view(torch.int16)


def exponent_bits(tensor: torch.Tensor) -> torch.Tensor:
    shift, mask = (7, 0xFF) if tensor.dtype == torch.bfloat16 else (10, 0x1F)
    return (words(tensor) >> shift) & mask


def repos_of_kind(summary, kind: str) -> list[str]:
    return [repo for repo, info in summary.truth["repos"].items() if info["kind"] == kind]


def base_of(summary, repo: str) -> str:
    return summary.truth["repos"][repo]["base_repo"]


def test_tiny_hub_is_reproducible_byte_for_byte(tiny_hub, tmp_path):
    again = generate_hub(tmp_path / "again", preset="tiny", seed=0)
    assert file_digests(again.path) == file_digests(tiny_hub.path)


def test_layout_and_ground_truth_cover_every_repo(tiny_hub):
    hub = tiny_hub.path
    repo_dirs = sorted(p.name for p in hub.iterdir() if p.is_dir())
    truth = json.loads((hub / TRUTH_FILENAME).read_text())
    assert truth == tiny_hub.truth
    assert repo_dirs == sorted(truth["repos"]) == tiny_hub.repos
    assert "never read" in truth["_note"]
    assert all("--" in repo for repo in repo_dirs)
    kinds = {info["kind"] for info in truth["repos"].values()}
    assert kinds == {KIND_BASE, KIND_FULL, KIND_LORA, KIND_FROZEN, KIND_INSTRUCT, KIND_DTYPE, KIND_DUPLICATE}
    assert len(truth["families"]) >= 3
    for family, info in truth["families"].items():
        assert truth["repos"][info["base_repo"]]["kind"] == KIND_BASE
        assert {KIND_FULL, KIND_LORA, KIND_FROZEN} <= {truth["repos"][r]["kind"] for r in info["repos"]}
        assert all(truth["repos"][r]["family"] == family for r in info["repos"])
    for repo, info in truth["repos"].items():
        written = sorted(p.name for p in (hub / repo).iterdir())
        assert written == sorted(info["files"])
        assert info["bytes"] == sum((hub / repo / name).stat().st_size for name in written)
    assert tiny_hub.total_bytes == sum(info["bytes"] for info in truth["repos"].values())


def test_every_model_is_small_valid_safetensors_with_hf_names_and_config(tiny_hub):
    dtypes_seen = set()
    for repo, info in tiny_hub.truth["repos"].items():
        assert info["bytes"] < 1_000_000
        tensors = load_repo(tiny_hub.path / repo)
        config = json.loads((tiny_hub.path / repo / "config.json").read_text())
        assert config["model_type"] == "llama" and config["architectures"] == ["LlamaForCausalLM"]
        assert config["torch_dtype"] == info["dtype"] and config["vocab_size"] == 256
        dtype = getattr(torch, info["dtype"])
        assert {t.dtype for t in tensors.values()} == {dtype}
        dtypes_seen.add(dtype)
        hidden, layers = config["hidden_size"], config["num_hidden_layers"]
        expected = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
        for i in range(layers):
            prefix = f"model.layers.{i}."
            expected |= {prefix + n + ".weight" for n in ("input_layernorm", "post_attention_layernorm")}
            expected |= {f"{prefix}self_attn.{p}.weight" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
            expected |= {f"{prefix}mlp.{p}.weight" for p in ("gate_proj", "up_proj", "down_proj")}
        assert set(tensors) == expected
        assert tensors["model.embed_tokens.weight"].shape == (256, hidden)
        assert tensors[f"model.layers.{layers - 1}.mlp.down_proj.weight"].shape == (hidden, config["intermediate_size"])
        assert sum(t.numel() for t in tensors.values()) == info["parameters"]
        assert all(torch.isfinite(t).all() for t in tensors.values())
    assert dtypes_seen == {torch.bfloat16, torch.float16}


def test_sharded_repos_have_a_consistent_index(tiny_hub):
    sharded = [repo for repo in tiny_hub.repos if (tiny_hub.path / repo / INDEX_FILE_NAME).exists()]
    assert sharded, "the tiny preset shards the larger architecture"
    for repo in sharded:
        index = json.loads((tiny_hub.path / repo / INDEX_FILE_NAME).read_text())
        shard_files = sorted(set(index["weight_map"].values()))
        assert len(shard_files) > 1 and shard_files[0].startswith("model-00001-of-")
        tensors = load_repo(tiny_hub.path / repo)
        assert set(index["weight_map"]) == set(tensors)
        assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in tensors.values())


def test_bases_learned_next_byte_prediction(tiny_hub):
    for repo in repos_of_kind(tiny_hub, KIND_BASE):
        training = tiny_hub.truth["repos"][repo]["training"]
        assert training["loss_last"] < training["loss_first"] - 1.0, repo


def test_frozen_finetune_keeps_embeddings_and_lower_layers_bit_identical(tiny_hub):
    for repo in repos_of_kind(tiny_hub, KIND_FROZEN):
        frozen_layers = tiny_hub.truth["repos"][repo]["frozen_layers"]
        assert frozen_layers >= 1
        tuned, base = load_repo(tiny_hub.path / repo), load_repo(tiny_hub.path / base_of(tiny_hub, repo))
        frozen = {"model.embed_tokens.weight"} | {
            name for name in tuned for i in range(frozen_layers) if name.startswith(f"model.layers.{i}.")
        }
        for name in frozen:
            assert torch.equal(words(tuned[name]), words(base[name])), (repo, name)
        changed = [name for name in tuned if tuned[name].dim() == 2 and name not in frozen]
        assert changed
        for name in changed:
            assert not torch.equal(words(tuned[name]), words(base[name])), (repo, name)


def test_full_finetune_changes_every_matrix_but_stays_close(tiny_hub):
    for repo in repos_of_kind(tiny_hub, KIND_FULL) + repos_of_kind(tiny_hub, KIND_INSTRUCT):
        tuned, base = load_repo(tiny_hub.path / repo), load_repo(tiny_hub.path / base_of(tiny_hub, repo))
        same_exponent = []
        for name, tensor in tuned.items():
            if tensor.dim() != 2:
                continue
            assert not torch.equal(words(tensor), words(base[name])), (repo, name)
            same_exponent.append((exponent_bits(tensor) == exponent_bits(base[name])).float().mean().item())
        assert min(same_exponent) > 0.7, repo
        assert sum(same_exponent) / len(same_exponent) > 0.85, repo


def test_merged_lora_changes_only_q_and_v_projections(tiny_hub):
    for repo in repos_of_kind(tiny_hub, KIND_LORA):
        tuned, base = load_repo(tiny_hub.path / repo), load_repo(tiny_hub.path / base_of(tiny_hub, repo))
        assert set(tuned) == set(base)  # merged: no adapter tensors
        for name in tuned:
            identical = torch.equal(words(tuned[name]), words(base[name]))
            is_adapted = name.endswith(("self_attn.q_proj.weight", "self_attn.v_proj.weight"))
            assert identical != is_adapted, (repo, name)


def test_duplicate_upload_is_byte_identical(tiny_hub):
    duplicates = repos_of_kind(tiny_hub, KIND_DUPLICATE)
    assert duplicates
    for repo in duplicates:
        original = tiny_hub.truth["repos"][repo]["duplicate_of"]
        assert file_digests(tiny_hub.path / repo) == file_digests(tiny_hub.path / original)


def test_dtype_conversion_holds_the_same_values_in_the_other_dtype(tiny_hub):
    for repo in repos_of_kind(tiny_hub, KIND_DTYPE):
        converted, source = load_repo(tiny_hub.path / repo), load_repo(tiny_hub.path / base_of(tiny_hub, repo))
        for name, tensor in converted.items():
            assert tensor.dtype != source[name].dtype
            assert torch.allclose(tensor.float(), source[name].float(), rtol=0, atol=1e-6)


def test_same_architecture_families_differ_only_in_their_bits(tiny_hub):
    truth = tiny_hub.truth
    by_arch: dict[str, list[str]] = {}
    for info in truth["families"].values():
        by_arch.setdefault(info["architecture"], []).append(info["base_repo"])
    pairs = [bases for bases in by_arch.values() if len(bases) >= 2]
    assert pairs, "two families must share an architecture"
    first, second = pairs[0][:2]
    assert truth["repos"][first]["dtype"] == truth["repos"][second]["dtype"]
    assert (tiny_hub.path / first / "config.json").read_bytes() == (tiny_hub.path / second / "config.json").read_bytes()
    a, b = load_repo(tiny_hub.path / first), load_repo(tiny_hub.path / second)
    assert {n: t.shape for n, t in a.items()} == {n: t.shape for n, t in b.items()}
    for name, tensor in a.items():
        if tensor.dim() == 2:
            assert (words(tensor) == words(b[name])).float().mean().item() < 0.05, name
            assert (exponent_bits(tensor) == exponent_bits(b[name])).float().mean().item() < 0.6, name


def test_existing_non_empty_directory_is_refused_and_overwrite_replaces_it(tmp_path):
    target = tmp_path / "hub"
    target.mkdir()
    (target / "keep.txt").write_text("user data")
    with pytest.raises(FileExistsError, match=str(target)):
        generate_hub(target, preset="tiny")
    assert (target / "keep.txt").exists()
    quick = {"base_steps": 2, "full_finetune_steps": 1, "lora_steps": 1, "frozen_steps": 1, "instruct_steps": 1}
    summary = generate_hub(target, preset="tiny", overwrite=True, **quick)
    assert summary.path == target.absolute() and summary.params.base_steps == 2
    assert not (target / "keep.txt").exists() and (target / TRUTH_FILENAME).exists()
    assert [p.name for p in tmp_path.iterdir()] == ["hub"]  # no staging directory left behind


def test_unknown_parameters_and_presets_are_rejected():
    with pytest.raises(TypeError, match="no_such_knob"):
        hub_params("tiny", no_such_knob=1)
    with pytest.raises(ValueError, match="huge"):
        hub_params("huge")
    custom = hub_params("tiny", shared_arch={"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
                                             "intermediate_size": 64})  # fmt: skip
    assert custom.shared_arch.parameter_count() < hub_params("tiny").shared_arch.parameter_count()


def test_importing_the_hub_module_does_not_import_torch():
    code = "import sys, experiments.storage.zllm.hub; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])
