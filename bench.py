"""How fast our Transformer trains and decodes against the alternatives: one device, one table of ratios.

On the builtin English->Italian corpus, all on the same device and in the same precision:
  1. our model trained on token-budget batches (length-grouped, about --max_tokens padded tokens each, as train.py);
  2. torch.nn.Transformer with the same sizes, embeddings and tied output layer, on exactly the same batches;
  3. our model the old projects' way: the same sentences, --batch_size at a time, all padded to --seq_len;
  4. greedy decoding with and without the key/value cache, DECODE_TOKENS new tokens for every sentence;
  5. DDP weak scaling (CPU only): 2 gloo processes x 1 thread against 1 process x 1 thread on like batches.

A training step is train.py's own (optimization.train_step): forward, cross-entropy (label smoothing 0.1, over
the global non-padding targets), backward, gradient clipping at 1.0 and a fused AdamW step. Batches are on the
device before the clock starts; at least --warmup steps, and with compilation on as many more as it takes for
torch.compile to stop compiling, are not timed but reported (compile time apart from step time); the timed steps
run in one window with one device synchronisation at its end, as training runs them. Every model is built from the
same seed. Throughput counts real tokens only (source + target, no padding) and MFU counts the FLOPs of those tokens
only, as perf.py does.

Usage:
    python bench.py --preset tiny                        # train.py's default model: ~3 minutes on 2 CPU cores
    python bench.py --preset base --steps 30             # Transformer-base; on a GPU: bf16 and torch.compile
    python bench.py --preset tiny --d_model 384 --threads 1 --skip_ddp --json bench.json
"""

import argparse
import logging
import json
import os
import resource
import tempfile
import sys
import time
import warnings

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import builtin_corpus
import dataset as data
import decoding
import optimization
import tokenizer
import model as ours
import perf
from config import Config
from distributed import DistInfo, destroy_distributed
from errors import UserError
from monitor import setup_logging
from runtime import (compilation_count, compile_by_default, compile_layers, configure_cuda, make_autocast,
                     resolve_precision)

PRESETS = {
    "tiny": dict(d_model=256, d_ff=1024, num_heads=4, num_layers=3),  # train.py's defaults
    "base": dict(d_model=512, d_ff=2048, num_heads=8, num_layers=6),  # Vaswani et al.'s Transformer-base
}
SEED = 0
VOCAB_SIZE = 8000
TOKENIZE_LEN = 128  # train.py's --seq_len: longer pairs are dropped (the builtin corpus has none)
DECODE_SENTENCES = 64
DECODE_TOKENS = 50
NEVER_EOS = -1  # no argmax equals it, so no sentence stops before DECODE_TOKENS
MAX_WARMUP_STEPS = 50  # compilation that has not settled by then is reported as it is
# nn.Transformer's pre-norm encoder cannot use nested tensors, which only ever speed up inference: no news here.
warnings.filterwarnings("ignore", message="enable_nested_tensor is True")


