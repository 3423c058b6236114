"""Translation search over a trained `model.Transformer`: greedy decoding and beam search, the key/value cache they
decode with, and the token budget that holds each translation to its source's placeholders.

Kept apart from the network (as fairseq keeps its SequenceGenerator apart from its models): the model computes
logits for the positions it is given; how outputs are searched, cut and scored is decided here, and shared by
evaluation and translate.py. A `Translator` is a trained model folder loaded for translating (translate.py,
export.py).
"""

import logging
import os
import re
from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F

import checkpoint
import runtime
import tokenizer
from config import Config, model_config
from errors import UserError
from model import Transformer
from progress import progress
from tokenizer import BOS_ID, EOS_ID, PAD_ID, placeholder_tokens, placeholders

log = logging.getLogger("translation")

FINISHED_CHECK_EVERY = 8  # decoding steps between host reads of "has every sentence ended?"


# ----------------------------------------------------------------------------------------------- the cache

class CrossAttentionCache:
    """The encoder output's keys and values for one decoder layer: projected once, at the first token, from one
    copy of the memory per sentence, then repeated for the `beams` rows that decode each sentence."""

    def __init__(self, beams: int = 1):
        self.beams = beams
        self.k = self.v = None

    def keys_values(self, attention, memory: torch.Tensor):
        if self.k is None:
            k, v = attention.project_kv(memory)
            self.k, self.v = (t.repeat_interleave(self.beams, dim=0) if self.beams > 1 else t for t in (k, v))
        return self.k, self.v, None


class SelfAttentionCache:
    """One decoder layer's keys and values of the positions decoded so far, in buffers of `capacity` positions
    allocated at the first token and filled one position per call. Attention always reads the whole buffer, with a
    mask of the positions filled: every step of a generation has the same key shape (a GPU attention kernel plans
    once per shape, and CUDA graphs need fixed shapes)."""

    def __init__(self, capacity: int):
        self.capacity, self.length = capacity, 0
        self.k = self.v = self.filled = None
        self.spare = None  # beam search reorders into these, then swaps: nothing is allocated per step

    def keys_values(self, attention, x: torch.Tensor):
        k_new, v_new = attention.project_kv(x)
        if self.k is None:
            shape = (*k_new.shape[:2], self.capacity, k_new.shape[3])
            self.k, self.v = k_new.new_zeros(shape), v_new.new_zeros(shape)
            self.filled = torch.zeros((1, 1, 1, self.capacity), dtype=torch.bool, device=x.device)
        start, end = self.length, self.length + k_new.shape[2]
        self.k[:, :, start:end], self.v[:, :, start:end] = k_new, v_new
        self.filled[..., start:end] = True
        self.length = end
        return self.k, self.v, self.filled

    def reorder(self, rows: torch.Tensor) -> None:
        """Beam search: row i continues the hypothesis of row `rows[i]`."""
        if self.spare is None:
            self.spare = (torch.empty_like(self.k), torch.empty_like(self.v))
        torch.index_select(self.k, 0, rows, out=self.spare[0])
        torch.index_select(self.v, 0, rows, out=self.spare[1])
        (self.k, self.v), self.spare = self.spare, (self.k, self.v)


@dataclass
class LayerCache:
    """What `model.DecoderLayer` reads and extends while decoding one token at a time."""
    self_attention: SelfAttentionCache
    cross_attention: CrossAttentionCache


def new_caches(model, capacity: int, beams: int = 1) -> list[LayerCache]:
    return [LayerCache(SelfAttentionCache(capacity), CrossAttentionCache(beams)) for _ in model.decoder_layers]


# ----------------------------------------------------------------------------------------------- budgets

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
        """`scores` (N, V), changed in place and returned, with what the budget forbids at -inf, given the `used`
        (N, G) counts so far and the `room` (N,) left before each output's length limit: once the tokens still owed
        fill that room, only they are allowed, so an output cut off at its limit still holds them. Nothing of the
        vocabulary's size is allocated: this runs at every token."""
        remaining = self.counts - used
        budgeted = scores[:, self.token_ids].masked_fill_(remaining[:, self.groups] <= 0, float("-inf"))
        owed = remaining.clamp(min=0).sum(dim=1)
        scores.masked_fill_(((owed > 0) & (owed >= room))[:, None], float("-inf"))  # only what is owed, then...
        scores.index_copy_(1, self.token_ids, budgeted)  # ...the budgeted tokens as allowed
        scores[:, eos_id].masked_fill_(owed > 0, float("-inf"))
        return scores

    def spend(self, used: torch.Tensor, next_token: torch.Tensor) -> torch.Tensor:
        hits = (next_token[:, None] == self.token_ids).long()
        return used.scatter_add(1, self.groups.expand_as(hits), hits)


