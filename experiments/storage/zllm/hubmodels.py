"""Small Llama-style byte-level language models, their training loops and LoRA, for the synthetic model hub.

The module tree mirrors Hugging Face ``LlamaForCausalLM`` (``model.embed_tokens``, ``model.layers.N.self_attn.
q_proj`` ... ``model.norm``, ``lm_head``; rotary position embeddings with the ``rotate_half`` convention, no
biases, untied head), so ``state_dict()`` already carries the tensor names a real hub checkpoint has.
Everything here is plain deterministic torch: parameters come from explicit ``torch.Generator`` objects and
batches are sampled from one too, so the same seeds give the same floats on the same machine.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

VOCAB_SIZE = 256  # byte-level tokenizer: token id == byte value


@dataclass(frozen=True)
class Architecture:
    """Shape of one model family (the fields of a Hugging Face Llama config that change tensor shapes)."""

    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    def __post_init__(self) -> None:
        head_dim, remainder = divmod(self.hidden_size, self.num_attention_heads)
        if remainder or head_dim % 2:
            raise ValueError(f"hidden_size {self.hidden_size} must split into an even head_dim per head")

    def parameter_count(self) -> int:
        """Number of scalars in a model of this shape (embeddings, untied head, blocks, norms)."""
        h, i = self.hidden_size, self.intermediate_size
        per_layer = 4 * h * h + 3 * h * i + 2 * h
        return 2 * VOCAB_SIZE * h + self.num_hidden_layers * per_layer + h

    def hf_config(self, torch_dtype: torch.dtype) -> dict:
        """A Hugging Face style ``config.json`` body for this shape, published in ``torch_dtype``."""
        return {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_attention_heads,
            "head_dim": self.hidden_size // self.num_attention_heads,
            "hidden_act": "silu",
            "max_position_embeddings": self.max_position_embeddings,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "vocab_size": VOCAB_SIZE,
            "tie_word_embeddings": False,
            "attention_bias": False,
            "mlp_bias": False,
            "initializer_range": 0.02,
            "bos_token_id": None,
            "eos_token_id": None,
            "torch_dtype": str(torch_dtype).removeprefix("torch."),
            "use_cache": True,
        }

    def as_dict(self) -> dict:
        return asdict(self)


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


class Attention(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        h = arch.hidden_size
        self.num_heads = arch.num_attention_heads
        self.head_dim = h // self.num_heads
        self.q_proj = nn.Linear(h, h, bias=False)
        self.k_proj = nn.Linear(h, h, bias=False)
        self.v_proj = nn.Linear(h, h, bias=False)
        self.o_proj = nn.Linear(h, h, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        batch, length, hidden = x.shape

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, length, self.num_heads, self.head_dim).transpose(1, 2)

        q, k, v = heads(self.q_proj(x)), heads(self.k_proj(x)), heads(self.v_proj(x))
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, length, hidden))


class MLP(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.gate_proj = nn.Linear(arch.hidden_size, arch.intermediate_size, bias=False)
        self.up_proj = nn.Linear(arch.hidden_size, arch.intermediate_size, bias=False)
        self.down_proj = nn.Linear(arch.intermediate_size, arch.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.self_attn = Attention(arch)
        self.mlp = MLP(arch)
        self.input_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, arch: Architecture):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB_SIZE, arch.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(arch) for _ in range(arch.num_hidden_layers))
        self.norm = RMSNorm(arch.hidden_size, arch.rms_norm_eps)


class ByteLlama(nn.Module):
    """A decoder-only transformer over bytes whose ``state_dict`` names match ``LlamaForCausalLM``."""

    def __init__(self, arch: Architecture, init_generator: torch.Generator):
        super().__init__()
        self.arch = arch
        self.model = Backbone(arch)
        self.lm_head = nn.Linear(arch.hidden_size, VOCAB_SIZE, bias=False)
        head_dim = arch.hidden_size // arch.num_attention_heads
        inv_freq = 1.0 / arch.rope_theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        angles = torch.outer(torch.arange(arch.max_position_embeddings, dtype=torch.float32), inv_freq)
        angles = torch.cat((angles, angles), dim=-1)
        self.register_buffer("rope_cos", angles.cos(), persistent=False)
        self.register_buffer("rope_sin", angles.sin(), persistent=False)
        # Hugging Face's Llama initialisation: N(0, 0.02) for matrices and embeddings, ones for the norms.
        for name, param in self.named_parameters():
            if name.endswith("layernorm.weight") or name == "model.norm.weight":
                nn.init.ones_(param)
            else:
                nn.init.normal_(param, mean=0.0, std=0.02, generator=init_generator)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        cos, sin = self.rope_cos[:length], self.rope_sin[:length]
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))

    def published_state(self, dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The weights as a hub checkpoint stores them: HF names, cast from float32 to ``dtype``."""
        return {name: t.detach().to(dtype).contiguous() for name, t in self.state_dict().items()}