logger = logging.getLogger("translation")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", choices=sorted(PRESETS), default="tiny", help="model size; the flags below override it")
    for name in ("d_model", "d_ff", "num_heads", "num_layers"):
        p.add_argument(f"--{name}", type=int, help=f"override the preset's {name}")
    p.add_argument("--device", default="auto", help="auto = cuda if available, else cpu")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto = bf16 on GPUs that support it, fp16 on older GPUs, fp32 on CPU")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="compile every encoder and decoder layer of the models that train, as train.py does "
                        "(default: on for CUDA, off for CPU)")
    p.add_argument("--steps", type=int, default=10, help="timed training steps per measurement")
    p.add_argument("--warmup", type=int, default=2, help="untimed training steps before them")
    p.add_argument("--max_tokens", type=int, default=4096,
                   help="padded tokens per token-budget batch (sentences x longest sentence)")
    p.add_argument("--seq_len", type=int, default=350, help="the fixed padded length of the old way")
    p.add_argument("--batch_size", type=int, default=8, help="sentences per batch of the old way (its default)")
    p.add_argument("--threads", type=int, help="torch.set_num_threads (default: leave as is)")
    p.add_argument("--skip_ddp", action="store_true", help="skip the DDP weak-scaling measurement")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args()
    if args.steps < 1 or args.warmup < 0:
        p.error("--steps must be at least 1 and --warmup at least 0")
    args.device = torch.device(args.device if args.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu")
    try:
        args.precision = resolve_precision(args.precision, args.device)  # the trainer's own policy
    except UserError as e:
        p.error(str(e))
    args.compile = compile_by_default(args.compile, args.device)  # the trainer's own policy
    for name, value in PRESETS[args.preset].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


# ----------------------------------------------------------------------------------------------- data

def load_data():
    """The tokenized train and validation splits, and the two vocabulary sizes."""
    corpus = builtin_corpus.build_builtin_corpus(seed=SEED)
    pairs = {split: [(e["translation"]["en"], e["translation"]["it"]) for e in corpus[split]]
             for split in ("train", "validation")}
    src_tok = tokenizer.train_tokenizer([en for en, _ in pairs["train"]], VOCAB_SIZE)
    tgt_tok = tokenizer.train_tokenizer([it for _, it in pairs["train"]], VOCAB_SIZE)
    train, valid = (data.tokenize_pairs(pairs[s], src_tok, tgt_tok, TOKENIZE_LEN).dataset for s in pairs)
    return train, valid, src_tok.get_vocab_size(), tgt_tok.get_vocab_size()


def token_budget_batches(ds, max_tokens: int, count: int, rank: int = 0, world_size: int = 1) -> list[list[int]]:
    """`count` of this rank's batches as train.py cuts them. The sampler sorts each window of batches from short
    to long sentences, so the first batches are the shortest: take batches spread evenly over the epoch instead,
    for a representative mix of lengths (the same global batches on every rank)."""
    lengths = torch.maximum(ds.src_lengths, ds.tgt_lengths)
    sampler = data.DistributedBatchSampler(len(ds), batch_size=1, rank=rank, world_size=world_size, seed=SEED,
                                           lengths=lengths, max_tokens=max_tokens)  # batch_size: unused here
    batches, epoch = [], 0
    while len(batches) < count:  # more steps than an epoch has batches: go on into the next epochs
        sampler.set_epoch(epoch)
        batches, epoch = batches + list(sampler), epoch + 1
    return [batches[k * len(batches) // count] for k in range(count)]


def fixed_size_batches(ds, sentences: list[int], batch_size: int, seq_len: int, count: int) -> list[dict]:
    """The old projects' batches: shuffled sentences, `batch_size` at a time, every sequence padded to `seq_len`."""
    if len(sentences) < count * batch_size:
        raise SystemExit(f"--batch_size {batch_size}: the token-budget batches hold only {len(sentences)} "
                         f"sentences, fewer than {count} padded batches need")
    order = torch.randperm(len(sentences), generator=torch.Generator().manual_seed(SEED)).tolist()
    chosen = [sentences[i] for i in order[:count * batch_size]]
    batches = [data.collate([ds[i] for i in chosen[k:k + batch_size]], TOKENIZE_LEN)
               for k in range(0, len(chosen), batch_size)]
    longest = max(b[k].shape[1] for b in batches for k in ("src", "tgt_in"))
    if longest > seq_len:
        raise SystemExit(f"--seq_len {seq_len}: shorter than the longest sentence of these batches ({longest} tokens)")
    return [{**{k: F.pad(b[k], (0, seq_len - b[k].shape[1]), value=tokenizer.PAD_ID)
                for k in ("src", "tgt_in", "tgt_out")}, "src_padded": True} for b in batches]


def batch_stats(batch: dict) -> dict:
    """Real (non-padding) tokens, padded positions, and the shape that the FLOPs of a batch depend on."""
    src_lengths, tgt_lengths = (batch[k].ne(tokenizer.PAD_ID).sum(dim=1).cpu() for k in ("src", "tgt_in"))
    return {"src": int(src_lengths.sum()), "tgt": int(tgt_lengths.sum()),
            "positions": batch["src"].numel() + batch["tgt_in"].numel(),
            "shape": perf.StepShape.of_batch(src_lengths, tgt_lengths)}


# ----------------------------------------------------------------------------------------------- models

class TorchTransformer(nn.Module):
    """Our translation model rebuilt around torch.nn.Transformer: embeddings scaled by sqrt(d_model) plus
    sinusoidal positions, pre-norm layers with GELU, final norms, an output layer tied to the target embedding."""

    def __init__(self, c: ours.ModelConfig):
        super().__init__()
        self.config = c
        self.src_embed = nn.Embedding(c.src_vocab_size, c.d_model)
        self.tgt_embed = nn.Embedding(c.tgt_vocab_size, c.d_model)
        self.register_buffer("positions", ours.sinusoidal_positions(c.max_len, c.d_model), persistent=False)
        self.embed_dropout = nn.Dropout(c.dropout)
        self.transformer = nn.Transformer(c.d_model, c.num_heads, c.num_layers, c.num_layers, c.d_ff, c.dropout,
                                          activation="gelu", batch_first=True, norm_first=True)
        self.output = nn.Linear(c.d_model, c.tgt_vocab_size, bias=False)
        self.output.weight = self.tgt_embed.weight

    def _embed(self, embedding: nn.Embedding, tokens: torch.Tensor) -> torch.Tensor:
        x = embedding(tokens) * self.config.d_model ** 0.5 + self.positions[:tokens.shape[1]]
        return self.embed_dropout(x)

    def forward(self, src: torch.Tensor, tgt_in: torch.Tensor, src_padded: bool = True) -> torch.Tensor:
        # Boolean masks, True where attention is not allowed (a padding key, a future position): the float mask of
        # generate_square_subsequent_mask beside boolean padding masks is deprecated.
        src_pad, tgt_pad = (src == self.config.pad_id) if src_padded else None, tgt_in == self.config.pad_id
        causal = torch.ones(tgt_in.shape[1], tgt_in.shape[1], dtype=torch.bool, device=tgt_in.device).triu(1)
        y = self.transformer(self._embed(self.src_embed, src), self._embed(self.tgt_embed, tgt_in),
                             tgt_mask=causal, tgt_is_causal=True, src_key_padding_mask=src_pad,
                             tgt_key_padding_mask=tgt_pad, memory_key_padding_mask=src_pad)
        return self.output(y)


def build(kind, config: ours.ModelConfig, device: torch.device) -> nn.Module:
    torch.manual_seed(SEED)  # the same seed for every model, so no run gets a luckier start
    return kind(config).to(device)


# ----------------------------------------------------------------------------------------------- training

def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class TrainingRun:
    """One model training on the bench's batches with train.py's own step (optimization.train_step: label-smoothed
    loss over the global target tokens, backward, gradient clipping at 1.0, fused AdamW), under DDP when the model
    is wrapped in it."""

    def __init__(self, name: str, model: nn.Module, args, world_size: int = 1, rank: int = 0):
        self.name, self.model, self.args = name, model, args
        self.raw_model = model.module if isinstance(model, DistributedDataParallel) else model
        if args.compile:
            compile_regions(self.raw_model)
        self.raw_model.train()
        self.cfg = Config(d_model=args.d_model, grad_clip=1.0, label_smoothing=0.1, lr=1e-4)
        self.info = DistInfo(rank=rank, local_rank=0, world_size=world_size, device=args.device)
        self.optimizer = optimization.build_optimizer(self.raw_model, self.cfg)
        self.scaler = torch.amp.GradScaler(args.device.type) if args.precision == "fp16" else None
        self.autocast = make_autocast(args.precision, args.device)

    def step(self, batch: dict) -> None:
        optimization.train_step(self.model, self.raw_model, self.optimizer, self.scaler, [batch], self.cfg, self.info,
                                self.autocast)

    def warm_up(self, batches: list[dict]) -> tuple[float, int]:
        """(seconds, steps) of the untimed start: at least --warmup steps, and with compilation on, until
        torch.compile's count of graphs has not changed for two steps (a new batch shape compiles once more)."""
        started, steps, stable, graphs = time.perf_counter(), 0, 0, compilation_count()
        while steps < self.args.warmup or (self.args.compile and stable < 2 and steps < MAX_WARMUP_STEPS):
            self.step(batches[steps % len(batches)])
            steps, previous, graphs = steps + 1, graphs, compilation_count()
            stable = stable + 1 if graphs == previous else 0
        synchronize(self.args.device)
        return time.perf_counter() - started, steps

    def timed_window(self, batches: list[dict]) -> tuple[float, float]:
        """(seconds, peak device memory in MB) of the steps over `batches`, synchronised once, at the end: the
        device queue runs as it does in training, where the host never waits for it between steps."""
        device = self.args.device
        synchronize(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        started = time.perf_counter()
        for batch in batches:
            self.step(batch)
        synchronize(device)
        seconds = time.perf_counter() - started
        memory = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else \
            resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 2 ** 10  # kB on Linux: the process's peak
        return seconds, memory / 2 ** 20


def measure_training(models: dict[str, nn.Module], batches: list[dict], args, vocab: int, peak: float,
                     world_size: int = 1, rank: int = 0) -> list[dict]:
    """Every model warmed up (compilation included, reported apart), then timed over the same --steps batches in
    one window each. One result row per model."""
    timed_batches = batches[args.warmup:]
    timed = [batch_stats(b) for b in timed_batches]
    src, tgt = sum(s["src"] for s in timed), sum(s["tgt"] for s in timed)
    flops = perf.training_flops(sum((s["shape"] for s in timed[1:]), timed[0]["shape"]),
                                args.d_model, args.d_ff, args.num_layers, vocab)
    rows = []
    for name, model in models.items():
        run = TrainingRun(name, model, args, world_size, rank)
        warmup_s, warmup_steps = run.warm_up(batches)
        if dist.is_initialized():
            dist.barrier()  # DDP ranks start the clock together
        seconds, memory_mb = run.timed_window(timed_batches)
        rows.append({"name": name, "tokens": src + tgt, "seconds": seconds, "tokens_per_s": (src + tgt) / seconds,
                     "tgt_tokens_per_s": tgt / seconds, "padding_efficiency": (src + tgt) / sum(s["positions"]
                                                                                               for s in timed),
                     "step_ms": 1000 * seconds / len(timed), "mfu": flops / seconds / peak if peak else None,
                     "peak_memory_mb": memory_mb, "warmup_s": warmup_s, "warmup_steps": warmup_steps})
    return rows


def compile_regions(model: nn.Module) -> None:
    """Regional compilation, as train.py does it: every encoder and decoder layer on its own, dynamic shapes."""
    if isinstance(model, ours.Transformer):
        compile_layers(model)
    else:
        for layer in [*model.transformer.encoder.layers, *model.transformer.decoder.layers]:
            layer.compile(dynamic=True)


def launch_latency_us(device: torch.device, launches: int = 2000) -> float:
    """Microseconds per launch of a near-empty kernel (an in-place add to one number): the floor under every small
    operation, which tells how launch-bound the machine is, so figures from different machines can be read."""
    x = torch.zeros(1, device=device)
    for _ in range(100):
        x.add_(1)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(launches):
        x.add_(1)
    synchronize(device)
    return 1e6 * (time.perf_counter() - start) / launches


# ----------------------------------------------------------------------------------------------- decoding

def decoding_speed(model: ours.Transformer, src: torch.Tensor, device: torch.device, precision: str) -> dict:
    """Sentences/s of greedy decoding, cached and uncached, exactly DECODE_TOKENS new tokens for every sentence."""
    model.eval()
    speed = {}
    for use_cache in (True, False):
        with make_autocast(precision, device)():
            decoding.greedy_decode(model, src, tokenizer.BOS_ID, NEVER_EOS, 2, use_cache=use_cache)  # warm up
            synchronize(device)
            start = time.perf_counter()
            out = decoding.greedy_decode(model, src, tokenizer.BOS_ID, NEVER_EOS, DECODE_TOKENS, use_cache=use_cache)
            synchronize(device)
        assert out.shape[1] == DECODE_TOKENS, out.shape
        speed["cached" if use_cache else "uncached"] = len(src) / (time.perf_counter() - start)
    return speed


# ----------------------------------------------------------------------------------------------- DDP

def ddp_worker(rank: int, world_size: int, store_file: str, rank_batches: list[list[dict]], config, args, results):
    """One process, one thread: trains on its own batches (in DDP when world_size > 1) and reports its row."""
    torch.set_num_threads(1)
    if world_size > 1:  # a file store: no port to pick, release and hope to get back
        dist.init_process_group("gloo", store=dist.FileStore(store_file, world_size), rank=rank,
                                world_size=world_size)
    try:
        model = build(ours.Transformer, config, args.device)
        model = DistributedDataParallel(model) if world_size > 1 else model
        (row,) = measure_training({f"rank {rank}": model}, rank_batches[rank], args, config.tgt_vocab_size, 0.0,
                                  world_size, rank)
        results.put(row)
        del model, row  # freed before the group, as destroy_distributed says why
    finally:
        destroy_distributed()


def run_workers(world_size: int, rank_batches: list[list[dict]], config, args) -> float:
    """Real tokens/s of `world_size` spawned processes together: all their tokens over the slowest one's time."""
    results = mp.get_context("spawn").SimpleQueue()
    with tempfile.TemporaryDirectory() as folder:
        mp.start_processes(ddp_worker, args=(world_size, os.path.join(folder, "store"), rank_batches, config, args,
                                             results), nprocs=world_size, start_method="spawn")
    rows = [results.get() for _ in range(world_size)]
    return sum(r["tokens"] for r in rows) / max(r["seconds"] for r in rows)


def ddp_weak_scaling(train_ds, config, args) -> dict:
    """Two ranks on their own token-budget batches against one process on as many batches of the same shapes
    (rank 0's and rank 1's in turn). Efficiency = 2-rank tokens/s / (2 x 1-process tokens/s)."""
    count = args.warmup + args.steps
    ranks = [[data.collate([train_ds[i] for i in b], TOKENIZE_LEN)
              for b in token_budget_batches(train_ds, args.max_tokens, count, rank, world_size=2)] for rank in (0, 1)]
    ddp = run_workers(2, ranks, config, args)
    single = run_workers(1, [[ranks[k % 2][k] for k in range(count)]], config, args)
    return {"ddp_tokens_per_s": ddp, "single_tokens_per_s": single, "efficiency": ddp / (2 * single)}


# ----------------------------------------------------------------------------------------------- report

def ratio_lines(args, rows: list[dict], decoding: dict, ddp: dict | None) -> list[str]:
    ours_row, torch_row, fixed_row = rows
    cached, uncached = decoding["cached"], decoding["uncached"]
    lines = [f"ours / nn.Transformer = {ours_row['tokens_per_s'] / torch_row['tokens_per_s']:.2f}",
             f"token budget / padded-to-{args.seq_len} (real tokens/s) = "
             f"{ours_row['tokens_per_s'] / fixed_row['tokens_per_s']:.1f}",
             f"cached / uncached decoding = {cached / uncached:.1f} ({cached:.1f} vs {uncached:.1f} sent/s at "
             f"{DECODE_TOKENS} tokens)"]
    if ddp:
        lines.append(f"DDP weak-scaling efficiency (2 gloo ranks x 1 thread vs 1 x 1) = {100 * ddp['efficiency']:.0f}%"
                     f" ({ddp['ddp_tokens_per_s']:,.0f} vs {ddp['single_tokens_per_s']:,.0f} tokens/s)")
    else:
        lines.append("DDP weak scaling skipped" + (" (--skip_ddp)" if args.skip_ddp else " (CPU only)"))
    return lines


def print_table(header: list[str], rows: list[dict], ratios: list[str], device: torch.device) -> None:
    memory = "peak mem" if device.type == "cuda" else "peak RSS"
    print("\n".join(header))
    print(f"{'measurement':<32}{'tokens/s':>10}{'tgt tok/s':>11}{'pad eff':>9}{'step ms':>9}{'MFU':>8}{memory:>11}"
          f"{'warmup s':>10}{'steps':>6}")
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a"
        print(f"{r['name']:<32}{r['tokens_per_s']:>10,.0f}{r['tgt_tokens_per_s']:>11,.0f}"
              f"{100 * r['padding_efficiency']:>8.1f}%{r['step_ms']:>9.0f}{mfu:>8}{r['peak_memory_mb']:>8.0f} MB"
              f"{r['warmup_s']:>10.1f}{r['warmup_steps']:>6}")
    print("(warmup s: the untimed first steps, compilation included, until it stopped compiling; step times, over one "
          "window synchronised once, exclude it)")
    if device.type != "cuda":
        print(f"({memory}: the process's maximum resident memory so far, so it can only grow down the table)")
    print("ratios: " + " ; ".join(ratios))


def log(started: float, message: str) -> None:
    logger.info(f"[{time.perf_counter() - started:4.0f} s] {message}")


def main() -> None:
    args = parse_args()
    setup_logging(rank=0, stream=sys.stderr)  # stdout carries the table
    if args.threads:
        torch.set_num_threads(args.threads)
    configure_cuda(args.device)  # as train.py: TF32, attention kernels pinned
    started, load = time.perf_counter(), os.getloadavg()[0]  # other busy processes skew every figure on a CPU
    train_ds, valid_ds, src_vocab, tgt_vocab = load_data()
    config = ours.ModelConfig(src_vocab, tgt_vocab, d_model=args.d_model, num_heads=args.num_heads,
                              num_layers=args.num_layers, d_ff=args.d_ff, dropout=0.1,
                              max_len=max(args.seq_len, TOKENIZE_LEN), tie_embeddings=True)
    peak, peak_source = perf.peak_flops(args.device, args.precision)

    count = args.warmup + args.steps
    budget_ids = token_budget_batches(train_ds, args.max_tokens, count)
    budget = [data.collate([train_ds[i] for i in b], TOKENIZE_LEN) for b in budget_ids]
    sentences = [i for b in budget_ids for i in b]
    fixed = fixed_size_batches(train_ds, sentences, args.batch_size, args.seq_len, count)
    on_device = lambda batches: [{k: v.to(args.device) if torch.is_tensor(v) else v for k, v in b.items()}  # noqa: E731
                                 for b in batches]

    log(started, f"training ours and nn.Transformer on {args.warmup}+{args.steps} token-budget batches")
    rows = measure_training({"ours, token-budget batches": build(ours.Transformer, config, args.device),
                             "nn.Transformer, same batches": build(TorchTransformer, config, args.device)},
                            on_device(budget), args, tgt_vocab, peak)
    log(started, f"training ours on {args.warmup}+{args.steps} batches padded to {args.seq_len}")
    rows += measure_training({f"ours, padded to {args.seq_len}": build(ours.Transformer, config, args.device)},
                             on_device(fixed), args, tgt_vocab, peak)
    log(started, f"greedy decoding of {DECODE_SENTENCES} validation sentences, with and without the cache")
    src = data.collate([valid_ds[i] for i in range(DECODE_SENTENCES)], TOKENIZE_LEN)["src"].to(args.device)
    decoding = decoding_speed(build(ours.Transformer, config, args.device), src, args.device, args.precision)
    ddp = None
    if not args.skip_ddp and args.device.type == "cpu":
        log(started, "DDP weak scaling: 2 gloo ranks x 1 thread, then 1 process x 1 thread")
        ddp = ddp_weak_scaling(train_ds, config, args)

    latency = launch_latency_us(args.device)
    threads = (f" ({torch.get_num_threads()} threads, load {load:.1f} at start, {os.getloadavg()[0]:.1f} at end)"
               if args.device.type == "cpu" else "")
    header = [f"device {args.device}{threads} | preset {args.preset}: d_model {args.d_model}, d_ff {args.d_ff}, "
              f"{args.num_heads} heads, {args.num_layers}+{args.num_layers} layers, vocab {src_vocab}/{tgt_vocab} | "
              f"precision {args.precision} | compile {'on, per layer' if args.compile else 'off'} | "
              f"peak {peak / 1e12:.2f} TFLOP/s ({peak_source}) | launch latency {latency:.1f} "
              f"us per tiny kernel",
              f"{args.steps} timed steps after {args.warmup} warmup | token budget {args.max_tokens} "
              f"(~{len(sentences) / count:.0f} sentences/batch) | old way: {args.batch_size} sentences x "
              f"{args.seq_len}"]
    ratios = ratio_lines(args, rows, decoding, ddp)
    print_table(header, rows, ratios, args.device)
    print(f"total {time.perf_counter() - started:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"header": header, "args": {k: str(v) for k, v in vars(args).items()}, "training": rows,
                       "decoding_sentences_per_s": decoding, "ddp": ddp, "ratios": ratios,
                       "launch_latency_us": latency, "peak_tflops": peak / 1e12}, f, indent=2)


if __name__ == "__main__":
    main()