class PlaceholderBudget:
    """Each translation keeps its source's placeholders (%s, %(name)d, {0}, ...): as many of each as the source
    has, no more, no fewer, wherever the target vocabulary spells the placeholder as one token (a placeholder split
    into several tokens is left to the model). Measured: docs/experiments.md#placeholder-budget."""

    def __init__(self, tgt_tokenizer):
        table = placeholder_tokens(tgt_tokenizer)
        self.names = list(table)
        self.token_ids = torch.tensor([i for name in self.names for i in table[name]], dtype=torch.long)
        self.groups = torch.tensor([g for g, name in enumerate(self.names) for _ in table[name]], dtype=torch.long)

    def for_sources(self, sources: list[str], device) -> TokenBudget | None:
        if not self.names:
            return None
        counts = [Counter(placeholders(text)) for text in sources]
        return TokenBudget(self.token_ids.to(device), self.groups.to(device),
                           torch.tensor([[c[name] for name in self.names] for c in counts], device=device))


# ----------------------------------------------------------------------------------------------- search

def max_output_length(src_length):
    """Translations are cut at twice the source length plus a margin: an untrained model never loops for long.
    Works on a number or on a tensor of lengths."""
    return 2 * src_length + 10


def _length_limits(batch: int, device, max_new_tokens: int, max_lengths: torch.Tensor | None) -> torch.Tensor:
    """Each sentence's own output limit (at most `max_new_tokens`): a translation never depends on the length
    of its batch mates."""
    limit = torch.full((batch,), max_new_tokens, device=device)
    return limit if max_lengths is None else torch.minimum(max_lengths.to(limit.device), limit)


def _trimmed(out: torch.Tensor, eos_id: int, pad_id: int) -> torch.Tensor:
    """EOS and what follows it set to pad, and the columns that hold only padding cut off (one host read)."""
    out = out.masked_fill((out == eos_id).cumsum(dim=1) > 0, pad_id)
    width = int((out != pad_id).sum(dim=1).max()) if out.numel() else 0
    return out[:, :max(width, 1)] if out.shape[1] else out


@torch.no_grad()
def greedy_decode(model, src: torch.Tensor, bos_id: int, eos_id: int, max_new_tokens: int, use_cache: bool = True,
                  max_lengths: torch.Tensor | None = None, budget: TokenBudget | None = None) -> torch.Tensor:
    """Greedy translation of a batch: (B, <=max_new_tokens) token ids, EOS and what follows it set to pad.
    `max_lengths` (B,) caps each sentence's output; `budget` fixes how often given tokens appear. The host reads
    whether every sentence has ended only every FINISHED_CHECK_EVERY tokens: on a GPU each read waits for the
    whole queue."""
    max_new_tokens = min(max_new_tokens, model.config.max_len)
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)
    batch, pad = src.shape[0], model.config.pad_id
    limits = _length_limits(batch, src.device, max_new_tokens, max_lengths)
    tokens = torch.full((batch, max_new_tokens + 1), pad, dtype=torch.long, device=src.device)
    tokens[:, 0] = bos_id
    finished = torch.zeros(batch, dtype=torch.bool, device=src.device)
    caches = new_caches(model, max_new_tokens) if use_cache else None
    used = None if budget is None else torch.zeros_like(budget.counts)
    steps = 0
    for step in range(max_new_tokens):
        if use_cache:
            logits = model.decode(tokens[:, step:step + 1], memory, src_mask, caches, offset=step)
        else:
            logits = model.decode(tokens[:, :step + 1], memory, src_mask)
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
    return _trimmed(tokens[:, 1:steps + 1], eos_id, pad)


