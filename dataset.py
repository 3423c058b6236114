"""Tokenized data and batches: the flat tokenized dataset, padding widths, collation, the distributed batch
sampler (bucketed by length, by sentence count or token budget) and the two sources of training batches the loop
reads from (an in-memory split through a DataLoader, or a stream).

Every rank cuts the same global batches and takes its own share, so a position in an epoch is one number that does
not depend on the world size. Nothing here knows about optimisation.
"""

import itertools
import random
import signal
from dataclasses import dataclass

import torch
from torch.utils.data import Dataset, Sampler

from config import Config
from tokenizer import BOS_ID, EOS_ID, PAD_ID

Pairs = list[tuple[str, str]]


class TranslationDataset(Dataset):
    """Token ids of every pair, stored flat (two int32 tensors plus offsets) rather than as millions of lists.

    Source: tokens + EOS. Target: BOS + tokens + EOS, split by `collate` into decoder input and labels."""

    def __init__(self, src: list[list[int]], tgt: list[list[int]], max_len: int):
        self.max_len = max_len  # --seq_len: no sentence is longer; batches are padded to at most this
        self.src_lengths = torch.tensor([len(s) for s in src], dtype=torch.int64)
        self.tgt_lengths = torch.tensor([len(t) for t in tgt], dtype=torch.int64)
        self.src_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), self.src_lengths.cumsum(0)])
        self.tgt_offsets = torch.cat([torch.zeros(1, dtype=torch.int64), self.tgt_lengths.cumsum(0)])
        self.src_tokens = torch.tensor([i for s in src for i in s], dtype=torch.int32)
        self.tgt_tokens = torch.tensor([i for t in tgt for i in t], dtype=torch.int32)

    def __len__(self) -> int:
        return len(self.src_lengths)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (self.src_tokens[self.src_offsets[i]:self.src_offsets[i + 1]],
                self.tgt_tokens[self.tgt_offsets[i]:self.tgt_offsets[i + 1]])


@dataclass
class Tokenized:
    dataset: TranslationDataset
    kept: list[int]  # index into the split's pairs of every kept example
    dropped_too_long: int
    dropped_empty: int


def tokenize_pairs(pairs: Pairs, src_tokenizer, tgt_tokenizer, seq_len: int) -> Tokenized:
    """Tokenize a split once, in batches; pairs that do not fit in `seq_len` (or are empty) are dropped and counted."""
    src_ids = [e.ids for e in src_tokenizer.encode_batch([p[0] for p in pairs], add_special_tokens=False)]
    tgt_ids = [e.ids for e in tgt_tokenizer.encode_batch([p[1] for p in pairs], add_special_tokens=False)]
    src, tgt, kept, too_long, empty = [], [], [], 0, 0
    for i, (s, t) in enumerate(zip(src_ids, tgt_ids)):
        if not s or not t:
            empty += 1
        elif len(s) + 1 > seq_len or len(t) + 2 > seq_len:
            too_long += 1
        else:
            src.append(s + [EOS_ID])
            tgt.append([BOS_ID] + t + [EOS_ID])
            kept.append(i)
    return Tokenized(TranslationDataset(src, tgt, seq_len), kept, too_long, empty)


