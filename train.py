"""Train an encoder-decoder Transformer for translation on one process or many.

    python train.py                                       # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=2 train.py     # one node, two processes
    torchrun --nproc_per_node=8 --nnodes=2 --rdzv_id=456 --rdzv_backend=c10d --rdzv_endpoint=HOST:48123 train.py

Reads top to bottom: config -> distributed setup -> data -> model -> optimizer -> resume -> loop -> teardown.
Global rank 0 alone writes to --model_folder (tokenizers, checkpoints, metrics.jsonl, W&B).
"""

import contextlib
import dataclasses
import functools
import io
import json
import logging
import math
import os
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass

import torch
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoint
import dataset as data
import faults
import parallel
import perf
import runtime
import tokenizer
from config import (UNTIL_THE_BUDGET, Config, duration_text, gpu_token_budget, max_time_seconds, model_config,
                    parse_config, resolve_defaults, to_dict, validate)
from corpus import held_out_pairs, load_corpus, pair_of_example, tokenizer_sample
from distributed import (DistInfo, LateAgreement, any_rank, barrier, broadcast_from_main,
                         broadcast_tensors_from_main, destroy_distributed, dist_max, dist_sum, gather_to_main,
                         init_distributed, main_first, on_main_only, raise_if_any_failed, run_on_main)
from errors import USER_ERROR_EXIT, UserError, stopped_exit
from evaluation import evaluate, tokenize_as_given
from model import Transformer, count_parameters
from optimization import StepResult, build_optimizer, lr_multiplier, train_step
from progress import on_terminal
from monitor import RunMonitor, new_run_id, setup_logging
from storage import remove_stale_temporaries, replace_text
from tokenizer import PAD_ID

log = logging.getLogger("translation")

# Settings a checkpoint must share with the run that resumes it: they define the network and its vocabularies
# (--vocab_size too: the folder's tokenizers, trained with the checkpoint's, are reused and would silently disagree).
ARCHITECTURE_SETTINGS = ("lang_src", "lang_tgt", "d_model", "num_layers", "num_heads", "d_ff", "tie_embeddings",
                         "share_vocab", "vocab_size")
# Settings of the data that a resumed run may change, warned about by name: the run goes on over other pairs.
DATA_SETTINGS = ("dataset", "dataset_config", "data_files", "streaming", "seq_len", "valid_size", "test_size",
                 "tokenizer_sample", "shuffle_buffer")


def rng_state(device: torch.device) -> dict:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def check_resumable(saved: dict, cfg: Config, tokenizer_ids: dict) -> None:
    """A clear error, naming the difference, when a checkpoint does not fit this run."""
    saved_cfg = saved["config"]
    diffs = [f"--{k} {saved_cfg[k]} (checkpoint) vs {getattr(cfg, k)} (now)"
             for k in ARCHITECTURE_SETTINGS if k in saved_cfg and saved_cfg[k] != getattr(cfg, k)]
    diffs += [f"the {side} tokenizer differs from the checkpoint's" for side in ("src", "tgt")
              if saved["tokenizers"][side] != tokenizer_ids[side]]
    if diffs:
        raise UserError(f"cannot resume from step {saved['step']}: {'; '.join(diffs)} (use the checkpoint's "
                        f"settings, which a default chosen by corpus size or --max_time may not be, or another "
                        f"--model_folder)")


def warn_of_data_changes(saved: dict, cfg: Config) -> None:
    """Rank 0: a resumed run may read other data than the run that saved the checkpoint (a larger corpus, another
    --seq_len), but never silently: one warning names every change."""
    saved_cfg = saved["config"]
    changes = [f"--{k} {saved_cfg[k]} (checkpoint) -> {getattr(cfg, k)} (now)"
               for k in DATA_SETTINGS if k in saved_cfg and saved_cfg[k] != getattr(cfg, k)]
    if changes:
        log.warning(f"resuming from step {saved['step']} with other data settings than the checkpoint's: "
                    f"{'; '.join(changes)}. Training goes on from the same step and position in the epoch over the "
                    f"data as now configured; validation scores compare across the change only if the validation "
                    f"split is the same")


def saved_position(saved: dict, cfg: Config, info: DistInfo):
    """Where this rank resumes in the saved epoch: the samples consumed (in-memory corpus, any world size), or its
    own stream position; a stream saved by another number of ranks restarts its epoch (shards differ)."""
    if not cfg.streaming:  # a checkpoint without "epoch_started_by" is older than shuffled steps: an epoch it
        started_by = saved.get("epoch_started_by")  # began keeps its unshuffled order (one not begun needs none)
        old_order = started_by is None and saved["epoch_sample"] > 0
        return data.EpochPosition(saved["epoch_sample"], *(started_by or (info.world_size, cfg.batch_size)),
                                  steps_shuffled=saved.get("epoch_steps_shuffled", not old_order))
    positions = saved.get("stream_positions")
    if positions and len(positions) == info.world_size:
        return positions[info.rank]
    log.info(f"the stream positions were saved by {len(positions or [])} ranks, not {info.world_size}: epoch "
             f"{saved['epoch']} of the stream starts over")
    return None


class StopSignal:
    """SIGTERM (preemption, torchrun stopping its workers) or SIGINT (Ctrl-C) asks for a clean stop: the loop
    agrees on it across ranks at a step boundary and goes straight to the checkpoint. A second Ctrl-C stops at once.
    torchrun kills its workers 30 s after forwarding a SIGTERM: the time to the committed checkpoint is logged."""

    def __init__(self):
        self.received: str | None = None
        self.signum = 0  # of the last signal: agreed across ranks (the highest: SIGTERM over SIGINT)
        self.received_at: float | None = None  # time.perf_counter() of the first signal
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        if self.received is None:
            self.received_at = time.perf_counter()
        self.received, self.signum = signal.Signals(signum).name, max(self.signum, signum)


def check_folder_is_shared(cfg: Config, info: DistInfo) -> None:
    """Collective. Rank 0 alone reads checkpoints; if another node sees a newer one in its --model_folder, the
    folder is not shared and rank 0 would silently start over: stop instead, on every rank."""
    mine = checkpoint.newest_step(cfg.model_folder) if cfg.preload == "latest" else -1
    main_step = broadcast_from_main(mine)
    raise_if_any_failed(None if mine <= main_step else
                        f"--model_folder {cfg.model_folder}: this node sees checkpoint step {mine} but global rank 0 "
                        f"sees {main_step if main_step >= 0 else 'none'}; the folder must be the same shared drive "
                        f"on every node (or pass --preload with a path rank 0 can read)")


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux


@dataclass
class Window:
    """What the steps since the last log line did; host-side counts are this rank's, read without any sync."""
    loss_sum: torch.Tensor
    tokens: torch.Tensor
    real_tokens: int = 0  # non-padding source + target positions
    padded_positions: int = 0
    flops: float = 0.0
    steps: int = 0
    start: float = 0.0

    @staticmethod
    def new(device: torch.device) -> "Window":
        return Window(torch.zeros((), device=device), torch.zeros((), device=device), start=time.perf_counter())

    def add(self, micro_batches: list[dict], result: StepResult, cfg: Config, tgt_vocab_size: int) -> None:
        self.loss_sum += result.loss_sum
        self.tokens += result.tokens
        for batch in micro_batches:  # CPU tensors: counted without waiting for the device
            shape = perf.StepShape.of_padded(batch["src"], batch["tgt_out"], PAD_ID)
            self.real_tokens += shape.src_tokens + shape.tgt_tokens
            self.padded_positions += batch["src"].numel() + batch["tgt_out"].numel()
            self.flops += perf.training_flops(shape, cfg.d_model, cfg.d_ff, cfg.num_layers, tgt_vocab_size)
        self.steps += 1


def train(cfg: Config, info: DistInfo) -> int:
    """The whole run, in phases: setup, data, model, resume, loop, finish. Its exit status: 0, or that of a stop
    (errors.stopped_exit)."""
    started = time.perf_counter()
    parallel.check_strategy(cfg)
    precision = runtime.resolve_precision(cfg.precision, info.device)
    if precision == "fp16" and cfg.strategy == "fsdp":  # --precision auto on a GPU without bf16
        precision = "fp32"
    runtime.configure_cuda(info.device)
    log.info(f"world size {info.world_size}, device {info.device.type}, precision {precision}")
    cfg, run_data = load_data(cfg, info)
    parts = build_model(cfg, info, run_data, precision, started)
    state = resume(cfg, info, run_data, parts)
    run_on_main(lambda: claim_folder(cfg, run_data))
    run = Run(cfg, info, run_data, parts, state, runtime.make_autocast(precision, info.device))
    stopped_by = run.loop()
    run.finish(stopped_by)
    return stopped_exit(stopped_by) if stopped_by else 0


@dataclass
class RunData:
    """The data of a run: texts, tokenizers, the tokenized validation split and this rank's training batches."""
    pairs: dict  # {"train", "validation", "test"}: pairs (with --streaming, "train" is a stream read lazily)
    src_tok: object
    tgt_tok: object
    tokenizer_json: tuple[str, str]  # source, target: written to --model_folder once the start is accepted
    tokenizer_ids: dict  # fingerprint of each tokenizer's JSON: a resumed checkpoint must match them
    valid_set: data.Tokenized
    batches: object  # data.LoaderBatches or data.StreamBatches
    steps_per_epoch: int | None  # None for a stream
    num_workers: int
    initial: dict | None = None  # --init_from: the weights (on rank 0), their tokenizers, path and step


def load_data(cfg: Config, info: DistInfo) -> tuple[Config, RunData]:
    """Corpus, settings sized for it, tokenizers (built by rank 0 and handed to all), tokenized splits and this
    rank's batches. Nothing is written here (see `claim_folder`)."""
    cfg, initial = network_to_start_from(cfg, info)
    pairs = main_first(lambda: load_corpus(cfg))  # rank 0 first: hub downloads land in the cache once
    given = cfg
    cfg, chosen = resolve_defaults(cfg, None if cfg.streaming else len(pairs["train"]), info.device.type)
    log.info(f"config: {json.dumps(to_dict(cfg))}")
    if chosen:
        log.info(f"defaults chosen: {chosen}")
    run_on_main(lambda: checkpoint.check_writable(cfg.model_folder))
    check_folder_is_shared(cfg, info)
    texts = run_tokenizers(cfg, pairs, initial)
    src_tok, tgt_tok = (tokenizer.tokenizer_from_json(text) for text in texts)
    valid_set = data.tokenize_pairs(pairs["validation"], src_tok, tgt_tok, cfg.seq_len)
    splits = [("validation", valid_set)]
    if cfg.streaming:
        batches, steps_per_epoch, num_workers = stream_batches(pairs, src_tok, tgt_tok, cfg, info.rank,
                                                               info.world_size), None, 0
    else:
        train_set = data.tokenize_pairs(pairs["train"], src_tok, tgt_tok, cfg.seq_len)
        splits.insert(0, ("train", train_set))
        if info.device.type == "cuda":  # batches by token budget unless the user sized them
            lengths = torch.maximum(train_set.dataset.src_lengths, train_set.dataset.tgt_lengths)
            cfg, chosen = gpu_token_budget(cfg, given, int(lengths.sum()), info.world_size)
            if chosen:
                log.info(f"defaults chosen: {chosen}")
        batches, num_workers = training_batches(cfg, info, train_set)
        steps_per_epoch = math.ceil(len(batches.sampler) / cfg.grad_accum_steps)
    for name, split in splits:
        log.info(f"{name}: {len(split.dataset)} pairs kept, {split.dropped_too_long} dropped as longer than "
                 f"--seq_len {cfg.seq_len}, {split.dropped_empty} dropped as empty")
    if len(valid_set.dataset) == 0:
        raise UserError(f"--seq_len {cfg.seq_len}: no validation pair fits; raise --seq_len")
    ids = {side: tokenizer.fingerprint(text) for side, text in zip(("src", "tgt"), texts)}
    return cfg, RunData(pairs, src_tok, tgt_tok, texts, ids, valid_set, batches, steps_per_epoch, num_workers,
                        initial)