class _Beams:
    """The state of a beam search over B sentences of K beams each, flattened to B*K rows. Beams are ranked by
    their summed log-probability; a beam that ended keeps its score and its slot, continuing with padding at no
    cost (masked in place: indexing by a mask would wait for the device to count the ended beams)."""

    def __init__(self, batch: int, k: int, max_new_tokens: int, bos_id: int, pad_id: int, vocab: int, device):
        self.batch, self.k, self.vocab = batch, k, vocab
        self.scores = torch.full((batch, k), float("-inf"), device=device)
        self.scores[:, 0] = 0.0  # one live beam at first, so the K beams do not start as K copies
        self.tokens = torch.full((batch * k, max_new_tokens + 1), pad_id, dtype=torch.long, device=device)
        self.tokens[:, 0] = bos_id
        self.finished = torch.zeros(batch * k, dtype=torch.bool, device=device)
        self.ended_by_eos = torch.zeros(batch * k, dtype=torch.bool, device=device)
        self.lengths = torch.zeros(batch * k, device=device)
        self.offsets = torch.arange(batch, device=device)[:, None] * k
        self.pad_id = pad_id

    def advance(self, log_probs: torch.Tensor, step: int, eos_id: int, limits: torch.Tensor):
        """Keep the K best continuations of each sentence; (rows they continue, their new tokens)."""
        log_probs.masked_fill_(self.finished[:, None], float("-inf"))  # in place: no new (rows, vocabulary) tensors
        log_probs[:, self.pad_id].masked_fill_(self.finished, 0.0)
        candidates = log_probs.add_(self.scores.view(-1, 1)).view(self.batch, self.k * self.vocab)
        self.scores, best = candidates.topk(self.k, dim=-1)
        rows = (self.offsets + best // self.vocab).view(-1)
        next_token = (best % self.vocab).view(-1)
        self.tokens = self.tokens[rows]
        self.tokens[:, step + 1] = next_token
        finished, ended_by_eos = self.finished[rows], self.ended_by_eos[rows]
        self.lengths = self.lengths[rows] + (~finished).float()
        self.ended_by_eos = ended_by_eos | (~finished & (next_token == eos_id))
        self.finished = finished | (next_token == eos_id) | (step + 1 >= limits)
        return rows, next_token

    def best(self, length_penalty: float) -> torch.Tensor:
        """Each sentence's winning row: the best score / length ** length_penalty (length counts the EOS) among
        the beams that ended with EOS, or among all when none did."""
        normalised = self.scores / self.lengths.view(self.batch, self.k).clamp(min=1) ** length_penalty
        eos_ended = self.ended_by_eos.view(self.batch, self.k)
        normalised = normalised.masked_fill(~eos_ended & eos_ended.any(dim=1, keepdim=True), float("-inf"))
        return self.offsets[:, 0] + normalised.argmax(dim=-1)


@torch.no_grad()
def beam_search(model, src: torch.Tensor, bos_id: int, eos_id: int, max_new_tokens: int, beam_size: int = 4,
                length_penalty: float = 1.0, max_lengths: torch.Tensor | None = None,
                budget: TokenBudget | None = None) -> torch.Tensor:
    """Beam search over a batch, with the key/value cache: (B, <=max_new_tokens) token ids of each sentence's
    best hypothesis, EOS and what follows it set to pad.

    The winner maximises score / length ** length_penalty: 0 compares raw sums, which favour short outputs; larger
    values favour longer ones. A hypothesis cut off at its sentence's length limit (`max_lengths`, at most
    `max_new_tokens`) without EOS wins only when no beam of its sentence ended with EOS: a loop that never ends
    must not beat a finished translation. `budget` fixes how often given tokens appear in each hypothesis. Beam
    size 1 is greedy decoding."""
    max_new_tokens = min(max_new_tokens, model.config.max_len)
    batch, k = src.shape[0], beam_size
    src_mask = model.source_mask(src)
    memory = model.encode(src, src_mask)  # once per sentence; the cross-attention caches repeat it for the beams
    src_mask = src_mask.repeat_interleave(k, dim=0)  # (B*K, 1, 1, S): every beam of a sentence sees its source
    limits = _length_limits(batch * k, src.device, max_new_tokens,
                            None if max_lengths is None else max_lengths.repeat_interleave(k))
    beams = _Beams(batch, k, max_new_tokens, bos_id, model.config.pad_id, model.config.tgt_vocab_size, src.device)
    budget = None if budget is None else budget.for_beams(k)
    used = None if budget is None else torch.zeros_like(budget.counts)
    caches = new_caches(model, max_new_tokens, beams=k)
    steps = 0
    for step in range(max_new_tokens):
        logits = model.decode(beams.tokens[:, step:step + 1], memory, src_mask, caches, offset=step)
        log_probs = F.log_softmax(logits[:, -1].float(), dim=-1)
        if budget is not None:  # after the softmax: what is allowed keeps the model's own probability
            log_probs = budget.restrict(log_probs, used, eos_id, room=limits - step)
        rows, next_token = beams.advance(log_probs, step, eos_id, limits)
        if budget is not None:
            used = budget.spend(used[rows], next_token)
        for cache in caches:  # cross-attention caches are the same for every beam of a sentence
            cache.self_attention.reorder(rows)
        steps = step + 1
        if steps % FINISHED_CHECK_EVERY == 0 and bool(beams.finished.all()):
            break
    return _trimmed(beams.tokens[beams.best(length_penalty), 1:steps + 1], eos_id, model.config.pad_id)


@torch.no_grad()
def sequence_log_prob(model, src: torch.Tensor, hypotheses: torch.Tensor, bos_id: int, eos_id: int) -> torch.Tensor:
    """The model's own score of each hypothesis (pad after EOS, as decoding returns them): the summed
    log-probability of its tokens and of the EOS that ends it. (B,)"""
    pad = model.config.pad_id
    lengths = (hypotheses != pad).sum(dim=1)
    target = torch.cat([hypotheses, torch.full_like(hypotheses[:, :1], pad)], dim=1)
    target[torch.arange(len(target)), lengths] = eos_id
    tgt_in = torch.cat([torch.full_like(target[:, :1], bos_id), target[:, :-1]], dim=1)
    log_probs = F.log_softmax(model(src, tgt_in).float(), dim=-1)
    picked = log_probs.gather(-1, target[..., None]).squeeze(-1)
    return picked.masked_fill(target == pad, 0.0).sum(dim=1)


def decode_tokens(model, src: torch.Tensor, beam_size: int = 1, length_penalty: float = 1.0,
                  budget: TokenBudget | None = None) -> torch.Tensor:
    """Translations of a padded source batch as token ids: greedy for beam size 1, else beam search; each output
    may be at most twice as long as its own source (not the batch's padded width) plus a margin."""
    limits = max_output_length((src != PAD_ID).sum(dim=1))
    max_new_tokens = max_output_length(src.shape[1])
    if beam_size == 1:
        return greedy_decode(model, src, BOS_ID, EOS_ID, max_new_tokens, max_lengths=limits, budget=budget)
    return beam_search(model, src, BOS_ID, EOS_ID, max_new_tokens, beam_size, length_penalty, max_lengths=limits,
                       budget=budget)


# ----------------------------------------------------------------------------------------------- a model folder

def choose_checkpoint(folder: str, choice: str) -> tuple[str, dict]:
    """(path, loaded state) of the checkpoint that --checkpoint names; each file is read once."""
    if choice not in ("best", "latest"):
        path = checkpoint.named_path(folder, choice, "checkpoint", "'best', 'latest'")
        return path, checkpoint.load_checkpoint(path, weights_will_do=True)
    found = checkpoint.list_checkpoints(folder)
    if not found:
        raise UserError(f"--model_folder {folder}: no complete checkpoint there; train first, or check the path")
    newest_step, newest = found[-1]
    state = checkpoint.load_checkpoint(newest)
    best_step = state.get("best_step")
    best = checkpoint.checkpoint_path(folder, best_step) if best_step is not None else None
    if choice == "best" and best_step != newest_step and (best_step, best) in found:
        return best, checkpoint.load_checkpoint(best)  # the newest names the best: it is kept through pruning
    return newest, state


class Translator:
    """A trained model and its tokenizers, loaded from a model folder and checked against each other."""

    def __init__(self, folder: str, choice: str, device: torch.device):
        if not os.path.isdir(folder):
            raise UserError(f"--model_folder {folder}: no such folder")
        self.path, state = choose_checkpoint(folder, choice)
        self.config = Config.from_dict(state["config"])
        tokenizers = []
        for side, lang in (("src", self.config.lang_src), ("tgt", self.config.lang_tgt)):
            path = tokenizer.tokenizer_path(folder, lang)
            if not os.path.exists(path):
                raise UserError(f"--model_folder {folder}: {os.path.basename(path)} is missing; the tokenizers of "
                                f"the run must sit beside its checkpoints")
            text = open(path, encoding="utf-8").read()
            if tokenizer.fingerprint(text) != state["tokenizers"][side]:
                raise UserError(f"{path} is not the tokenizer {os.path.basename(self.path)} was trained with")
            tokenizers.append(tokenizer.tokenizer_from_json(text))
        self.src_tok, self.tgt_tok = tokenizers
        self.model = Transformer(model_config(self.config, self.src_tok.get_vocab_size(),
                                              self.tgt_tok.get_vocab_size(), tokenizer.PAD_ID, dropout=0.0))
        self.model.load_state_dict(state["model"])
        self.model.to(device).eval()
        self.placeholders_kept = PlaceholderBudget(self.tgt_tok)
        self.device = device
        # The run's own --precision, resolved for this device: on the same machine, training's test score and
        # --evaluate's are the same numbers (fp16 needs a GPU: elsewhere what auto picks).
        saved = self.config.precision
        self.precision = runtime.resolve_precision("auto" if saved == "fp16" and device.type != "cuda" else saved,
                                                   device)
        self.autocast = runtime.make_autocast(self.precision, device)
        self.step = state["step"]

    def pieces(self, text: str) -> list[str]:
        """`text` as pieces that fit the model's positions: itself when it fits, else its sentences (split after
        . ! ? and line breaks), and any sentence still too long in runs of whole words (a single word longer than the
        model's positions, which no model can take, is cut)."""
        limit = self.config.seq_len - 1  # room for EOS
        if len(self.src_tok.encode(text, add_special_tokens=False).ids) <= limit:
            return [text]
        out = []
        for sentence in (s for s in re.split(r"(?<=[.!?])\s+|\n+", text) if s.strip()):
            current = ""
            for word in sentence.split(" "):
                longer = f"{current} {word}" if current else word
                if current and len(self.src_tok.encode(longer, add_special_tokens=False).ids) > limit:
                    out.append(current)
                    longer = word
                current = longer
            out.append(current)
        return out

    @torch.no_grad()
    def translate(self, sentences: list[str], beam_size: int, length_penalty: float, batch_size: int) -> list[str]:
        """Translations in input order, in batches of similar length. A source longer than the model's positions is
        translated sentence by sentence (see `pieces`) and the translations joined, never truncated."""
        pieces = [self.pieces(text) for text in sentences]
        if any(len(p) > 1 for p in pieces):
            split = sum(len(p) > 1 for p in pieces)
            log.info(f"{split} inputs longer than {self.config.seq_len - 1} tokens were translated in pieces "
                     f"(sentences)")
            flat = self._translate([piece for p in pieces for piece in p], beam_size, length_penalty, batch_size)
            joined, at = [], 0
            for p in pieces:
                joined.append(" ".join(flat[at:at + len(p)]))
                at += len(p)
            return joined
        return self._translate(sentences, beam_size, length_penalty, batch_size)

    def _translate(self, sentences: list[str], beam_size: int, length_penalty: float, batch_size: int) -> list[str]:
        limit = self.config.seq_len - 1
        encoded = [e.ids for e in self.src_tok.encode_batch(sentences, add_special_tokens=False)]
        sources = [torch.tensor(ids[:limit] + [tokenizer.EOS_ID]) for ids in encoded]
        order = sorted(range(len(sources)), key=lambda i: len(sources[i]))
        out = [""] * len(sources)
        for start in progress(range(0, len(order), batch_size), -(-len(order) // batch_size), "translating"):
            chunk = order[start:start + batch_size]
            src = torch.nn.utils.rnn.pad_sequence([sources[i] for i in chunk], batch_first=True,
                                                  padding_value=tokenizer.PAD_ID).to(self.device)
            budget = self.placeholders_kept.for_sources([sentences[i] for i in chunk], self.device)
            with self.autocast():
                tokens = decode_tokens(self.model, src, beam_size, length_penalty, budget)
            for i, text in zip(chunk, self.tgt_tok.decode_batch(tokens.tolist(), skip_special_tokens=True)):
                out[i] = text  # as training's evaluation scores it: no stripping
        return out