def padded_length(length: int, max_len: int) -> int:
    """The width a batch whose longest sentence has `length` tokens is padded to: a small fixed set of widths
    (even numbers up to 32, multiples of 8 up to 128, of 32 up to 512, then of 128), never over `max_len`
    (--seq_len): 28 widths up to 128. A run then sees few distinct shapes (compiled graphs and CUDA graphs are per
    shape) while padding stays small: short sentences, the most common, get fine steps."""
    step = 2 if length <= 32 else 8 if length <= 128 else 32 if length <= 512 else 128
    return min(-(-length // step) * step, max(max_len, length))


def batch_count(count: int) -> int:
    """The sentence count of a token-budget batch, rounded down to a small fixed set: 1-8, then four values per
    octave (8, 10, 12, 14, 16, 20, 24, 28, 32, 40, ...). At most a fifth of a batch's budget goes unused; the
    sentences left out start the next batch."""
    if count <= 8:
        return count
    octave = 1 << (count.bit_length() - 3)  # count // octave is in 4..7
    return count // octave * octave


def collate(batch: list[tuple[torch.Tensor, torch.Tensor]], max_len: int) -> dict:
    """Pad to the longest sentence of this batch (not to a fixed length), rounded up by `padded_length`.
    "src_padded" says, from the lengths alone, whether any source holds padding: the model then needs a mask."""
    src_len = padded_length(max(len(s) for s, _ in batch), max_len)
    tgt_len = padded_length(max(len(t) for _, t in batch) - 1, max_len)
    src = torch.full((len(batch), src_len), PAD_ID, dtype=torch.long)
    tgt_in = torch.full((len(batch), tgt_len), PAD_ID, dtype=torch.long)
    tgt_out = torch.full((len(batch), tgt_len), PAD_ID, dtype=torch.long)
    for row, (s, t) in enumerate(batch):
        src[row, :len(s)] = s
        tgt_in[row, :len(t) - 1] = t[:-1]
        tgt_out[row, :len(t) - 1] = t[1:]
    return {"src": src, "tgt_in": tgt_in, "tgt_out": tgt_out, "src_padded": any(len(s) < src_len for s, _ in batch)}


# ----------------------------------------------------------------------------------------------- sampling

class DistributedBatchSampler(Sampler[list[int]]):
    """Yields this rank's share of each global batch.

    Every rank draws the same order from `seed + epoch` (see `epoch_batches`) and cuts it into the same global
    batches, one share per rank, so shards are disjoint, every rank has the same number of batches (no rank waits
    alone in a collective), and the position in an epoch is the samples consumed, in the order of the epoch as it
    started: a run can resume mid-epoch, even with another number of ranks (`set_epoch`'s `started_by`).

    Two ways to size batches:
    - `batch_size` sentences per rank: consecutive chunks of `world_size * batch_size` examples are the global
      batches, split evenly over the ranks; the last, partial one too (training normalises the loss by the global
      token count, so uneven shares weigh correctly); fewer examples than ranks wait for the next epoch's shuffle.
    - `max_tokens` per rank (fairseq's --max-tokens): the order is cut into consecutive batches whose padded size,
      sentences x longest sentence, stays within the budget; each run of `world_size` such batches is a global
      batch; a last run shorter than `world_size` waits for the next epoch.
    """

    GROUPING_WINDOW_STEPS = 32
    UNSHUFFLED_WINDOW_BATCHES = 50  # the windows of an epoch with `steps_shuffled` False

    def __init__(self, num_examples: int, batch_size: int, rank: int, world_size: int, seed: int,
                 lengths: torch.Tensor | None = None, max_tokens: int | None = None, max_len: int = 128):
        if max_tokens is not None and lengths is None:
            raise ValueError("max_tokens needs the example lengths")
        self.num_examples, self.batch_size, self.max_tokens = num_examples, batch_size, max_tokens
        self.max_len = max_len  # --seq_len: batches are padded to `padded_length(longest, max_len)`
        self.rank, self.world_size = rank, world_size
        self.seed, self.lengths = seed, lengths
        self.epoch, self.start_sample, self.started_by = 0, 0, (world_size, batch_size)
        self.steps_shuffled = True
        self._cached: tuple[tuple, list[list[list[int]]], list[int]] | None = None

    def set_epoch(self, epoch: int, start_sample: int = 0, started_by: tuple[int, int] | None = None,
                  steps_shuffled: bool = True) -> None:
        """Call before every epoch; `start_sample` > 0 resumes inside it, in the order of the epoch as started by
        `started_by` = (world size, batch size) (default: this run's; see `epoch_batches`). `steps_shuffled`
        False: an epoch started by code that left its sorted windows unshuffled (a checkpoint that does not say
        who started its epoch) finishes in that order."""
        self.epoch, self.start_sample, self.steps_shuffled = epoch, start_sample, steps_shuffled
        self.started_by = started_by or (self.world_size, self.batch_size)

    def _examples_per_batch(self) -> int:
        if self.max_tokens is None:
            return self.batch_size
        return max(1, int(self.max_tokens / max(float(self.lengths.float().mean()), 1.0)))

    def epoch_order(self) -> list[int]:
        """This epoch's order of examples, the same on every rank: its per-rank batches one after the other."""
        return [i for batch in self.epoch_batches() for i in batch]

    def epoch_batches(self) -> list[list[int]]:
        """This epoch's order, as per-rank batches by token budget or as one batch by sentence count. A permutation
        from `seed + epoch`; given lengths, sorted inside windows of 32 global batches' worth, so that neighbours,
        hence batches, have similar lengths and little compute goes to padding, and the window's global batches
        shuffled. Sorted windows alone would make the steps climb from the shortest sentences to the longest,
        window after window, and updates alike in a row learn less (docs/experiments.md, "Batch order"); one run
        of the sorted window per step keeps the ranks' shares of similar lengths, so none waits long for the
        others. Runs are sized by the world and batch size that started the epoch (`started_by`): a resume with
        others finishes the epoch in its order."""
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        order = torch.randperm(self.num_examples, generator=generator)
        if self.lengths is None:
            return [order.tolist()]
        by_tokens = self.max_tokens is not None
        if not self.steps_shuffled:
            grouped = self._sorted_windows(order, self.UNSHUFFLED_WINDOW_BATCHES * self._examples_per_batch())
            return self._token_budget_batches(grouped) if by_tokens else [grouped]
        world, batch_size = self.started_by
        run = world * (self._examples_per_batch() if by_tokens else batch_size)  # examples of a global batch
        grouped = self._sorted_windows(order, self.GROUPING_WINDOW_STEPS * run)
        if by_tokens:  # a run: `world` batches cut by the budget
            cuts = self._token_budget_batches(grouped)
            runs = [cuts[i:i + world] for i in range(0, len(cuts), world)]
        else:  # a run: `run` examples
            runs = [[grouped[i:i + run]] for i in range(0, len(grouped), run)]
        batches = []
        for first in range(0, len(runs), self.GROUPING_WINDOW_STEPS):
            window = runs[first:first + self.GROUPING_WINDOW_STEPS]
            short = len(window[-1]) < world if by_tokens else len(window[-1][0]) < run  # the epoch's end
            whole = len(window) - short
            for i in [*torch.randperm(whole, generator=generator).tolist(), *range(whole, len(window))]:
                batches += window[i]  # a short last run stays last
        return batches if by_tokens else [[i for batch in batches for i in batch]]

    def _sorted_windows(self, order: torch.Tensor, window: int) -> list[int]:
        """`order` with each consecutive window of `window` examples sorted by length (stably)."""
        return torch.cat([w[torch.sort(self.lengths[w], stable=True).indices] for w in order.split(window)]).tolist()

    def _token_budget_batches(self, order: list[int]) -> list[list[int]]:
        """Greedy consecutive cuts: a batch grows while its padded size, sentences x `padded_length` of the
        longest, stays within max_tokens; its sentence count is then rounded down by `batch_count` and the rest
        start the next batch. A sentence longer than the budget on its own still gets a batch (validation keeps
        max_tokens >= seq_len)."""
        lengths = self.lengths.tolist()
        batches, start = [], 0
        while start < len(order):
            end, longest = start + 1, lengths[order[start]]
            while end < len(order):
                longer = max(longest, lengths[order[end]])
                if (end - start + 1) * padded_length(longer, self.max_len) > self.max_tokens:
                    break
                end, longest = end + 1, longer
            end = start + batch_count(end - start)
            batches.append(order[start:end])
            start = end
        return batches

    def _plan(self) -> tuple[list[list[list[int]]], list[int]]:
        """This epoch's remaining global batches and the samples consumed after each, cut once per `set_epoch`."""
        key = (self.epoch, self.start_sample, self.started_by, self.steps_shuffled)
        if self._cached is None or self._cached[0] != key:
            batches = self._cut(self.epoch_batches())
            sizes = [sum(len(share) for share in global_batch) for global_batch in batches]
            self._cached = (key, batches, [0, *itertools.accumulate(sizes)])
        return self._cached[1], self._cached[2]

    def global_batches(self) -> list[list[list[int]]]:
        """The rest of this epoch's global batches, from `start_sample` on; each a list of one share per rank."""
        return self._plan()[0]

    def _cut(self, epoch_batches: list[list[int]]) -> list[list[list[int]]]:
        """The global batches from `start_sample` on. By sentence count: consecutive chunks of `world_size *
        batch_size` examples, split evenly. By token budget: the per-rank batches as cut, `world_size` at a time
        (a resume lands between two of them, wherever the epoch was started)."""
        world = self.world_size
        if self.max_tokens is not None:
            skipped = itertools.accumulate(len(batch) for batch in epoch_batches)
            local = epoch_batches[sum(1 for consumed in skipped if consumed <= self.start_sample):]
            return [local[i:i + world] for i in range(0, len(local) - world + 1, world)]
        order = [i for batch in epoch_batches for i in batch][self.start_sample:]
        size = world * self.batch_size
        batches = []
        for start in range(0, len(order), size):
            chunk = order[start:start + size]
            if len(chunk) < world:
                break
            per_rank, extra = divmod(len(chunk), world)
            bounds = [r * per_rank + min(r, extra) for r in range(world + 1)]
            batches.append([chunk[bounds[r]:bounds[r + 1]] for r in range(world)])
        return batches

    def __iter__(self):
        for global_batch in self.global_batches():
            yield global_batch[self.rank]

    def __len__(self) -> int:
        return len(self.global_batches())

    def position_after(self, batches_done: int) -> int:
        """Samples of the epoch consumed once this rank has taken `batches_done` batches since `set_epoch`."""
        return self.start_sample + self._plan()[1][batches_done]


def ignore_stop_signals(worker_id: int) -> None:
    """DataLoader worker start-up. SIGTERM and SIGINT reach a whole process group (torchrun stopping its workers,
    Slurm's --signal, docker stop, Ctrl-C): the trainer answers them by saving, then shuts its data workers down
    itself, so the workers must outlive the signal or the trainer dies of their death before it can save."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


@dataclass
class EpochPosition:
    """Where a run stands in an in-memory epoch: the samples consumed, in the order of that epoch as started by
    `world_size` ranks taking `batch_size` sentences each. The same on every rank."""
    samples: int
    world_size: int
    batch_size: int | None
    steps_shuffled: bool = True  # False: an epoch started before steps were shuffled (see `set_epoch`)


class LoaderBatches:
    """This rank's training batches from an in-memory split: the DataLoader over a DistributedBatchSampler, behind
    the interface the training loop shares with StreamBatches. The position is the samples consumed in the epoch,
    the same on every rank."""

    def __init__(self, loader, sampler: DistributedBatchSampler):
        self.loader, self.sampler = loader, sampler

    def start_epoch(self, epoch: int, position: EpochPosition | None = None) -> None:
        if position is None:
            self.sampler.set_epoch(epoch)
        else:
            self.sampler.set_epoch(epoch, position.samples, (position.world_size, position.batch_size),
                                   position.steps_shuffled)
        self.batches, self.taken = iter(self.loader), 0

    def take(self, count: int) -> list[dict[str, torch.Tensor]]:
        """Up to `count` batches; fewer at the end of the epoch, where every rank has as many as the others."""
        count = min(count, len(self.sampler) - self.taken)
        self.taken += count
        return [next(self.batches) for _ in range(count)]

    def exhausted(self) -> bool:
        return self.taken == len(self.sampler)

    def position(self) -> EpochPosition:
        return EpochPosition(self.sampler.position_after(self.taken), *self.sampler.started_by,
                             self.sampler.steps_shuffled)


class StreamBatches:
    """This rank's training batches from a stream (--streaming), in a state that resumes exactly.

    The stream is sharded over ranks by `datasets.distributed.split_dataset_by_node` (whole files per rank when
    their number divides by the world size, else every world_size-th example); each rank reads its files in an
    order that changes every epoch, shuffles the pairs through a buffer of --shuffle_buffer pairs drawn by a
    generator seeded from (seed, epoch, rank), leaves held-out (validation, test) pairs out, tokenizes on the fly
    (pairs longer than --seq_len or empty are skipped and counted), and groups about 50 batches' worth by length
    into batches of --batch_size pairs, padded to their longest sentence. `position()` at a batch boundary is the
    shard's position (its datasets state_dict), the buffer's pairs, the batches grouped but not yet taken and the
    generator's state: resuming from it continues with the very batches an uninterrupted run takes.
    Shards differ in length, so a rank may run out first; the trainer ends the epoch on every rank then."""

    def __init__(self, stream, held_out: set[tuple[str, str]], to_pair, src_tokenizer, tgt_tokenizer, cfg: Config,
                 rank: int, world_size: int):
        """`stream` yields examples, `to_pair(example)` is its (source, target) pair; `held_out` pairs are skipped."""
        self.stream, self.held_out, self.to_pair = stream, held_out, to_pair
        self.src_tokenizer, self.tgt_tokenizer = src_tokenizer, tgt_tokenizer
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.dropped_too_long = self.dropped_empty = 0
        self.start_epoch(0)

    def start_epoch(self, epoch: int, state: dict | None = None) -> None:
        """From the start of `epoch`, or from a `position()` taken in it."""
        from datasets.distributed import split_dataset_by_node

        # A fresh shard each time: a loaded state_dict stays the starting point of every later pass over it. The
        # datasets shuffle only reorders this rank's files each epoch (a buffer of one resumes exactly; its own
        # buffer would lose its content on resume): the buffer below mixes the examples.
        shard = split_dataset_by_node(self.stream, rank=self.rank, world_size=self.world_size)
        shard = shard.shuffle(seed=self.cfg.seed, buffer_size=1)
        shard.set_epoch(epoch)
        self.rng = random.Random(f"{self.cfg.seed}/{epoch}/{self.rank}")
        self.buffer: Pairs = []
        self.pending: list[list[tuple[list[int], list[int]]]] = []  # token ids of the batches grouped last
        if state is not None:
            shard.load_state_dict(state["shard"])
            self.buffer = [tuple(pair) for pair in state["buffer"]]
            self.pending = state["pending"]
            self.rng.setstate(state["rng"])
        self.shard, self.examples, self.shard_done = shard, iter(shard), False

    def position(self) -> dict:
        return {"shard": self.shard.state_dict(), "buffer": list(self.buffer), "pending": list(self.pending),
                "rng": self.rng.getstate()}

    def take(self, count: int) -> list[dict[str, torch.Tensor]]:
        """`count` batches, or fewer once this rank's shard is used up."""
        batches = []
        while len(batches) < count and (batch := self.next_batch()) is not None:
            batches.append(batch)
        return batches

    def exhausted(self) -> bool:
        return False  # known only when a `take` comes back short

    def _next_pair(self) -> tuple[str, str] | None:
        while len(self.buffer) < self.cfg.shuffle_buffer and not self.shard_done:
            example = next(self.examples, None)
            if example is None:
                self.shard_done = True
            else:
                pair = self.to_pair(example)
                if pair not in self.held_out:
                    self.buffer.append(pair)
        if not self.buffer:
            return None
        i = self.rng.randrange(len(self.buffer))
        self.buffer[i], self.buffer[-1] = self.buffer[-1], self.buffer[i]
        return self.buffer.pop()

    def _grouped_batches(self) -> list[list[tuple[list[int], list[int]]]]:
        """About 50 batches' worth of pairs from the buffer, tokenized, sorted by length, cut into full batches of
        --batch_size, in a shuffled order: similar lengths share a batch, so little compute goes to padding. The
        few pairs left over go back to the buffer (or, once the shard is used up, are dropped)."""
        pairs = []
        while len(pairs) < self.cfg.batch_size * self.GROUPING_BATCHES and (pair := self._next_pair()) is not None:
            pairs.append(pair)
        tokenized = tokenize_pairs(pairs, self.src_tokenizer, self.tgt_tokenizer, self.cfg.seq_len)
        self.dropped_too_long += tokenized.dropped_too_long
        self.dropped_empty += tokenized.dropped_empty
        items = sorted(((*map(torch.Tensor.tolist, tokenized.dataset[i]), pairs[k])
                        for i, k in enumerate(tokenized.kept)), key=lambda item: max(len(item[0]), len(item[1])))
        size = self.cfg.batch_size
        full = len(items) - len(items) % size
        if not self.shard_done:
            self.buffer.extend(item[2] for item in items[full:])
        batches = [[item[:2] for item in items[i:i + size]] for i in range(0, full, size)]
        self.rng.shuffle(batches)
        return batches

    GROUPING_BATCHES = 50

    def next_batch(self) -> dict[str, torch.Tensor] | None:
        """The next batch of --batch_size pairs, or None once this rank's shard is used up (a last, partial batch
        is dropped: the other ranks may have none to pair it with)."""
        while not self.pending and (self.buffer or not self.shard_done):
            self.pending = self._grouped_batches()
        if not self.pending:
            return None
        return collate([(torch.tensor(src), torch.tensor(tgt)) for src, tgt in self.pending.pop()], self.cfg.seq_len)


def shard_for_rank(num_examples: int, rank: int, world_size: int) -> list[int]:
    """A disjoint, strided share of an evaluation split (ranks may differ by one example)."""
    return list(range(rank, num_examples, world_size))