def network_to_start_from(cfg: Config, info: DistInfo) -> tuple[Config, dict | None]:
    """Collective. The settings with the network the run starts from, and --init_from's weights if they are used.
    Settings of the network left unset are not chosen again by corpus size or budget (which may have changed) but
    taken from what the run continues: a resumed run's previous start (config.json; the checkpoint is checked in
    `resume`), or the weights of --init_from, whose settings given otherwise are refused. Resume wins over
    --init_from, so that the command that started a run from weights continues it after a preemption or a crash.
    The weights: {"model" (on rank 0), "tokenizers", "path", "step"}."""
    newest, previous = run_on_main(lambda: previous_start(cfg))
    if newest >= 0:
        if cfg.init_from and info.is_main:
            log.warning(f"--init_from {cfg.init_from} not used: {cfg.model_folder} holds checkpoints (the newest of "
                        f"step {newest}) and the run resumes from them")
        return network_of(cfg, previous or {}, "the run it resumes"), None
    if cfg.init_from is None:
        return cfg, None
    source = on_main_only(lambda: read_weights_and_tokenizers(cfg.init_from))
    about = broadcast_from_main(None if source is None else {k: v for k, v in source.items() if k != "model"})
    cfg, saved = network_of(cfg, about["config"], "--init_from's weights"), about["config"]
    diffs = [f"--{k} {getattr(cfg, k)} (now) vs {saved[k]} (the weights')"
             for k in ARCHITECTURE_SETTINGS if k in saved and saved[k] != getattr(cfg, k)]
    if diffs:
        raise UserError(f"--init_from {about['path']}: {'; '.join(diffs)} (the weights fix the network and its "
                        f"vocabularies: give their values, or leave these settings unset)")
    return cfg, {**about, "model": source["model"] if source else None}


def previous_start(cfg: Config) -> tuple[int, dict | None]:
    """Rank 0: the newest checkpoint step a --preload latest resumes from (-1: none), and the settings the folder's
    config.json holds (those of the start that wrote it; None when missing or unreadable)."""
    newest = checkpoint.newest_step(cfg.model_folder) if cfg.preload == "latest" else -1
    try:
        with open(os.path.join(cfg.model_folder, "config.json"), encoding="utf-8") as f:
            return newest, json.load(f) if newest >= 0 else None
    except (OSError, ValueError):
        return newest, None


def network_of(cfg: Config, saved: dict, whose: str) -> Config:
    """`cfg` with the settings of the network and vocabularies it leaves unset taken from `saved` (`whose`), logged."""
    taken = {k: saved[k] for k in ARCHITECTURE_SETTINGS if getattr(cfg, k) is None and saved.get(k) is not None}
    if taken:
        log.info(f"as {whose}: {', '.join(f'--{k} {v}' for k, v in taken.items())}")
    return dataclasses.replace(cfg, **taken)


def read_weights_and_tokenizers(path: str) -> dict:
    """Rank 0: --init_from's weights and settings (checkpoint.read_weights_source), with "tokenizers", the JSON of
    the tokenizers beside them, which must be those the weights record."""
    source = checkpoint.read_weights_source(path)
    texts = []
    for lang in (source["config"]["lang_src"], source["config"]["lang_tgt"]):
        try:
            with open(tokenizer.tokenizer_path(source["folder"], lang), encoding="utf-8") as f:
                texts.append(f.read())
        except OSError:
            raise UserError(f"--init_from {path}: {tokenizer.tokenizer_path(source['folder'], lang)} is missing; "
                            f"the tokenizers of the weights must sit beside them") from None
    if source["tokenizers"] and [tokenizer.fingerprint(t) for t in texts] != [source["tokenizers"][side]
                                                                              for side in ("src", "tgt")]:
        raise UserError(f"--init_from {path}: the tokenizers beside it are not the ones its weights were trained "
                        f"with")
    return {**source, "tokenizers": tuple(texts)}


def run_tokenizers(cfg: Config, pairs: dict, initial: dict | None) -> tuple[str, str]:
    """Collective. The tokenizers' JSON, built (or reused from --model_folder) by rank 0 and handed to everyone: no
    file race, no shared folder needed. With --init_from, the weights' own, which the folder must not contradict."""
    if initial is None:
        return run_on_main(lambda: tokenizer.build_tokenizer_json(
            cfg.model_folder, (cfg.lang_src, cfg.lang_tgt), cfg.share_vocab, cfg.vocab_size,
            lambda: tokenizer_sample(cfg, pairs)))
    run_on_main(lambda: check_folder_tokenizers(cfg, initial["tokenizers"]))
    return initial["tokenizers"]


def check_folder_tokenizers(cfg: Config, texts: tuple[str, str]) -> None:
    """Rank 0: tokenizers already in --model_folder (an earlier start that saved no checkpoint) must be the ones
    that come with --init_from's weights, which the run keeps."""
    for lang, text in zip((cfg.lang_src, cfg.lang_tgt), texts):
        path = tokenizer.tokenizer_path(cfg.model_folder, lang)
        if os.path.exists(path):
            with open(path, encoding="utf-8") as f:
                if f.read() != text:
                    raise UserError(f"--init_from {cfg.init_from}: {path} is another tokenizer than the weights'; "
                                    f"remove it or use another --model_folder")


def stream_batches(pairs: dict, src_tok, tgt_tok, cfg: Config, rank: int, world_size: int) -> data.StreamBatches:
    """This rank's batches of a --streaming training split, with the held-out pairs left out."""
    return data.StreamBatches(pairs["train"], held_out_pairs(pairs), functools.partial(pair_of_example, cfg=cfg),
                              src_tok, tgt_tok, cfg, rank, world_size)


def training_batches(cfg: Config, info: DistInfo, train_set: data.Tokenized) -> tuple[data.LoaderBatches, int]:
    """This rank's batches of an in-memory training split, and the DataLoader's worker count."""
    if len(train_set.dataset) < info.world_size:
        raise UserError(f"--seq_len {cfg.seq_len}: too few training pairs fit ({len(train_set.dataset)}); "
                        f"raise --seq_len")
    on_gpu = info.device.type == "cuda"
    lengths = torch.maximum(train_set.dataset.src_lengths, train_set.dataset.tgt_lengths)
    sampler = data.DistributedBatchSampler(len(train_set.dataset), cfg.batch_size, info.rank, info.world_size,
                                           cfg.seed, lengths=lengths, max_tokens=cfg.max_tokens, max_len=cfg.seq_len)
    num_workers = cfg.num_workers if cfg.num_workers is not None else (2 if on_gpu else 0)
    if num_workers:  # the tokenizers ran in this process: said before the workers fork, or tokenizers warns
        os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    # Its own generator: iter(DataLoader) would otherwise draw from the global RNG at every epoch start, and a
    # mid-epoch resume would then see another dropout stream than an uninterrupted run.
    loader = DataLoader(train_set.dataset, batch_sampler=sampler,
                        collate_fn=functools.partial(data.collate, max_len=cfg.seq_len), pin_memory=on_gpu,
                        num_workers=num_workers, persistent_workers=False, generator=torch.Generator(),
                        worker_init_fn=data.ignore_stop_signals if num_workers else None)
    return data.LoaderBatches(loader, sampler), num_workers


