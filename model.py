"""The encoder-decoder Transformer, written from scratch: no I/O, no distributed code.

Pre-norm blocks, sinusoidal positions, boolean masks handed to `F.scaled_dot_product_attention` (so nothing is
filled with -1e9 and fp16 cannot overflow). Under bf16 autocast the residual stream is bf16 from the embeddings to
the logits, while the parameters (the optimizer's master weights) stay fp32: see `compute_dtype` and `LayerNorm`.
The decoder layers read and extend a key/value cache when one is given; the cache and the search over outputs live in decoding.py.
"""

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclass
class ModelConfig:
    src_vocab_size: int
    tgt_vocab_size: int
    d_model: int = 256
    num_heads: int = 4
    num_layers: int = 3
    d_ff: int = 1024
    dropout: float = 0.1
    max_len: int = 128
    pad_id: int = 0
    tie_embeddings: bool = True
    share_embeddings: bool = False  # one vocabulary for both languages: the encoder uses the decoder's embedding


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


def compute_dtype(device_type: str) -> torch.dtype | None:
    """bf16 when the caller runs the model under bf16 autocast: the dtype the residual stream is kept in. None
    otherwise (fp32, and fp16 autocast, whose residual stream stays fp32 where fp16 would overflow)."""
    if torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.bfloat16:
        return torch.bfloat16
    return None


