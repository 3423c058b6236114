"""The encoder-decoder Transformer, written from scratch: no I/O, no distributed code.

Pre-norm blocks, sinusoidal positions, boolean masks handed to `F.scaled_dot_product_attention` (so nothing is
filled with -1e9 and fp16 cannot overflow), and a key/value cache for incremental greedy decoding.
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


FINISHED_CHECK_EVERY = 8  # decoding steps between host reads of "has every sentence ended?"


def sinusoidal_positions(max_len: int, d_model: int) -> torch.Tensor:
    position = torch.arange(max_len, dtype=torch.float32).unsqueeze(1)
    inv_freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
    table = torch.zeros(max_len, d_model)
    table[:, 0::2] = torch.sin(position * inv_freq)
    table[:, 1::2] = torch.cos(position * inv_freq)
    return table


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
        """`mask` is boolean, True where a query may attend. `cache` (decoding only) is a dict that keeps
        this layer's keys/values: the projected memory for cross-attention; for self-attention, buffers of
        `cache["capacity"]` positions allocated once, filled one position per call (`cache["length"]` so far)."""
        q = self._heads(self.q_proj(x))
        if cache is None:
            k, v = self.project_kv(memory if self.cross else x)
        elif self.cross:
            if "k" not in cache:
                cache["k"], cache["v"] = self.project_kv(memory)
            k, v = cache["k"], cache["v"]
        else:
            k_new, v_new = self.project_kv(x)
            if "k" not in cache:
                shape = (*k_new.shape[:2], cache["capacity"], k_new.shape[3])
                cache["k"], cache["v"] = k_new.new_zeros(shape), v_new.new_zeros(shape)
                cache["length"] = 0
            start, end = cache["length"], cache["length"] + k_new.shape[2]
            cache["k"][:, :, start:end], cache["v"][:, :, start:end] = k_new, v_new
            cache["length"] = end
            k, v = cache["k"][:, :, :end], cache["v"][:, :, :end]
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
        self.norm_attn = nn.LayerNorm(c.d_model)
        self.attn = Attention(c.d_model, c.num_heads, c.dropout, cross=False)
        self.norm_ff = nn.LayerNorm(c.d_model)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, src_mask):
        x = x + self.dropout(self.attn(self.norm_attn(x), mask=src_mask))
        return x + self.dropout(self.ff(self.norm_ff(x)))


class DecoderLayer(nn.Module):
    def __init__(self, c: ModelConfig):
        super().__init__()
        self.norm_self = nn.LayerNorm(c.d_model)
        self.self_attn = Attention(c.d_model, c.num_heads, c.dropout, cross=False)
        self.norm_cross = nn.LayerNorm(c.d_model)
        self.cross_attn = Attention(c.d_model, c.num_heads, c.dropout, cross=True)
        self.norm_ff = nn.LayerNorm(c.d_model)
        self.ff = FeedForward(c.d_model, c.d_ff, c.dropout)
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x, memory, src_mask, cache=None):
        # With a cache, x holds only the newest position: it may see the whole cached prefix, so no causal mask.
        self_cache, cross_cache = (None, None) if cache is None else (cache["self"], cache["cross"])
        x = x + self.dropout(self.self_attn(self.norm_self(x), is_causal=cache is None, cache=self_cache))
        x = x + self.dropout(self.cross_attn(self.norm_cross(x), memory, mask=src_mask, cache=cross_cache))
        return x + self.dropout(self.ff(self.norm_ff(x)))


@dataclass
class TokenBudget:
    """Tokens a translation must hold exactly as many times as given, sentence by sentence (the placeholders of its
    source, which programs fill in: a missing or extra one crashes them). `token_ids` (P,) fall in `groups` (P,):
    tokens that spell the same thing (with and without a space before it) share a group; `counts` (N, G) is each
    sentence's number of each group. Decoding blocks a group's tokens once its count is reached, EOS until every
    count is, and everything else once the tokens still owed need all the room left before the length limit."""
    token_ids: torch.Tensor
    groups: torch.Tensor
    counts: torch.Tensor

    def for_beams(self, beam_size: int) -> "TokenBudget":
        return TokenBudget(self.token_ids, self.groups, self.counts.repeat_interleave(beam_size, dim=0))

    def restrict(self, scores: torch.Tensor, used: torch.Tensor, eos_id: int, room: torch.Tensor) -> torch.Tensor:
        """`scores` (N, V) with what the budget forbids at -inf, given the `used` (N, G) counts so far and the
        `room` (N,) left before each output's length limit: once the tokens still owed fill that room, only they
        are allowed, so an output cut off at its limit still holds them."""
        remaining = self.counts - used
        blocked = remaining[:, self.groups] <= 0
        scores = scores.index_copy(1, self.token_ids, scores[:, self.token_ids].masked_fill(blocked, float("-inf")))
        owed = remaining.clamp(min=0).sum(dim=1)
        scores[:, eos_id] = scores[:, eos_id].masked_fill(owed > 0, float("-inf"))
        unbudgeted = torch.ones(scores.shape[1], dtype=torch.bool, device=scores.device).index_fill(0, self.token_ids,
                                                                                                    False)
        return scores.masked_fill(((owed > 0) & (owed >= room))[:, None] & unbudgeted, float("-inf"))

    def spend(self, used: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
        hits = (next_token[:, None] == self.token_ids).long()
        return used.scatter_add(1, self.groups.expand_as(hits), hits)


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
            self.encoder_norm = nn.LayerNorm(c.d_model)
            self.decoder_norm = nn.LayerNorm(c.d_model)
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
        return self.embed_dropout(x)

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

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for teacher-forced decoder inputs. Right-padded targets need no mask of their own:
        the causal mask already keeps every real position away from the padding that follows it."""
        src_mask = self.source_mask(src)
        return self.decode(tgt_in, self.encode(src, src_mask), src_mask)

    def _decoding_caches(self, capacity: int) -> list[dict]:
        return [{"self": {"capacity": capacity}, "cross": {}} for _ in self.decoder_layers]

    @staticmethod
    def _length_limits(src_mask: torch.Tensor, max_new_tokens: int, max_lengths: torch.Tensor | None):
        """Each sentence's own output limit (at most `max_new_tokens`): a translation never depends on the length
        of its batch mates."""
        limit = torch.full((src_mask.shape[0],), max_new_tokens, device=src_mask.device)
        return limit if max_lengths is None else torch.minimum(max_lengths.to(limit.device), limit)

    @torch.no_grad()
    def greedy_decode(self, src: torch.Tensor, bos_id: int, eos_id: int, max_new_tokens: int,
                      use_cache: bool = True, max_lengths: torch.Tensor | None = None,
                      budget: TokenBudget | None = None) -> torch.Tensor:
        """Greedy translation of a batch: (B, <=max_new_tokens) token ids, EOS and what follows it set to pad.
        `max_lengths` (B,) caps each sentence's output; `budget` fixes how often given tokens appear. The host reads
        whether every sentence has ended only every FINISHED_CHECK_EVERY tokens: on a GPU each read waits for the
        whole queue."""
        max_new_tokens = min(max_new_tokens, self.config.max_len)
        src_mask = self.source_mask(src)
        memory = self.encode(src, src_mask)
        batch, pad = src.shape[0], self.config.pad_id
        limits = self._length_limits(src_mask, max_new_tokens, max_lengths)
        tokens = torch.full((batch, max_new_tokens + 1), pad, dtype=torch.long, device=src.device)
        tokens[:, 0] = bos_id
        finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
        caches = self._decoding_caches(max_new_tokens) if use_cache else None
        used = None if budget is None else torch.zeros_like(budget.counts)
        steps = 0
        for step in range(max_new_tokens):
            if use_cache:
                logits = self.decode(tokens[:, step:step + 1], memory, src_mask, caches, offset=step)
            else:
                logits = self.decode(tokens[:, :step + 1], memory, src_mask)
            logits = logits[:, -1]
            if budget is not None:
                logits = budget.restrict(logits, used, eos_id, room=limits - step)
            next_token = logits.argmax(dim=-1).masked_fill(finished, pad)
            if budget is not None:
                used = budget.spend(used, next_token)
            tokens[:, step + 1] = next_token
            finished = finished | (next_token == eos_id) | (step + 1 >= limits)
            steps = step + 1
            if steps % FINISHED_CHECK_EVERY == 0 and bool(finished.all()):
                break
        return self._trimmed(tokens[:, 1:steps + 1], eos_id)

    def _trimmed(self, out: torch.Tensor, eos_id: int) -> torch.Tensor:
        """EOS and what follows it set to pad, and the columns that hold only padding cut off (one host read)."""
        out = out.masked_fill((out == eos_id).cumsum(dim=1) > 0, self.config.pad_id)
        width = int((out != self.config.pad_id).sum(dim=1).max()) if out.numel() else 0
        return out[:, :max(width, 1)] if out.shape[1] else out

    @torch.no_grad()
    def beam_search(self, src: torch.Tensor, bos_id: int, eos_id: int, max_new_tokens: int, beam_size: int = 4,
                    length_penalty: float = 1.0, max_lengths: torch.Tensor | None = None,
                    budget: TokenBudget | None = None) -> torch.Tensor:
        """Beam search over a batch, with the key/value cache: (B, <=max_new_tokens) token ids of each sentence's
        best hypothesis, EOS and what follows it set to pad.

        Beams are ranked by their summed log-probability; a beam that emitted EOS keeps its score and its slot,
        and the search stops when every beam has ended. The winner maximises score / length ** length_penalty
        (length counts the EOS): 0 compares raw sums, which favour short outputs; larger values favour longer ones.
        A hypothesis cut off at its sentence's length limit (`max_lengths`, at most `max_new_tokens`) without EOS
        wins only when no beam of its sentence ended with EOS: a loop that never ends must not beat a finished
        translation. `budget` fixes how often given tokens appear in each hypothesis. Beam size 1 is greedy
        decoding."""
        max_new_tokens = min(max_new_tokens, self.config.max_len)
        batch, k, pad = src.shape[0], beam_size, self.config.pad_id
        src = src.repeat_interleave(k, dim=0)  # (B*K, S): every beam of a sentence sees its source
        src_mask = self.source_mask(src)
        memory = self.encode(src, src_mask)
        limits = self._length_limits(src_mask, max_new_tokens,
                                     None if max_lengths is None else max_lengths.repeat_interleave(k))
        scores = torch.full((batch, k), float("-inf"), device=src.device)
        scores[:, 0] = 0.0  # one live beam at first, so the K beams do not start as K copies
        tokens = torch.full((batch * k, max_new_tokens + 1), pad, dtype=torch.long, device=src.device)
        tokens[:, 0] = bos_id
        finished = torch.zeros(batch * k, dtype=torch.bool, device=src.device)
        ended_by_eos = torch.zeros(batch * k, dtype=torch.bool, device=src.device)
        lengths = torch.zeros(batch * k, device=src.device)
        budget = None if budget is None else budget.for_beams(k)
        used = None if budget is None else torch.zeros_like(budget.counts)
        caches = self._decoding_caches(max_new_tokens)
        offsets = torch.arange(batch, device=src.device)[:, None] * k
        # An ended beam continues with padding at no cost: its score stays as it was (torch.where, not masked
        # assignment, which would wait for the device to count the ended beams).
        vocab = self.config.tgt_vocab_size
        padding_only = torch.full((vocab,), float("-inf"), device=src.device)
        padding_only[pad] = 0.0
        steps = 0
        for step in range(max_new_tokens):
            logits = self.decode(tokens[:, step:step + 1], memory, src_mask, caches, offset=step)
            log_probs = F.log_softmax(logits[:, -1].float(), dim=-1)
            if budget is not None:  # after the softmax: what is allowed keeps the model's own probability
                log_probs = budget.restrict(log_probs, used, eos_id, room=limits - step)
            log_probs = torch.where(finished[:, None], padding_only, log_probs)
            candidates = (scores.view(-1, 1) + log_probs).view(batch, k * vocab)
            scores, best = candidates.topk(k, dim=-1)
            source_beam = (offsets + best // vocab).view(-1)
            next_token = (best % vocab).view(-1)
            tokens = tokens[source_beam]
            tokens[:, step + 1] = next_token
            finished, ended_by_eos, lengths = finished[source_beam], ended_by_eos[source_beam], lengths[source_beam]
            if budget is not None:
                used = budget.spend(used[source_beam], next_token)
            lengths = lengths + (~finished).float()
            ended_by_eos = ended_by_eos | (~finished & (next_token == eos_id))
            finished = finished | (next_token == eos_id) | (step + 1 >= limits)
            for cache in caches:  # cross-attention caches are the same for every beam of a sentence
                self_cache = cache["self"]
                self_cache["k"][:, :, :step + 1] = self_cache["k"][source_beam, :, :step + 1]
                self_cache["v"][:, :, :step + 1] = self_cache["v"][source_beam, :, :step + 1]
            steps = step + 1
            if steps % FINISHED_CHECK_EVERY == 0 and bool(finished.all()):
                break
        normalised = scores / lengths.view(batch, k).clamp(min=1) ** length_penalty
        eos_ended = ended_by_eos.view(batch, k)
        normalised = normalised.masked_fill(~eos_ended & eos_ended.any(dim=1, keepdim=True), float("-inf"))
        winner = offsets[:, 0] + normalised.argmax(dim=-1)
        return self._trimmed(tokens[winner, 1:steps + 1], eos_id)

    @torch.no_grad()
    def sequence_log_prob(self, src: torch.Tensor, hypotheses: torch.Tensor, bos_id: int, eos_id: int) -> torch.Tensor:
        """The model's own score of each hypothesis (pad after EOS, as decoding returns them): the summed
        log-probability of its tokens and of the EOS that ends it. (B,)"""
        pad = self.config.pad_id
        lengths = (hypotheses != pad).sum(dim=1)
        target = torch.cat([hypotheses, torch.full_like(hypotheses[:, :1], pad)], dim=1)
        target[torch.arange(len(target)), lengths] = eos_id
        tgt_in = torch.cat([torch.full_like(target[:, :1], bos_id), target[:, :-1]], dim=1)
        log_probs = F.log_softmax(self(src, tgt_in).float(), dim=-1)
        picked = log_probs.gather(-1, target[..., None]).squeeze(-1)
        return picked.masked_fill(target == pad, 0.0).sum(dim=1)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