def claim_folder(cfg: Config, run_data: RunData) -> None:
    """Rank 0, once every start-up check (the resume's included) has passed: the run's first writes to
    --model_folder. A refused start leaves the folder as it was."""
    os.makedirs(cfg.model_folder, exist_ok=True)
    tokenizer.save_tokenizers(cfg.model_folder, (cfg.lang_src, cfg.lang_tgt), run_data.tokenizer_json)
    remove_stale_temporaries(cfg.model_folder)
    checkpoint.clear_stopped(cfg.model_folder)
    # The settings this run resolved, every default included: what the run did, readable without torch.
    replace_text(os.path.join(cfg.model_folder, "config.json"), json.dumps(to_dict(cfg), indent=2) + "\n")


@dataclass
class ModelParts:
    raw_model: Transformer  # the module evaluated and checkpointed (sharded in place under FSDP)
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler | None
    total_steps: int | float  # by --max_steps and --num_epochs; --max_time may end the run sooner
    budget: "BudgetClock"  # --max_time; the cosine schedule follows the fraction of it spent
    precision: str


def build_model(cfg: Config, info: DistInfo, run_data: RunData, precision: str, started: float) -> ModelParts:
    """The model, identical on every rank (DDP also broadcasts rank 0's parameters when it wraps), sharded by FSDP,
    and its optimizer, learning-rate schedule and gradient scaler."""
    torch.manual_seed(cfg.seed)
    model_cfg = model_config(cfg, run_data.src_tok.get_vocab_size(), run_data.tgt_tok.get_vocab_size(), PAD_ID)
    if cfg.strategy == "fsdp":
        raw_model = parallel.build_sharded(model_cfg, cfg, precision, info.device)
    else:
        raw_model = Transformer(model_cfg).to(info.device)
    log.info(f"model: {count_parameters(raw_model) / 1e6:.2f}M parameters, vocab {model_cfg.src_vocab_size} -> "
             f"{model_cfg.tgt_vocab_size}, strategy {cfg.strategy}{' with CPU offload' if cfg.cpu_offload else ''}")
    optimizer = build_optimizer(raw_model, cfg)
    # A stream's epochs have no known length; epochs "until --max_time" have no total either (the budget ends the run)
    known = run_data.steps_per_epoch is not None and cfg.num_epochs < UNTIL_THE_BUDGET
    epochs_steps = cfg.num_epochs * run_data.steps_per_epoch if known else math.inf
    total_steps = min(cfg.max_steps or math.inf, epochs_steps)
    budget = BudgetClock(max_time_seconds(cfg), started)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, total_steps, budget.fraction_used))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return ModelParts(raw_model, optimizer, scheduler, scaler, total_steps, budget, precision)


class BudgetClock:
    """--max_time: the seconds of the budget spent, counting those of the runs before a resume. Each rank reads its
    own clock, but what steers training (the end of the run, the cosine schedule) is `agreed`, the share spent as
    agreed by all ranks: every replica must take the same learning rate at the same step."""

    def __init__(self, budget_s: float, started: float):
        self.budget_s, self.before_s, self.start = budget_s, 0.0, started
        self.agreed = 0.0

    def resume_from(self, spent_s: float) -> None:
        self.before_s = spent_s
        self.agreed = self._share(spent_s)  # from the checkpoint: the same on every rank

    def _share(self, seconds: float) -> float:
        return min(seconds / self.budget_s, 1.0) if math.isfinite(self.budget_s) else 0.0

    def spent(self) -> float:
        return self.before_s + time.perf_counter() - self.start

    def share_spent(self) -> float:
        """This rank's own reading: to be agreed, not acted on."""
        return self._share(self.spent())

    def fraction_used(self) -> float:
        return self.agreed


@dataclass
class TrainState:
    """Where the run is: everything a checkpoint restores besides the model, optimizer and data position."""
    step: int = 0
    epoch: int = 0
    position: object = None  # where the current epoch (re)started: a data.EpochPosition, or a stream's state
    run_id: str = ""
    best_bleu: float = -1.0
    best_step: int | None = None
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient
    time_spent_s: float = 0.0  # training time of the runs before this one (--max_time counts it)


def resume(cfg: Config, info: DistInfo, run_data: RunData, parts: ModelParts) -> TrainState:
    """Rank 0 reads the checkpoint and broadcasts it tensor by tensor, so every rank starts from the same state; a
    fresh run starts at step 0. Under DDP the weights stay on rank 0: wrapping the model copies them to the others.
    Seeds every rank's own dropout stream."""
    state = TrainState(run_id=new_run_id())
    torch.manual_seed(cfg.seed + info.rank)  # a different dropout stream on every rank
    random.seed(cfg.seed + info.rank)
    read = on_main_only(lambda: checkpoint.read_preload(cfg.model_folder, cfg.preload))
    weights_travel = parallel.is_sharded(parts.raw_model)  # each FSDP rank takes its shard of them
    saved = broadcast_tensors_from_main(read if read is None or weights_travel else
                                        {k: v for k, v in read.items() if k != "model"}, info.device)
    if not saved:
        if run_data.initial is not None:
            start_from_weights(parts.raw_model, run_data.initial, info)
            run_data.initial = None  # the weights are in the model now
        return state
    check_resumable(saved, cfg, run_data.tokenizer_ids)
    if info.is_main:
        warn_of_data_changes(saved, cfg)
    model_state = saved["model"] if weights_travel else (read["model"] if info.is_main else None)
    parallel.load_full_state(parts.raw_model, parts.optimizer, model_state, saved["optimizer"])
    parts.scheduler.load_state_dict(saved["scheduler"])
    if parts.scaler is not None and saved["scaler"]:
        parts.scaler.load_state_dict(saved["scaler"])
    state = TrainState(step=saved["step"], epoch=saved["epoch"], position=saved_position(saved, cfg, info),
                       run_id=saved["wandb_run_id"], best_bleu=saved["best_bleu"], best_step=saved["best_step"],
                       skipped_steps=saved["skipped_steps"], time_spent_s=saved.get("time_spent_s", 0.0))
    parts.budget.resume_from(state.time_spent_s)
    if len(saved["rng"]) == info.world_size:
        set_rng_state(saved["rng"][info.rank], info.device)
    log.info(f"resumed from step {state.step} (epoch {state.epoch}, "
             f"{'stream positions restored' if cfg.streaming else f'{state.position.samples} samples into it'}"
             f"{f', {state.time_spent_s:.0f} s of --max_time spent' if cfg.max_time else ''})")
    return state


