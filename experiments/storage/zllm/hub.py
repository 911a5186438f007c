"""Offline, reproducible generator of a small synthetic model hub for the zLLM/BitX storage experiment.

zLLM (arXiv:2505.06252) stores a hub of many fine-tunes of few base models. This module builds such a hub
from scratch, with no download: three families of byte-level Llama-style models pre-trained on different
slices of the local Python standard library, each with fine-tunes of different kinds (full fine-tune,
merged LoRA, frozen lower layers, a fine-tune of a fine-tune), a dtype conversion and a byte-identical
re-upload. Families ``A`` and ``B`` share one architecture (same tensor shapes, same dtype) so that a
pipeline can only tell them apart by the bits of their weights.

Layout written by :func:`generate_hub`::

    HUB/<org>--<name>/config.json                    Hugging Face style config (model_type "llama")
    HUB/<org>--<name>/model.safetensors              or model-0000k-of-0000n.safetensors shards
    HUB/<org>--<name>/model.safetensors.index.json   (only for sharded repos)
    HUB/hub_truth.json                               ground truth: repo -> family, base, kind, dtype

``hub_truth.json`` exists only to score a pipeline's family clustering afterwards; a compression pipeline
must never read it. The same preset and seed give byte-identical files on the same installation (Python,
torch and CPU); training text comes from the installed standard library, so another CPython version
produces a different, equally valid, hub.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TRUTH_FILENAME = "hub_truth.json"
SINGLE_FILE_NAME = "model.safetensors"
INDEX_FILE_NAME = "model.safetensors.index.json"

# Fine-tune kinds recorded in the ground truth.
KIND_BASE = "base"
KIND_FULL = "full_finetune"
KIND_LORA = "lora_merged"
KIND_FROZEN = "frozen_lower_finetune"
KIND_INSTRUCT = "instruct_finetune_of_finetune"
KIND_DTYPE = "dtype_conversion"
KIND_DUPLICATE = "duplicate_upload"


@dataclass(frozen=True)
class HubParams:
    """Every size and training knob of the hub; presets are instances, ``generate_hub`` overrides fields.

    ``shared_arch`` is used by families A and B (same shapes), ``other_arch`` by family C. Architectures
    may be given as dicts of :class:`~experiments.storage.zllm.hubmodels.Architecture` fields.
    """

    shared_arch: Any  # Architecture (kept as Any so that importing this module does not import torch)
    other_arch: Any
    seq_len: int
    batch_size: int
    pretrain_bytes: int  # text budget of each base model's pre-training corpus
    finetune_bytes: int  # text budget of each fine-tuning corpus
    base_steps: int
    base_lr: float
    full_finetune_steps: int
    full_finetune_lr: float
    lora_steps: int
    lora_lr: float
    lora_rank: int
    lora_alpha: float
    frozen_steps: int
    frozen_lr: float
    instruct_steps: int
    instruct_lr: float
    frozen_layers: int | None = None  # lower decoder blocks kept frozen; None freezes half of them
    weight_decay: float = 0.01
    max_shard_bytes: int | None = None  # split a checkpoint into HF-style shards above this many bytes
    num_threads: int | None = 1  # torch intra-op threads while generating; fixed for reproducibility


def _preset(name: str) -> HubParams:
    from .hubmodels import Architecture

    if name == "tiny":  # CI: every model < 1 MB, the whole hub in seconds
        return HubParams(
            shared_arch=Architecture(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=176),
            other_arch=Architecture(hidden_size=80, num_hidden_layers=3, num_attention_heads=4, intermediate_size=208),
            seq_len=64, batch_size=16, pretrain_bytes=400_000, finetune_bytes=200_000,
            base_steps=120, base_lr=3e-3, full_finetune_steps=30, full_finetune_lr=3e-5,
            lora_steps=30, lora_lr=1e-3, lora_rank=4, lora_alpha=8.0,
            frozen_steps=30, frozen_lr=3e-5, instruct_steps=20, instruct_lr=2e-5,
            max_shard_bytes=400_000,  # family C (~0.5 MB) is sharded, families A and B are single files
        )  # fmt: skip
    if name == "bench":  # tens of MB per model; a few minutes on two cores
        return HubParams(
            shared_arch=Architecture(hidden_size=384, num_hidden_layers=4, num_attention_heads=6, intermediate_size=1024),
            other_arch=Architecture(hidden_size=512, num_hidden_layers=3, num_attention_heads=8, intermediate_size=1376),
            seq_len=128, batch_size=8, pretrain_bytes=4_000_000, finetune_bytes=1_000_000,
            base_steps=200, base_lr=2e-3, full_finetune_steps=25, full_finetune_lr=3e-5,
            lora_steps=25, lora_lr=1e-3, lora_rank=8, lora_alpha=16.0,
            frozen_steps=25, frozen_lr=3e-5, instruct_steps=15, instruct_lr=2e-5,
            max_shard_bytes=16_000_000,  # family C (~19 MB) is sharded, families A and B are single files
            num_threads=None,
        )  # fmt: skip
    raise ValueError(f"unknown hub preset {name!r}; expected one of {', '.join(PRESETS)}")


PRESETS = ("tiny", "bench")


def hub_params(preset: str = "tiny", **overrides: Any) -> HubParams:
    """The parameters of a preset with some fields replaced (unknown field names raise ``TypeError``)."""
    from .hubmodels import Architecture

    params = _preset(preset)
    known = {f.name for f in dataclasses.fields(HubParams)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise TypeError(f"unknown hub parameter(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    for arch_field in ("shared_arch", "other_arch"):
        if isinstance(overrides.get(arch_field), dict):
            overrides[arch_field] = Architecture(**overrides[arch_field])
    return dataclasses.replace(params, **overrides)


@dataclass(frozen=True)
class RepoPlan:
    """One repository of the hub: how it is made, and the ground truth recorded about it."""

    repo: str
    family: str
    kind: str
    parent: str | None  # repo whose published weights this one starts from
    dtype: str  # "bfloat16" or "float16"
    text_domain: str | None = None


@dataclass(frozen=True)
class FamilyPlan:
    name: str
    arch_field: str  # "shared_arch" or "other_arch"
    pretrain_domain: str
    dtype: str
    repos: tuple[RepoPlan, ...]

    @property
    def base_repo(self) -> str:
        return self.repos[0].repo


def _family(name: str, arch_field: str, pretrain: str, dtype: str, org: str, model: str,
            extra: tuple[RepoPlan, ...] = ()) -> FamilyPlan:  # fmt: skip
    base = f"{org}--{model}-base"
    repos = (
        RepoPlan(base, name, KIND_BASE, None, dtype, pretrain),
        RepoPlan(f"docwriters--{model}-docs", name, KIND_FULL, base, dtype, "python_docs"),
        RepoPlan(f"adapter-works--{model}-license-lora-merged", name, KIND_LORA, base, dtype, "license_and_docs"),
        RepoPlan(f"frostbyte--{model}-qa-frozen", name, KIND_FROZEN, base, dtype, "docs_qa"),
    )
    return FamilyPlan(name, arch_field, pretrain, dtype, repos + extra)


def hub_plan() -> tuple[FamilyPlan, ...]:
    """The fixed set of repositories; sizes come from :class:`HubParams`, not from the plan."""
    return (
        _family("A", "shared_arch", "stdlib_code_forward", "bfloat16", "bytecode-labs", "pyllama", extra=(
            RepoPlan("docwriters--pyllama-docs-instruct", "A", KIND_INSTRUCT, "docwriters--pyllama-docs",
                     "bfloat16", "docs_qa"),
            RepoPlan("halfprecision--pyllama-base-fp16", "A", KIND_DTYPE, "bytecode-labs--pyllama-base", "float16"),
            RepoPlan("mirror-uploads--pyllama-docs", "A", KIND_DUPLICATE, "docwriters--pyllama-docs", "bfloat16"),
        )),
        _family("B", "shared_arch", "stdlib_code_reverse", "bfloat16", "tailend-ai", "revcoder"),
        _family("C", "other_arch", "stdlib_code_middle", "float16", "midway-research", "midllama"),
    )  # fmt: skip


@dataclass
class HubSummary:
    """What :func:`generate_hub` wrote."""

    path: Path
    repos: list[str]
    total_bytes: int  # bytes of every file in the hub, ground truth excluded
    truth: dict  # the content of hub_truth.json
    preset: str
    seed: int
    params: HubParams
    seconds: float = field(default=0.0, compare=False)


def derived_seed(seed: int, *labels: str) -> int:
    """A stable 63-bit seed for one purpose (Python's ``hash`` is salted per process, so it is not used)."""
    digest = hashlib.sha256("/".join((str(seed), *labels)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


@contextmanager
def _deterministic_torch(num_threads: int | None) -> Iterator[None]:
    """Deterministic kernels and a fixed thread count for the duration; the caller's settings come back."""
    import torch

    previous_deterministic = torch.are_deterministic_algorithms_enabled()
    previous_threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous_deterministic)
        torch.set_num_threads(previous_threads)


def write_checkpoint(repo_dir: Path, state: dict, config: dict, max_shard_bytes: int | None) -> list[str]:
    """Write ``config.json`` and the safetensors file(s) of one repo; returns the file names written."""
    from safetensors.torch import save_file

    repo_dir.mkdir(parents=True)
    (repo_dir / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    sizes = {name: t.numel() * t.element_size() for name, t in state.items()}
    total = sum(sizes.values())
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(state, str(repo_dir / SINGLE_FILE_NAME), metadata={"format": "pt"})
        return ["config.json", SINGLE_FILE_NAME]
    shards: list[list[str]] = [[]]
    shard_bytes = 0
    for name in state:  # greedy in state-dict order, as transformers' save_pretrained does
        if shards[-1] and shard_bytes + sizes[name] > max_shard_bytes:
            shards.append([])
            shard_bytes = 0
        shards[-1].append(name)
        shard_bytes += sizes[name]
    weight_map = {}
    files = []
    for index, names in enumerate(shards, start=1):
        filename = f"model-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file({name: state[name] for name in names}, str(repo_dir / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(names, filename))
        files.append(filename)
    index_body = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (repo_dir / INDEX_FILE_NAME).write_text(json.dumps(index_body, indent=2) + "\n")
    return ["config.json", INDEX_FILE_NAME, *files]


def _build_hub(hub_dir: Path, params: HubParams, preset: str, seed: int, progress: bool) -> dict:
    """Train and write every repo of the plan into ``hub_dir``; returns the ground-truth document."""
    import torch
    from tqdm.auto import tqdm

    from . import hubmodels as hm
    from .hubtext import domain_text

    dtypes = {"bfloat16": torch.bfloat16, "float16": torch.float16}
    families = hub_plan()
    published: dict[str, dict[str, torch.Tensor]] = {}  # repo -> state as written, parents for later repos
    corpora: dict[str, torch.Tensor] = {}
    truth_repos: dict[str, dict] = {}
    total_repos = sum(len(f.repos) for f in families)
    repo_bar = tqdm(total=total_repos, desc="hub repos", unit="repo", disable=not progress)

    def corpus(domain: str, budget: int) -> torch.Tensor:
        if domain not in corpora:
            corpora[domain] = torch.frombuffer(bytearray(domain_text(domain, budget)), dtype=torch.uint8).long()
        return corpora[domain]

    for family in families:
        arch = getattr(params, family.arch_field)
        frozen_layers = arch.num_hidden_layers // 2 if params.frozen_layers is None else params.frozen_layers
        for plan in family.repos:
            repo_bar.set_description(f"hub {plan.repo}")
            steps, lr, budget = {
                KIND_BASE: (params.base_steps, params.base_lr, params.pretrain_bytes),
                KIND_FULL: (params.full_finetune_steps, params.full_finetune_lr, params.finetune_bytes),
                KIND_LORA: (params.lora_steps, params.lora_lr, params.finetune_bytes),
                KIND_FROZEN: (params.frozen_steps, params.frozen_lr, params.finetune_bytes),
                KIND_INSTRUCT: (params.instruct_steps, params.instruct_lr, params.finetune_bytes),
            }.get(plan.kind, (0, 0.0, 0))
            training = None
            if plan.kind == KIND_DUPLICATE:
                state = published[plan.parent]  # written again below: same tensors -> identical bytes
            elif plan.kind == KIND_DTYPE:  # a conversion of the published checkpoint, as a re-uploader does
                state = {n: t.to(dtypes[plan.dtype]) for n, t in published[plan.parent].items()}
            else:
                if plan.kind == KIND_BASE:
                    model = hm.ByteLlama(arch, torch.Generator().manual_seed(derived_seed(seed, plan.repo, "init")))
                else:
                    model = hm.model_from_published(arch, published[plan.parent])
                if plan.kind == KIND_LORA:
                    hm.attach_lora(model, ("q_proj", "v_proj"), params.lora_rank, params.lora_alpha,
                                   derived_seed(seed, plan.repo, "lora"))  # fmt: skip
                elif plan.kind == KIND_FROZEN:
                    hm.freeze_lower(model, frozen_layers)
                with tqdm(total=steps, desc=f"train {plan.repo}", unit="step", leave=False,
                          disable=not progress) as step_bar:  # fmt: skip
                    run = hm.train(
                        model, corpus(plan.text_domain, budget), text_domain=plan.text_domain, steps=steps,
                        learning_rate=lr, batch_size=params.batch_size, seq_len=params.seq_len,
                        weight_decay=params.weight_decay, seed=derived_seed(seed, plan.repo, "data"),
                        progress_bar=step_bar,
                    )  # fmt: skip
                training = dataclasses.asdict(run)
                if plan.kind == KIND_LORA:
                    hm.merge_lora(model)
                state = model.published_state(dtypes[plan.dtype])
                del model
            published[plan.repo] = state
            files = write_checkpoint(hub_dir / plan.repo, state, arch.hf_config(dtypes[plan.dtype]),
                                     params.max_shard_bytes)  # fmt: skip
            truth_repos[plan.repo] = {
                "family": family.name,
                "base_repo": family.base_repo,
                "parent_repo": plan.parent,
                "kind": plan.kind,
                "dtype": plan.dtype,
                "architecture": family.arch_field,
                "files": files,
                "bytes": sum((hub_dir / plan.repo / name).stat().st_size for name in files),
                "parameters": arch.parameter_count(),
                "frozen_layers": frozen_layers if plan.kind == KIND_FROZEN else None,
                "duplicate_of": plan.parent if plan.kind == KIND_DUPLICATE else None,
                "training": training,
            }
            repo_bar.update(1)
    repo_bar.close()
    return {
        "_note": "GROUND TRUTH for scoring family clustering only. A storage pipeline must never read this file.",
        "generator": "experiments.storage.zllm.hub",
        "preset": preset,
        "seed": seed,
        "python_version": platform.python_version(),
        "torch_version": torch.__version__,
        "params": dataclasses.asdict(params),
        "families": {
            f.name: {
                "base_repo": f.base_repo,
                "architecture": f.arch_field,
                "pretrain_domain": f.pretrain_domain,
                "dtype": f.dtype,
                "repos": [r.repo for r in f.repos],
            }
            for f in families
        },
        "repos": dict(sorted(truth_repos.items())),
    }


def generate_hub(
    out_dir: str | Path, preset: str = "tiny", seed: int = 0, progress: bool = False, **overrides: Any
) -> HubSummary:
    """Generate the hub into ``out_dir`` (created; must be absent or empty unless ``overwrite=True``).

    ``overrides`` replace :class:`HubParams` fields of the preset (e.g. ``base_steps=10``). The hub is
    built in a hidden sibling directory and renamed into place at the end, so a crash leaves nothing
    half-written at ``out_dir``.
    """
    overwrite = bool(overrides.pop("overwrite", False))
    params = hub_params(preset, **overrides)
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"hub output path {out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not overwrite:
        raise FileExistsError(f"hub output directory {out_dir} exists and is not empty (pass overwrite=True)")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.parent / f".{out_dir.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)  # left over by a killed run of this same process id
    started = time.perf_counter()
    try:
        staging.mkdir()
        with _deterministic_torch(params.num_threads):
            truth = _build_hub(staging, params, preset, seed, progress)
        (staging / TRUTH_FILENAME).write_text(json.dumps(truth, indent=2) + "\n")
        if out_dir.is_dir():
            retired = out_dir.parent / f".{out_dir.name}.replaced-{os.getpid()}"
            out_dir.rename(retired)
            shutil.rmtree(retired)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    total_bytes = sum(p.stat().st_size for p in out_dir.rglob("*") if p.is_file() and p.name != TRUTH_FILENAME)
    return HubSummary(
        path=out_dir,
        repos=sorted(truth["repos"]),
        total_bytes=total_bytes,
        truth=truth,
        preset=preset,
        seed=seed,
        params=params,
        seconds=time.perf_counter() - started,
    )