class LayerNorm(nn.LayerNorm):
    """Layer norm in the dtype of its input. Autocast would compute it in fp32 and hand fp32 to the residual
    stream, so every layer would cast in and out of bf16; here a bf16 input gives a bf16 output (the kernel still
    accumulates its statistics in fp32), and the fp32 parameters are cast to it: two vectors, not activations."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(x.device.type, enabled=False):
            return F.layer_norm(x, self.normalized_shape, self.weight.to(x.dtype), self.bias.to(x.dtype), self.eps)


class Attention(nn.Module):
    """Multi-head attention; queries from `x`, keys and values from `x` (self) or from `memory` (cross)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float, cross: bool):
        super().__init__()
        self.num_heads = num_heads
        self.cross = cross
        self.dropout = dropout
        self.q_proj = nn.Linear(d_model, d_model)
        self.kv_proj = nn.Linear(d_model, 2 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:  # (B, L, D) -> (B, H, L, D/H)
        b, length, d = t.shape
        return t.view(b, length, self.num_heads, d // self.num_heads).transpose(1, 2)

    def project_kv(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv_proj(source).chunk(2, dim=-1)
        return self._heads(k), self._heads(v)

    def forward(self, x, memory=None, mask=None, is_causal=False, cache=None):
        """`mask` is boolean, True where a query may attend. `cache` (decoding only, see decoding.py) keeps this
        layer's keys and values across calls: `cache.keys_values(self, source)` projects what is new and returns
        the keys, the values and a mask of the keys filled so far (None: all of them)."""
        q = self._heads(self.q_proj(x))
        source = memory if self.cross else x
        if cache is None:
            k, v = self.project_kv(source)
        else:
            k, v, filled = cache.keys_values(self, source)
            mask = filled if mask is None else mask
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                           dropout_p=self.dropout if self.training else 0.0)
        b, h, length, dh = y.shape
        return self.out_proj(y.transpose(1, 2).reshape(b, length, h * dh))


class FeedForward(nn.Module):
    def __init__(self, d_model: int, d_ff: int, dropout: float):
        super().__init__()
        self.up = nn.Linear(d_model, d_ff)
        self.down = nn.Linear(d_ff, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x):
        return self.down(self.dropout(F.gelu(self.up(x))))


class EncoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.norm_attn = LayerNorm(c.d_model)
        self.attn = Attention(c.d_model, c.num_heads, c.dropout, cross=False)
        self.norm_ff = LayerNorm(c.d_model)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, src_mask):
        x = x + self.dropout(self.attn(self.norm_attn(x), mask=src_mask))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.norm_self = LayerNorm(c.d_model)
        self.self_attn = Attention(c.d_model, c.num_heads, c.dropout, cross=False)
        self.norm_cross = LayerNorm(c.d_model)
        self.cross_attn = Attention(c.d_model, c.num_heads, c.dropout, cross=True)
        self.norm_ff = LayerNorm(c.d_model)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, memory, src_mask, cache=None):
        # With a cache, x holds only the newest position: it may see the whole cached prefix, so no causal mask.
        self_cache, cross_cache = (None, None) if cache is None else (cache.self_attention, cache.cross_attention)
        x = x + self.dropout(self.self_attn(self.norm_self(x), is_causal=cache is None, cache=self_cache))
        x = x + self.dropout(self.cross_attn(self.norm_cross(x), memory, mask=src_mask, cache=cross_cache))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class Transformer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.config = c
        if c.share_embeddings and c.src_vocab_size != c.tgt_vocab_size:
            raise ValueError("shared embeddings need one vocabulary size for both languages")
        # The layers' own initial draws are thrown away (reset_parameters draws every value again) and must not
        # move the global RNG: a model built on the meta device (FSDP) draws nothing here and still gets the same
        # initial values.
        with torch.random.fork_rng(devices=[]):
            self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
            self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
            self.embed_dropout = nn.Dropout(c.dropout)
            self.encoder_layers = nn.ModuleList(EncoderLayer(c) for _ in range(c.num_layers))
            self.decoder_layers = nn.ModuleList(DecoderLayer(c) for _ in range(c.num_layers))
            self.encoder_norm = LayerNorm(c.d_model)
            self.decoder_norm = LayerNorm(c.d_model)
            self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        # Shared as parameters, not as one module under two names: FSDP loads a module reached twice wrongly.
        if c.share_embeddings:
            self.src_embed.weight = self.tgt_embed.weight
        if c.tie_embeddings:
            self.output.weight = self.tgt_embed.weight
        self.register_buffer("positions", sinusoidal_positions(c.max_len, c.d_model), persistent=False)
        if not self.output.weight.is_meta:
            self.reset_parameters()

    def initial_values(self) -> Iterator[tuple[nn.Parameter, torch.Tensor]]:
        """Each parameter (a shared one once) with its initial value, drawn in host memory from the global RNG in
        a fixed order, one tensor at a time: whoever materializes the parameters (all at once here, shard by shard
        under FSDP) gets the same model from the same seed."""
        owner = {}
        for module in self.modules():
            for param in module.parameters(recurse=False):
                owner.setdefault(id(param), module)  # a shared parameter is initialized as its first module's
        for name, param in self.named_parameters():
            module, value = owner[id(param)], torch.empty(param.shape)
            if isinstance(module, nn.Embedding):
                # Embeddings are scaled by sqrt(d_model) in _embed, so unit-variance rows after scaling.
                nn.init.normal_(value, std=self.config.d_model ** -0.5)
            elif isinstance(module, nn.Linear) and name.endswith("weight"):
                nn.init.xavier_uniform_(value)
            elif isinstance(module, nn.LayerNorm) and name.endswith("weight"):
                nn.init.ones_(value)
            else:  # biases
                nn.init.zeros_(value)
            yield param, value

    @torch.no_grad()
    def reset_parameters(self) -> None:
        for param, value in self.initial_values():
            param.copy_(value)

    def reset_buffers(self, device: torch.device) -> None:
        """The constant position table, on `device`: after a model built on the meta device is materialized."""
        self.positions = sinusoidal_positions(self.config.max_len, self.config.d_model).to(device)

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor, offset: int = 0) -> torch.Tensor:
        length = tokens.shape[1]
        x = embedding(tokens) * math.sqrt(self.config.d_model) + self.positions[offset:offset + length]
        dtype = compute_dtype(x.device.type)
        return self.embed_dropout(x if dtype is None else x.to(dtype))  # the one cast of the residual stream

    def source_mask(self, src: torch.Tensor) -> torch.Tensor:
        """(B, 1, 1, S) boolean: True at real source tokens, the keys every query may attend to."""
        return (src != self.config.pad_id)[:, None, None, :]

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor) -> torch.Tensor:
        x = self._embed(self.src_embed, src)
        for layer in self.encoder_layers:
            x = layer(x, src_mask)
        return self.encoder_norm(x)

    def decode(self, tgt_in, memory, src_mask, caches=None, offset: int = 0) -> torch.Tensor:
        x = self._embed(self.tgt_embed, tgt_in, offset)
        for i, layer in enumerate(self.decoder_layers):
            x = layer(x, memory, src_mask, cache=None if caches is None else caches[i])
        return self.output(self.decoder_norm(x))

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, src_padded: bool = True) -> torch.Tensor:
        """Logits (B, T, V) for teacher-forced decoder inputs. Right-padded targets need no mask of their own:
        the causal mask already keeps every real position away from the padding that follows it. A source batch
        known to hold no padding (`src_padded` False, decided by the caller on the host) needs no mask either, and
        its attention can run in a fused kernel that takes none (FlashAttention)."""
        src_mask = self.source_mask(src) if src_padded else None
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# Rows of logits upcast to fp32 at a time by `cross_entropy_sum`: the whole (tokens x vocabulary) matrix in fp32
# would be the largest tensor of a step (2 GB at 16k tokens and a 32k vocabulary), written and read twice.
LOSS_CHUNK_ELEMENTS = 1 << 24