def start_from_weights(raw_model: Transformer, initial: dict, info: DistInfo) -> None:
    """Collective. --init_from's weights into the fresh model: on rank 0, whose parameters DDP copies to the other
    ranks when it wraps, or on every rank under FSDP, each keeping its shards. Another parameter set is refused."""
    sharded = parallel.is_sharded(raw_model)
    weights = broadcast_tensors_from_main(initial["model"], info.device) if sharded else initial["model"]
    error = None
    if weights is not None:
        expected = {name: tuple(value.shape) for name, value in raw_model.state_dict().items()}
        found = {name: tuple(value.shape) for name, value in weights.items()}
        wrong = [f"{name} {found.get(name, 'missing')} (the weights) vs {expected.get(name, 'none')} (this model)"
                 for name in sorted(expected.keys() | found.keys()) if found.get(name) != expected.get(name)]
        error = f"--init_from {initial['path']}: {'; '.join(wrong[:3])}" if wrong else None
    raise_if_any_failed(error)
    if sharded:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        set_model_state_dict(raw_model, dict(weights), options=StateDictOptions(full_state_dict=True))
    elif weights is not None:
        raw_model.load_state_dict(weights)
    log.info(f"started from the weights of {initial['path']} (step {initial['step']} of its run) and its "
             f"tokenizers: step 0, a fresh optimizer, schedule and data order")


class Checkpointer:
    """Everything that defines where the run is, committed to --model_folder by rank 0: model, optimizer,
    schedule, scaler, step and epoch, every rank's data position and RNG streams, the budget spent, the best BLEU."""

    def __init__(self, cfg: Config, info: DistInfo, run_data: RunData, parts: ModelParts, state: TrainState):
        self.cfg, self.info, self.run_data, self.parts, self.state = cfg, info, run_data, parts, state
        self.last_saved_step = state.step if state.step > 0 else -1  # a resumed step is already on disk

    def save(self, position, skipped_steps: torch.Tensor) -> None:
        """Collective: every rank hands its RNG state (and stream position) and its shard of the model under FSDP to
        rank 0, which writes; the others wait at the barrier. `position`: this rank's place in the epoch."""
        cfg, info, state, parts = self.cfg, self.info, self.state, self.parts
        if self.last_saved_step == state.step:
            return
        self.last_saved_step = state.step
        rng = gather_to_main(rng_state(info.device))
        stream_positions = gather_to_main(position) if cfg.streaming else None  # one per rank, like the RNGs
        in_memory = not cfg.streaming and position is not None  # None: between epochs
        model_state, optimizer_state = parallel.gather_full_state(parts.raw_model, parts.optimizer, info.is_main)
        if info.is_main:
            saved = {"model": model_state, "optimizer": optimizer_state, "scheduler": parts.scheduler.state_dict(),
                     "scaler": parts.scaler.state_dict() if parts.scaler else None,
                     "step": state.step, "epoch": state.epoch,
                     "epoch_sample": position.samples if in_memory else 0, "stream_positions": stream_positions,
                     "epoch_started_by": (position.world_size, position.batch_size) if in_memory else None,
                     "epoch_steps_shuffled": position.steps_shuffled if in_memory else True,
                     "skipped_steps": int(skipped_steps.item()), "time_spent_s": parts.budget.spent(),
                     "config": to_dict(cfg), "wandb_run_id": state.run_id, "tokenizers": self.run_data.tokenizer_ids,
                     "rng": rng, "best_bleu": state.best_bleu, "best_step": state.best_step}
            path = checkpoint.save_checkpoint(cfg.model_folder, state.step, saved, cfg.keep_last, state.best_step)
            if path:
                log.info(f"saved {path}")
        barrier()  # no rank runs ahead into a collective while rank 0 writes

    def average_last(self) -> None:
        """Collective: --average_last N averages the last N checkpoints into a file of their own."""
        if self.cfg.average_last < 2:
            return
        folder, count = self.cfg.model_folder, self.cfg.average_last
        averaged = run_on_main(lambda: checkpoint.write_average_of_last(folder, count))
        log.info(f"averaged the last {count} checkpoints into {averaged}" if averaged else
                 "averaging skipped: fewer than two checkpoints were saved")


class MetricsLog:
    """What the loop reports: the progress bar (rank 0, on a terminal), the window of steps since the last metrics
    line, and the line itself, also written to metrics.jsonl and W&B."""

    def __init__(self, parts: ModelParts, first_step: int, peak: float, info: DistInfo, monitor: RunMonitor):
        self.peak, self.info, self.monitor = peak, info, monitor
        self.total_steps, self.budget = parts.total_steps, parts.budget
        self.progress = tqdm(total=self.total_steps if math.isfinite(self.total_steps) else None, initial=first_step,
                             desc="train", dynamic_ncols=True, disable=not on_terminal())  # log lines suffice in files
        self.window = Window.new(info.device)

    def add(self, micro_batches: list[dict], result: StepResult, cfg: Config, tgt_vocab_size: int) -> None:
        self.window.add(micro_batches, result, cfg, tgt_vocab_size)
        self.progress.update(1)

    def leave_out(self, seconds: float) -> None:
        """A step that compiled: not training, so neither timed nor counted."""
        self.window.start += seconds
        self.progress.update(1)

    def log_window(self, step: int, epoch: int, last: StepResult, skipped_steps: torch.Tensor, scheduler) -> None:
        """Collective. One metrics line: loss, tokens/s, padding efficiency, step time, MFU and peak memory.
        Reading the device tensors here is the only host-device sync of the loop."""
        metrics = window_metrics(self.window, last, scheduler, self.peak, self.info)
        metrics["train/epoch"], metrics["train/skipped_steps"] = epoch, int(skipped_steps.item())
        self.progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
        log.info(metrics_line(step, metrics, self.peak, self.total_steps, self.eta_s(step, metrics["train/step_ms"])))
        self.monitor.log(step, metrics)
        self.window = Window.new(self.info.device)

    def eta_s(self, step: int, step_ms: float) -> float | None:
        """Seconds of training left at this pace: by the steps left (of --max_steps or the epochs), or by what is
        left of --max_time, whichever ends first; None when neither is known (a stream without --max_time)."""
        left = []
        if math.isfinite(self.total_steps):
            left.append((self.total_steps - step) * step_ms / 1000)
        if math.isfinite(self.budget.budget_s):
            left.append(max(self.budget.budget_s - self.budget.spent(), 0.0))
        return min(left) if left else None

    def close(self) -> None:
        self.progress.close()