def model_from_published(arch: Architecture, state: dict[str, torch.Tensor]) -> ByteLlama:
    """A float32 model initialised from a published (bf16/fp16) checkpoint, as a fine-tuner would load it.

    Starting from the published weights rather than the float32 training weights matters: tensors a
    fine-tune leaves untouched then round-trip bit-exactly (16-bit -> float32 -> 16-bit is lossless).
    """
    model = ByteLlama(arch, torch.Generator().manual_seed(0))
    model.load_state_dict({name: t.float() for name, t in state.items()})
    return model


class LoRALinear(nn.Module):
    """A frozen ``nn.Linear`` plus a trainable low-rank update ``(alpha / rank) * B @ A`` (B starts at 0)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, init_generator: torch.Generator):
        super().__init__()
        self.base = base
        self.base.weight.requires_grad_(False)
        self.scale = alpha / rank
        self.lora_A = nn.Parameter(torch.empty(rank, base.in_features))
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, rank))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=init_generator)  # as PEFT does

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + self.scale * F.linear(F.linear(x, self.lora_A), self.lora_B)

    def merged(self) -> nn.Linear:
        """The base layer with the adapter folded into its weight (what a "merged LoRA" upload contains)."""
        with torch.no_grad():
            self.base.weight += self.scale * (self.lora_B @ self.lora_A)
        return self.base


def attach_lora(model: ByteLlama, targets: tuple[str, ...], rank: int, alpha: float, seed: int) -> None:
    """Freeze every parameter of ``model`` and wrap the named attention projections with LoRA adapters."""
    generator = torch.Generator().manual_seed(seed)
    for param in model.parameters():
        param.requires_grad_(False)
    for layer in model.model.layers:
        for target in targets:
            setattr(layer.self_attn, target, LoRALinear(getattr(layer.self_attn, target), rank, alpha, generator))


def merge_lora(model: ByteLlama) -> None:
    """Fold every adapter into its base weight and restore plain ``nn.Linear`` modules (HF names again)."""
    for layer in model.model.layers:
        for name, child in list(layer.self_attn.named_children()):
            if isinstance(child, LoRALinear):
                setattr(layer.self_attn, name, child.merged())
    for param in model.parameters():
        param.requires_grad_(True)


def freeze_lower(model: ByteLlama, num_frozen_layers: int) -> None:
    """Freeze the token embeddings and the first ``num_frozen_layers`` decoder blocks."""
    model.model.embed_tokens.weight.requires_grad_(False)
    for layer in model.model.layers[:num_frozen_layers]:
        for param in layer.parameters():
            param.requires_grad_(False)


@dataclass(frozen=True)
class TrainingRun:
    """What one training run did; written into the ground-truth file for inspection."""

    text_domain: str
    steps: int
    learning_rate: float
    loss_first: float | None  # mean loss over the first tenth of the steps (None without steps)
    loss_last: float | None  # mean loss over the last tenth of the steps
    trainable_parameters: int


def train(
    model: ByteLlama,
    tokens: torch.Tensor,
    *,
    text_domain: str,
    steps: int,
    learning_rate: float,
    batch_size: int,
    seq_len: int,
    weight_decay: float,
    seed: int,
    progress_bar=None,
) -> TrainingRun:
    """Next-byte prediction with AdamW, linear warm-up and cosine decay, on random windows of ``tokens``.

    Only parameters with ``requires_grad`` are optimised, so frozen tensors stay bit-identical.
    """
    if tokens.numel() <= seq_len + 1:
        raise ValueError(f"need more than {seq_len + 1} training bytes, got {tokens.numel()}")
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=learning_rate, betas=(0.9, 0.95), weight_decay=weight_decay)
    warmup = max(1, steps // 10)

    def schedule(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup)))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, schedule)
    sampler = torch.Generator().manual_seed(seed)
    offsets_limit = tokens.numel() - seq_len - 1
    window = torch.arange(seq_len + 1)
    losses: list[float] = []
    model.train()
    for _ in range(steps):
        starts = torch.randint(0, offsets_limit, (batch_size, 1), generator=sampler)
        batch = tokens[starts + window]
        logits = model(batch[:, :-1])
        loss = F.cross_entropy(logits.reshape(-1, VOCAB_SIZE), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        scheduler.step()
        losses.append(loss.item())
        if progress_bar is not None:
            progress_bar.update(1)
            progress_bar.set_postfix(loss=f"{losses[-1]:.3f}", refresh=False)
    model.eval()
    tenth = max(1, steps // 10)
    return TrainingRun(
        text_domain=text_domain,
        steps=steps,
        learning_rate=learning_rate,
        loss_first=round(sum(losses[:tenth]) / tenth, 4) if losses else None,
        loss_last=round(sum(losses[-tenth:]) / tenth, 4) if losses else None,
        trainable_parameters=sum(p.numel() for p in trainable),
    )