class _ChunkedCrossEntropy(torch.autograd.Function):
    """Label-smoothed cross-entropy summed over the target tokens, computed from logits in their own dtype, a
    chunk of rows at a time in fp32. Only the logits and one fp32 number per row (the log-sum-exp) are kept for
    backward, which recomputes each chunk's softmax."""

    @staticmethod
    def forward(ctx, logits, target, ignore_index: int, smoothing: float, rows_per_chunk: int):
        lse = torch.empty(logits.shape[0], dtype=torch.float32, device=logits.device)
        total = torch.zeros((), dtype=torch.float32, device=logits.device)
        for start in range(0, logits.shape[0], rows_per_chunk):
            x, y = logits[start:start + rows_per_chunk].float(), target[start:start + rows_per_chunk]
            chunk_lse = torch.logsumexp(x, dim=-1)
            lse[start:start + rows_per_chunk] = chunk_lse
            gold = x.gather(1, y.clamp(min=0)[:, None]).squeeze(1)
            loss = (1.0 - smoothing) * (chunk_lse - gold) + smoothing * (chunk_lse - x.mean(dim=-1))
            total += loss.masked_fill(y == ignore_index, 0.0).sum()
        ctx.save_for_backward(logits, target, lse)
        ctx.settings = (ignore_index, smoothing, rows_per_chunk)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        logits, target, lse = ctx.saved_tensors
        ignore_index, smoothing, rows_per_chunk = ctx.settings
        grad = torch.empty_like(logits)
        for start in range(0, logits.shape[0], rows_per_chunk):
            rows = slice(start, start + rows_per_chunk)
            y = target[rows]
            p = torch.exp(logits[rows].float() - lse[rows, None]).sub_(smoothing / logits.shape[1])
            p.scatter_add_(1, y.clamp(min=0)[:, None], torch.full_like(p[:, :1], smoothing - 1.0))
            p.masked_fill_((y == ignore_index)[:, None], 0.0)
            grad[rows] = p.mul_(grad_total)
        return grad, None, None, None, None


def cross_entropy_sum(logits: torch.Tensor, target: torch.Tensor, ignore_index: int,
                      label_smoothing: float = 0.0) -> torch.Tensor:
    """F.cross_entropy(logits.float(), target, ignore_index, label_smoothing, reduction="sum") for (N, V) logits,
    without an fp32 copy of the whole (N, V) matrix: an fp32 scalar."""
    rows_per_chunk = max(1, LOSS_CHUNK_ELEMENTS // logits.shape[1])
    return _ChunkedCrossEntropy.apply(logits, target, ignore_index, label_smoothing, rows_per_chunk)