class Validation:
    """Collective: validation during training (greedy BLEU/chrF and loss on every rank's share), and the test split
    scored once at the end by the best checkpoint."""

    def __init__(self, cfg: Config, info: DistInfo, run_data: RunData, parts: ModelParts, state: TrainState,
                 autocast, monitor: RunMonitor):
        self.cfg, self.info, self.run_data, self.parts, self.state = cfg, info, run_data, parts, state
        self.autocast, self.monitor = autocast, monitor

    def decoding_model(self) -> Transformer:
        """Collective under FSDP (an unsharded copy is gathered): the model evaluation decodes with."""
        return parallel.evaluation_model(self.parts.raw_model, self.parts.precision, self.info.device)

    def validate(self) -> bool:
        """Validation of the current weights, logged on rank 0; True (on every rank) for a new best BLEU."""
        state, run_data = self.state, self.run_data
        with runtime.eager():
            result = evaluate(self.decoding_model(), run_data.valid_set.dataset, run_data.pairs["validation"],
                              run_data.valid_set.kept, run_data.tgt_tok, self.info, eval_batch_size(self.cfg),
                              self.cfg.eval_max_sentences, self.autocast)
        if self.info.is_main:
            log.info(f"step {state.step} | val loss {result.loss:.4f} | BLEU {result.bleu:.2f} | chrF "
                     f"{result.chrf:.2f} | placeholders kept {placeholder_text(result)} | {result.bleu_signature}")
            for source, reference, hypothesis in result.samples:
                log.info(f"  src: {source}\n  ref: {reference}\n  hyp: {hypothesis}")
            self.monitor.log(state.step, {"val/loss": result.loss, "val/bleu": result.bleu, "val/chrf": result.chrf})
            self.monitor.log_samples(state.step, result.samples)
        self.parts.raw_model.train()
        bleu = broadcast_from_main(result.bleu)
        if bleu <= state.best_bleu:
            return False
        state.best_bleu, state.best_step = bleu, state.step
        log.info(f"best BLEU so far: {bleu:.2f} at step {state.step}")
        self.monitor.log_summary({"val/best_bleu": bleu, "val/best_chrf": result.chrf, "val/best_step": state.step})
        return True

    def score_test_split(self) -> None:
        with runtime.eager():
            score_test_split(self.decoding_model(), self.state.best_step, self.run_data, self.cfg, self.info,
                             self.autocast, self.monitor)


class Run:
    """The training loop: optimizer steps, and after each the one place that decides what follows it (the metrics
    line, validation, a checkpoint, the end). Collective methods must be called by every rank at the same step."""

    def __init__(self, cfg: Config, info: DistInfo, run_data: RunData, parts: ModelParts, state: TrainState,
                 autocast):
        self.cfg, self.info, self.run_data, self.parts, self.state = cfg, info, run_data, parts, state
        self.autocast = autocast
        self.skipped_steps = torch.full((), float(state.skipped_steps), device=info.device)  # counted on the device
        self.compiling = runtime.compile_by_default(cfg.compile, info.device)
        self.model = self.wrap()
        self.peak, peak_source = perf.peak_flops(info.device, parts.precision, cfg.peak_tflops)
        log.info(f"compile {'on (each encoder and decoder layer)' if self.compiling else 'off'}, "
                 f"{run_data.num_workers} data workers, peak {self.peak / 1e12:.2f} TFLOP/s per device "
                 f"({peak_source})")
        self.monitor = RunMonitor(cfg, enabled=info.is_main, run_id=state.run_id)
        state.run_id = self.monitor.run_id  # on rank 0, which saves it: the one kept in the model folder
        self.checkpoints = Checkpointer(cfg, info, run_data, parts, state)
        self.validation = Validation(cfg, info, run_data, parts, state, autocast, self.monitor)
        self.in_epoch = False  # batches taken from the current epoch: the position is read from them at save time
        self.last_eval_step = -1
        self.ending, self.stopped_by = None, 0  # agreed by all ranks: "signal" (signal stopped_by) or "time" spent
        self.stop_since: tuple[float, str] | None = None  # when a stop signal came (or was agreed), and which
        self.overflow_step = faults.overflow_step()

    def wrap(self) -> torch.nn.Module:
        """The module the step calls: layers compiled in place (when on), DDP over several ranks; FSDP's hooks are
        on the raw model itself, which stays what is evaluated and checkpointed."""
        return parallel.wrap(self.parts.raw_model, self.cfg, self.info.world_size, self.info.device, self.compiling)

    def save(self) -> None:
        """Collective: a checkpoint of this step (once)."""
        position = self.run_data.batches.position() if self.in_epoch else self.state.position
        self.checkpoints.save(position, self.skipped_steps)  # the position is read here, not every step

    def validate(self) -> None:
        """Collective. A new best BLEU is saved at once, and that checkpoint is kept through pruning."""
        self.last_eval_step = self.state.step
        if self.validation.validate():
            self.save()

    def loop(self) -> int:
        """Optimizer steps until --num_epochs, --max_steps or --max_time, or a stop signal (its agreed number is
        returned, else 0), each over --grad_accum_steps micro-batches; validates and saves along the way."""
        state, parts = self.state, self.parts
        parts.raw_model.train()
        self.stop, self.agree = StopSignal(), LateAgreement()
        self.metrics = MetricsLog(parts, state.step, self.peak, self.info, self.monitor)
        while state.step < parts.total_steps and state.epoch < self.cfg.num_epochs and self.ending is None:
            self.run_epoch()
        self.agree.close()
        self.metrics.close()
        if self.ending == "signal":
            log.info(f"stop requested ({self.stop.received or 'on another rank'}): saving step {state.step} and "
                     f"exiting")
            self.stop_since = (self.stop.received_at or time.perf_counter(),
                               "signal" if self.stop.received else "agreed stop")
        elif self.ending == "time":
            log.info(f"--max_time {self.cfg.max_time} spent ({parts.budget.spent():.0f} s): training ends at step "
                     f"{state.step}")
        return self.stopped_by if self.ending == "signal" else 0

    def run_epoch(self) -> None:
        """The current epoch's steps, from where it stands, until it ends, --max_steps, or the run's end."""
        batches, state = self.run_data.batches, self.state
        batches.start_epoch(state.epoch, state.position)
        self.in_epoch, epoch_done = True, False
        while not epoch_done and state.step < self.parts.total_steps:
            micro_batches = self.next_micro_batches()
            if micro_batches is None:
                epoch_done = True
                break
            result = self.step(micro_batches)
            epoch_done = batches.exhausted()
            if self.after_step(result):
                break
        if epoch_done:  # the epoch ran to its end (not stopped by --max_steps)
            self.end_epoch()

    def next_micro_batches(self) -> list[dict] | None:
        """This rank's micro-batches of the next step; None once the epoch has ended, on every rank alike."""
        micro_batches = self.run_data.batches.take(self.cfg.grad_accum_steps)
        if self.cfg.streaming:  # shards end unevenly: when one rank runs out, every rank ends the epoch here
            ended = any_rank(len(micro_batches) < self.cfg.grad_accum_steps)
        else:  # every rank has as many batches as the others, by construction of the sampler
            ended = not micro_batches
        return None if ended else micro_batches

    def step(self, micro_batches: list[dict]) -> StepResult:
        """One optimizer step, counted into the metrics window (a step that compiled is reported, not timed)."""
        state, parts = self.state, self.parts
        graphs = runtime.compilation_count() if self.compiling else 0
        step_started = time.perf_counter()
        result = train_step(self.model, parts.raw_model, parts.optimizer, parts.scaler, micro_batches, self.cfg,
                            self.info, self.autocast, force_overflow=state.step + 1 == self.overflow_step)
        parts.scheduler.step()
        state.step += 1
        if self.compiling and runtime.compilation_count() > graphs:  # the host waited for the compiler
            log.info(f"compiled {runtime.compilation_count() - graphs} graphs in "
                     f"{time.perf_counter() - step_started:.1f} s (step {state.step}; "
                     f"{runtime.compilation_count()} in all)")
            self.metrics.leave_out(time.perf_counter() - step_started)
        else:
            self.metrics.add(micro_batches, result, self.cfg, parts.raw_model.config.tgt_vocab_size)
        self.skipped_steps += result.skipped
        return result

    def after_step(self, result: StepResult) -> bool:
        """What follows a step, decided in one place (fairseq's validate_and_save): the metrics line every
        --log_every steps; the end of the run once a stop signal or the spent --max_time is agreed by every rank,
        which goes straight to the checkpoint (no validation or periodic save on the way); else validation every
        --eval_every steps and a checkpoint every --save_every. True when the loop must end here."""
        state, cfg, budget = self.state, self.cfg, self.parts.budget
        # A signal may reach one rank only, and clocks differ: every rank stops after this same step, and takes
        # the same learning rate from the same agreed share of the budget.
        signalled, budget.agreed = self.agree([float(self.stop.signum), budget.share_spent()])
        self.ending = "signal" if signalled > 0 else "time" if budget.agreed >= 1.0 else None
        self.stopped_by = int(signalled)
        if state.step % cfg.log_every == 0 or state.step == self.parts.total_steps:
            # every rank at the same steps: a collective
            self.metrics.log_window(state.step, state.epoch, result, self.skipped_steps, self.parts.scheduler)
        if self.ending is not None:
            return True
        if state.step % cfg.eval_every == 0:
            self.validate()
        if state.step % cfg.save_every == 0:
            self.save()
        return False

    def end_epoch(self) -> None:
        """An epoch ran to its end: validated (unless --max_time: a run measured in time is not measured in
        epochs, and on a small corpus validating each would spend a tenth of the budget) and saved."""
        state = self.state
        state.epoch, state.position, self.in_epoch = state.epoch + 1, None, False
        if self.ending == "signal":
            return
        if self.last_eval_step != state.step and not self.cfg.max_time:
            self.validate()
        self.save()

    def finish(self, stopped_by: int) -> None:
        """Collective. The last validation and checkpoint; unless stopped by a signal (`stopped_by`, else 0),
        checkpoint averaging and the test split scored by the best checkpoint."""
        cfg, state = self.cfg, self.state
        if not stopped_by and self.last_eval_step != state.step:
            self.validate()
        self.save()
        if stopped_by:
            report_stop(cfg, state.step, self.stop_since, stopped_by)
        else:
            self.checkpoints.average_last()
            self.validation.score_test_split()
            if cfg.wandb_log_model:
                run_on_main(lambda: log_model_artifact(cfg, state, self.monitor))
        if cfg.streaming:
            batches = self.run_data.batches
            log.info(f"rank 0's stream, this run: {batches.dropped_too_long} pairs longer than --seq_len "
                     f"{cfg.seq_len} and {batches.dropped_empty} empty ones skipped")
        self.monitor.close()
        log.info(f"done: {state.step} steps, {int(self.skipped_steps.item())} skipped")


def report_stop(cfg: Config, step: int, since: tuple[float, str], stopped_by: int) -> None:
    """Collective, once the checkpoint of a stop is committed: how long the stop took, and the exit status, logged
    and, for the shell that ran torchrun (which exits 1 when it is stopped, whatever its workers return), written to
    the model folder's `stopped` file."""
    log.info(f"checkpoint of step {step} committed {time.perf_counter() - since[0]:.1f} s after the {since[1]}; "
             f"exit status {stopped_exit(stopped_by)} ({signal.Signals(stopped_by).name})")
    run_on_main(lambda: checkpoint.mark_stopped(cfg.model_folder, stopped_exit(stopped_by)))


def metrics_line(step: int, metrics: dict, peak: float, total_steps: int | float, eta_s: float | None) -> str:
    """`step N/T | loss ... | ETA 1h02m | 12-01 06:35:01`: the step of the total when known, the time left when
    known, and the wall-clock time of the line."""
    mfu = f"{metrics['train/mfu']:.1%}" if peak else "n/a (--peak_tflops)"
    norm = "n/a" if math.isnan(metrics["train/grad_norm"]) else f"{metrics['train/grad_norm']:.2f}"
    of = f"/{total_steps}" if math.isfinite(total_steps) else ""
    eta = "" if eta_s is None else f" | ETA {duration_text(eta_s)}"
    line = (f"step {step}{of} | loss {metrics['train/loss']:.4f} | lr {metrics['train/lr']:.2e} | grad norm {norm} | "
            f"{metrics['train/tokens_per_s']:.0f} tok/s "
            f"({metrics['train/tokens_per_s_per_device']:.0f} per device) | padding eff "
            f"{metrics['train/padding_efficiency']:.0%} | {metrics['train/step_ms']:.0f} ms/step | MFU {mfu} | "
            f"peak mem {metrics['train/peak_mem_gb']:.2f} GB{eta} | {time.strftime('%m-%d %H:%M:%S')}")
    if metrics["train/skipped_steps"]:
        line += f"\n  {metrics['train/skipped_steps']} steps skipped so far for a non-finite loss or gradient"
    return line


def log_model_artifact(cfg: Config, state: TrainState, monitor: RunMonitor) -> None:
    """Rank 0, --wandb_log_model: the best and the final weights (weights only, as averaging writes them), the
    tokenizers and config.json, as one W&B model artifact."""
    final = checkpoint.newest_step(cfg.model_folder)
    files = {f"tokenizer_{lang}.json": tokenizer.tokenizer_path(cfg.model_folder, lang)
             for lang in (cfg.lang_src, cfg.lang_tgt)}
    files["config.json"] = os.path.join(cfg.model_folder, "config.json")
    for name, step in (("final.pt", final), ("best.pt", state.best_step if state.best_step is not None else final)):
        files[name] = checkpoint.write_weights(cfg.model_folder, step)
    monitor.log_model({name: path for name, path in files.items() if path},
                      {"final_step": final, "best_step": state.best_step, "best_bleu": state.best_bleu})


def window_metrics(window: Window, last: StepResult, scheduler, peak: float, info: DistInfo) -> dict:
    """Collective: the metrics of the steps of `window`, summed over ranks."""
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    elapsed = time.perf_counter() - window.start
    loss_sum, real, padded, flops = dist_sum([window.loss_sum.item(), window.real_tokens, window.padded_positions,
                                              window.flops], info.device)
    tokens = window.tokens.item()
    return {"train/loss": loss_sum / max(tokens, 1), "train/lr": scheduler.get_last_lr()[0],
            "train/grad_norm": math.nan if last.grad_norm is None else last.grad_norm.item(),
            "train/tokens_per_s": real / elapsed,
            "train/tokens_per_s_per_device": real / elapsed / info.world_size,
            "train/padding_efficiency": real / max(padded, 1),
            "train/step_ms": 1000 * elapsed / max(window.steps, 1),
            "train/mfu": flops / elapsed / (peak * info.world_size) if peak else 0.0,
            "train/peak_mem_gb": dist_max([peak_memory_gb(info.device)], info.device)[0]}


def score_test_split(raw_model, best_step: int | None, run_data: RunData, cfg: Config, info: DistInfo, autocast,
                     monitor: RunMonitor) -> None:
    """Collective, once at the end: the test split translated by the best checkpoint (by validation BLEU) with beam
    search, scored with sacreBLEU, printed and logged (metrics.jsonl, W&B summary). All of the split, as given (no
    cleaning, no --seq_len filter), so that the figures compare with published ones."""
    test_pairs = run_data.pairs["test"]
    if not test_pairs:
        log.info("no test split to score (--test_size 0)")
        return
    test_set, cut = tokenize_as_given(test_pairs, run_data.src_tok, run_data.tgt_tok, cfg.seq_len)
    path = checkpoint.checkpoint_path(cfg.model_folder, best_step) if best_step is not None else None
    best = broadcast_tensors_from_main(on_main_only(lambda: checkpoint.load_model_weights(path) if path else None),
                                       info.device)  # only the weights travel
    if best is not None:
        raw_model.load_state_dict(best)
    which = f"best checkpoint, step {best_step}" if best is not None else "final weights (no best checkpoint saved)"
    result = evaluate(raw_model, test_set, test_pairs, list(range(len(test_pairs))), run_data.tgt_tok, info,
                      eval_batch_size(cfg), len(test_set), autocast, beam_size=cfg.beam_size,
                      length_penalty=cfg.length_penalty)
    if info.is_main:
        log.info(f"test ({which}, beam {cfg.beam_size}, length penalty {cfg.length_penalty}): BLEU "
                 f"{result.bleu:.2f} | chrF {result.chrf:.2f} | placeholders kept {placeholder_text(result)} | loss "
                 f"{result.loss:.4f} | {len(test_set)} sentences, all of the split ({cut} sources longer than "
                 f"--seq_len cut to fit) | {result.bleu_signature}")
        scores = {"test/bleu": result.bleu, "test/chrf": result.chrf, "test/loss": result.loss,
                  "test/checkpoint_step": best_step if best is not None else -1}
        if result.placeholder_match is not None:
            scores["test/placeholder_match"] = result.placeholder_match
        monitor.log_summary(scores)


def eval_batch_size(cfg: Config) -> int:
    """Sentences decoded together: at least 64, since decoding pays per step, not per sentence."""
    return max(cfg.batch_size, 64)


def placeholder_text(result) -> str:
    return "n/a (none in the references)" if result.placeholder_match is None else f"{result.placeholder_match:.1%}"


def report(error: UserError, rank: int, every_rank_raises: bool) -> None:
    """The one line of an error, once per job: said by global rank 0 when every rank raises it alike (validation,
    and every check once the ranks are connected: they agree on the outcome), else by the rank that has it (its own
    GPU, before the process group exists); the other ranks keep it in the debug log."""
    if rank == 0 or not every_rank_raises:
        print(f"error: {error}", file=sys.stderr, flush=True)
    else:
        log.debug(f"error: {error}")


@record
def main(argv: list[str] | None = None) -> None:
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    # argparse's errors once per node, by its local rank 0 (a --config file may be missing on one node only)
    with contextlib.redirect_stderr(io.StringIO()) if local_rank else contextlib.nullcontext():
        cfg = parse_config(argv)
    exit_code, every_rank_raises = 0, True
    setup_logging(rank=rank)
    try:
        validate(cfg)  # identical on every rank, so all ranks stop here together, before any collective
        every_rank_raises = False
        info = init_distributed(cfg.dist_timeout, cfg.device)
        every_rank_raises = True
        exit_code = train(cfg, info)
    except UserError as e:
        report(e, rank, every_rank_raises)
        exit_code = USER_ERROR_EXIT
    finally:
        destroy_distributed()
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main()
