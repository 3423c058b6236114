"""Train an encoder-decoder Transformer for translation on one process or many.

    python train.py                                       # one process (CPU or one GPU)
    torchrun --standalone --nproc_per_node=2 train.py     # one node, two processes
    torchrun --nproc_per_node=8 --nnodes=2 --rdzv_id=456 --rdzv_backend=c10d --rdzv_endpoint=HOST:48123 train.py

Reads top to bottom: config -> distributed setup -> data -> model -> optimizer -> resume -> loop -> teardown.
Global rank 0 alone writes to --model_folder (tokenizers, checkpoints, metrics.jsonl, W&B).
"""

import contextlib
import hashlib
import json
import math
import random
import resource
import signal
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.distributed.elastic.multiprocessing.errors import record
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpoint
import dataset as data
import parallel
import perf
from config import Config, UserError, parse_config, sized_for_corpus, to_dict, validate
from distributed import (DistInfo, all_reduce_sum_, any_rank, barrier, broadcast_from_main, destroy_distributed,
                         dist_max, dist_sum, gather_to_main, init_distributed, main_first, raise_if_any_failed,
                         run_on_main)
from evaluation import evaluate
from model import ModelConfig, Transformer, count_parameters
from monitor import RunMonitor, new_run_id

# Settings a checkpoint must share with the run that resumes it: they define the network and its vocabularies.
ARCHITECTURE_SETTINGS = ("lang_src", "lang_tgt", "d_model", "num_layers", "num_heads", "d_ff", "tie_embeddings",
                         "share_vocab")


def model_config(cfg: Config, src_vocab_size: int, tgt_vocab_size: int, dropout: float | None = None) -> ModelConfig:
    return ModelConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, d_model=cfg.d_model,
                       num_heads=cfg.num_heads, num_layers=cfg.num_layers, d_ff=cfg.d_ff,
                       dropout=cfg.dropout if dropout is None else dropout, max_len=cfg.seq_len, pad_id=data.PAD_ID,
                       tie_embeddings=cfg.tie_embeddings, share_embeddings=cfg.share_vocab)


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # fp16 on P4000/V100-class GPUs
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU: use fp32 or bf16 on a CPU")
    return requested


def make_autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def use_compile(cfg: Config, info: DistInfo) -> bool:
    return cfg.compile if cfg.compile is not None else info.device.type == "cuda"


def lr_multiplier(cfg: Config, total_steps: int):
    """Linear warmup to --lr, then inverse square root or cosine decay; a function of optimizer steps done."""
    warmup = max(cfg.warmup_steps, 1)

    def multiplier(steps_done: int) -> float:
        step = steps_done + 1
        if step <= cfg.warmup_steps:
            return step / warmup
        if cfg.lr_schedule == "inverse_sqrt":
            return math.sqrt(warmup / step)
        progress = min((step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1), 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """Fused AdamW (CUDA and CPU): one kernel for all parameters, and it can skip a step on the device."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=True)


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
    diffs = [f"--{k} {saved_cfg.get(k)} (checkpoint) vs {getattr(cfg, k)} (now)"
             for k in ARCHITECTURE_SETTINGS if saved_cfg.get(k) != getattr(cfg, k)]
    diffs += [f"the {side} tokenizer differs from the checkpoint's" for side in ("src", "tgt")
              if saved["tokenizers"][side] != tokenizer_ids[side]]
    if diffs:
        raise UserError(f"cannot resume from step {saved['step']}: {'; '.join(diffs)} "
                        f"(use the same settings, or another --model_folder)")


def saved_position(saved: dict, cfg: Config, info: DistInfo, say):
    """Where this rank resumes in the saved epoch: the samples consumed (in-memory corpus, any world size), or its
    own stream position; a stream saved by another number of ranks restarts its epoch (shards differ)."""
    if not cfg.streaming:
        return saved["epoch_sample"]
    positions = saved.get("stream_positions")
    if positions and len(positions) == info.world_size:
        return positions[info.rank]
    say(f"the stream positions were saved by {len(positions or [])} ranks, not {info.world_size}: epoch "
        f"{saved['epoch']} of the stream starts over")
    return None


class StopSignal:
    """SIGTERM (preemption, torchrun stopping its workers) or SIGINT (Ctrl-C) asks for a clean stop: the loop
    agrees on it across ranks at the next step boundary and saves. A second Ctrl-C stops at once."""

    def __init__(self):
        self.received: str | None = None
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        if self.received and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.received = signal.Signals(signum).name


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
class StepResult:
    """Device tensors: the host reads them only at log intervals, since reading one waits for the GPU's queue."""
    loss_sum: torch.Tensor  # label-smoothed loss summed over this rank's target tokens
    tokens: torch.Tensor  # non-padding target tokens of the step, all ranks
    grad_norm: torch.Tensor
    skipped: torch.Tensor  # 1.0 when a loss or gradient was not finite: no update, on every rank alike


def train_step(model, raw_model, optimizer, scaler, micro_batches: list[dict], cfg: Config, info: DistInfo,
               autocast) -> StepResult:
    """One optimizer step over this rank's micro-batches. Collective: every rank calls it with its own batches.
    No host-device sync: the optimizer skips a non-finite step on the device (fused AdamW's found_inf)."""
    batches = [{k: b[k].to(info.device, non_blocking=True) for k in ("src", "tgt_in", "tgt_out")}
               for b in micro_batches]
    # Normalise by the global count of target tokens, so every token weighs the same whatever the split. Counted on
    # the device: a tensor made from a host number would be copied synchronously, waiting for the GPU's queue.
    global_tokens = all_reduce_sum_(sum((b["tgt_out"] != data.PAD_ID).sum() for b in batches).float())
    loss_sum = torch.zeros((), device=info.device)
    for i, batch in enumerate(batches):
        src, tgt_in, tgt_out = batch["src"], batch["tgt_in"], batch["tgt_out"]
        sync = i == len(batches) - 1  # reduce gradients over ranks on the last micro-step only
        with parallel.gradient_sync(model, raw_model, sync):
            with autocast():
                logits = model(src, tgt_in)
            micro_loss = F.cross_entropy(logits.float().flatten(0, 1), tgt_out.flatten(), ignore_index=data.PAD_ID,
                                         label_smoothing=cfg.label_smoothing, reduction="sum")
            # DDP and FSDP average gradients over ranks; scaling by the world size turns that into a global sum.
            scaled = micro_loss * info.world_size / global_tokens
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += micro_loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm = parallel.clip_grad_norm(raw_model, cfg.grad_clip or math.inf)
    # The gradients were reduced over ranks: a NaN on one rank is a NaN on all, so every rank takes the same decision.
    skipped = (~torch.isfinite(grad_norm)).float()
    if scaler:
        scaler.step(optimizer)  # skips by itself when the unscaled gradients are not finite
        scaler.update()
    else:
        optimizer.found_inf = skipped
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, global_tokens, grad_norm.detach(), skipped)


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


def train(cfg: Config, info: DistInfo) -> None:
    say = tqdm.write if info.is_main else (lambda *_: None)
    parallel.check_strategy(cfg)
    precision = resolve_precision(cfg.precision, info.device)
    if precision == "fp16" and cfg.strategy == "fsdp":  # --precision auto on a GPU without bf16
        precision = "fp32"
    autocast = make_autocast(precision, info.device)
    say(f"world size {info.world_size}, device {info.device.type}, precision {precision}")
    if info.device.type == "cuda":  # TF32 tensor cores for what still runs in fp32 (Ampere and newer)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    # ---- data: rank 0 loads first (hub downloads land in the cache once), then the others read it
    corpus = main_first(lambda: data.load_corpus(cfg))  # with --streaming, "train" is a stream read lazily
    cfg, sized = sized_for_corpus(cfg, None if cfg.streaming else len(corpus["train"]))
    say(f"config: {json.dumps(to_dict(cfg))}")
    if sized:
        say(f"defaults for this corpus: {sized}")
    run_on_main(lambda: checkpoint.check_writable(cfg.model_folder))
    check_folder_is_shared(cfg, info)
    # Rank 0 builds (or reuses) the tokenizers and hands their JSON to everyone: no file race, no shared folder needed.
    src_json, tgt_json = run_on_main(lambda: data.build_tokenizer_json(
        cfg, lambda: data.tokenizer_sample(cfg, corpus)))
    src_tok, tgt_tok = data.tokenizer_from_json(src_json), data.tokenizer_from_json(tgt_json)
    tokenizer_ids = {side: hashlib.sha256(text.encode()).hexdigest() for side, text in (("src", src_json),
                                                                                        ("tgt", tgt_json))}
    valid_set = data.tokenize_pairs(corpus["validation"], src_tok, tgt_tok, cfg.seq_len)
    splits = [("validation", valid_set)]
    on_gpu = info.device.type == "cuda"
    num_workers = 0
    if cfg.streaming:
        batches = data.StreamBatches(corpus, src_tok, tgt_tok, cfg, info.rank, info.world_size)
    else:
        train_set = data.tokenize_pairs(corpus["train"], src_tok, tgt_tok, cfg.seq_len)
        splits.insert(0, ("train", train_set))
        if len(train_set.dataset) < info.world_size:
            raise UserError(f"--seq_len {cfg.seq_len}: too few training pairs fit ({len(train_set.dataset)}); "
                            f"raise --seq_len")
        lengths = torch.maximum(train_set.dataset.src_lengths, train_set.dataset.tgt_lengths)
        sampler = data.DistributedBatchSampler(len(train_set.dataset), cfg.batch_size, info.rank, info.world_size,
                                               cfg.seed, lengths=lengths, max_tokens=cfg.max_tokens)
        num_workers = cfg.num_workers if cfg.num_workers is not None else (2 if on_gpu else 0)
        # Its own generator: iter(DataLoader) would otherwise draw from the global RNG at every epoch start, and a
        # mid-epoch resume would then see another dropout stream than an uninterrupted run.
        loader = DataLoader(train_set.dataset, batch_sampler=sampler, collate_fn=data.collate, pin_memory=on_gpu,
                            num_workers=num_workers, persistent_workers=False, generator=torch.Generator())
        batches = data.LoaderBatches(loader, sampler)
    for name, split in splits:
        say(f"{name}: {len(split.dataset)} pairs kept, {split.dropped_too_long} dropped as longer than "
            f"--seq_len {cfg.seq_len}, {split.dropped_empty} dropped as empty")
    if len(valid_set.dataset) == 0:
        raise UserError(f"--seq_len {cfg.seq_len}: no validation pair fits; raise --seq_len")
    run_on_main(lambda: (data.save_tokenizers(cfg, src_json, tgt_json),
                         checkpoint.remove_stale_temporaries(cfg.model_folder)))

    # ---- model, identical on every rank (DDP also broadcasts rank 0's parameters when it wraps), sharded by FSDP
    torch.manual_seed(cfg.seed)
    model_cfg = model_config(cfg, src_tok.get_vocab_size(), tgt_tok.get_vocab_size())
    make_model = lambda: Transformer(model_cfg).to(info.device)  # noqa: E731
    raw_model = make_model()
    say(f"model: {count_parameters(raw_model) / 1e6:.2f}M parameters, vocab {model_cfg.src_vocab_size} -> "
        f"{model_cfg.tgt_vocab_size}, strategy {cfg.strategy}{' with CPU offload' if cfg.cpu_offload else ''}")
    if cfg.strategy == "fsdp":
        parallel.shard(raw_model, cfg, precision, info.device)
    optimizer = build_optimizer(raw_model, cfg)
    if cfg.streaming:
        total_steps = cfg.max_steps  # a stream's epochs have no known length
    else:
        steps_per_epoch = math.ceil(len(sampler) / cfg.grad_accum_steps)
        total_steps = min(cfg.max_steps or math.inf, cfg.num_epochs * steps_per_epoch)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_multiplier(cfg, total_steps))
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None

    # ---- resume: rank 0 reads the checkpoint and broadcasts it, so every rank starts from the same state
    step, epoch, position, run_id = 0, 0, None, new_run_id()  # position: where the current epoch (re)started
    in_epoch = False  # batches taken from the current epoch: the position is then read from `batches` at save time
    skipped_steps = torch.zeros((), device=info.device)  # on the device: counted without a host sync
    best_bleu, best_step = -1.0, None
    torch.manual_seed(cfg.seed + info.rank)  # a different dropout stream on every rank
    random.seed(cfg.seed + info.rank)
    saved = run_on_main(lambda: checkpoint.read_preload(cfg.model_folder, cfg.preload))
    if saved:
        check_resumable(saved, cfg, tokenizer_ids)
        parallel.load_full_state(raw_model, optimizer, saved["model"], saved["optimizer"])
        scheduler.load_state_dict(saved["scheduler"])
        if scaler is not None and saved["scaler"]:
            scaler.load_state_dict(saved["scaler"])
        step, epoch = saved["step"], saved["epoch"]
        position = saved_position(saved, cfg, info, say)
        skipped_steps.fill_(saved["skipped_steps"])
        run_id = saved["wandb_run_id"]
        best_bleu, best_step = saved["best_bleu"], saved["best_step"]
        if len(saved["rng"]) == info.world_size:
            set_rng_state(saved["rng"][info.rank], info.device)
        say(f"resumed from step {step} (epoch {epoch}, "
            f"{'stream positions restored' if cfg.streaming else f'{position} samples into it'})")
    del saved
    model = parallel.wrap(raw_model, cfg, info.world_size, info.device, use_compile(cfg, info))
    peak, peak_source = perf.peak_flops(info.device, precision, cfg.peak_tflops)
    say(f"compile {'on' if use_compile(cfg, info) else 'off'}, {num_workers} data workers, peak "
        f"{peak / 1e12:.2f} TFLOP/s per device ({peak_source})")
    monitor = RunMonitor(cfg, enabled=info.is_main, run_id=run_id)

    last_saved_step = step if step > 0 else -1  # a resumed step is already on disk

    def save() -> None:
        """Collective: every rank hands its RNG state (and stream position) and its shard of the model under FSDP to
        rank 0, which writes; the others wait at the barrier."""
        nonlocal last_saved_step
        if last_saved_step == step:
            return
        last_saved_step = step
        rng = gather_to_main(rng_state(info.device))
        current = batches.position() if in_epoch else position  # read here, not copied at every step
        stream_positions = gather_to_main(current) if cfg.streaming else None  # one per rank, like the RNGs
        model_state, optimizer_state = parallel.gather_full_state(raw_model, optimizer, info.is_main)
        if info.is_main:
            state = {"model": model_state, "optimizer": optimizer_state,
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict() if scaler else None,
                     "step": step, "epoch": epoch, "epoch_sample": 0 if cfg.streaming else current or 0,
                     "stream_positions": stream_positions,
                     "skipped_steps": int(skipped_steps.item()),
                     "config": to_dict(cfg), "wandb_run_id": run_id, "tokenizers": tokenizer_ids, "rng": rng,
                     "best_bleu": best_bleu, "best_step": best_step}
            path = checkpoint.save_checkpoint(cfg.model_folder, step, state, cfg.keep_last, best_step)
            if path:
                say(f"saved {path}")
        barrier()  # no rank runs ahead into a collective while rank 0 writes

    last_eval_step = -1

    def run_evaluation() -> None:
        """Collective. A new best BLEU is saved at once, and that checkpoint is kept through pruning."""
        nonlocal last_eval_step, best_bleu, best_step
        result = evaluate(parallel.evaluation_model(raw_model, make_model), valid_set.dataset, corpus["validation"],
                          valid_set.kept, tgt_tok, info, cfg.batch_size, cfg.eval_max_sentences, autocast)
        last_eval_step = step
        if info.is_main:
            say(f"step {step} | val loss {result.loss:.4f} | BLEU {result.bleu:.2f} | chrF {result.chrf:.2f} "
                f"| {result.bleu_signature}")
            for source, reference, hypothesis in result.samples:
                say(f"  src: {source}\n  ref: {reference}\n  hyp: {hypothesis}")
            monitor.log(step, {"val/loss": result.loss, "val/bleu": result.bleu, "val/chrf": result.chrf})
            monitor.log_samples(step, result.samples)
        raw_model.train()
        bleu = broadcast_from_main(result.bleu)
        if bleu > best_bleu:
            best_bleu, best_step = bleu, step
            say(f"best BLEU so far: {bleu:.2f} at step {step}")
            save()

    # ---- the loop: one optimizer step per --grad_accum_steps micro-batches
    raw_model.train()
    stop = StopSignal()
    progress = tqdm(total=total_steps, initial=step, desc="train", dynamic_ncols=True,
                    disable=not info.is_main or not sys.stderr.isatty())  # log lines suffice in files
    window = Window.new(info.device)
    stopping = False  # agreed by all ranks, step by step
    while step < total_steps and epoch < cfg.num_epochs and not stopping:
        batches.start_epoch(epoch, position)
        in_epoch = True
        epoch_done = False
        while not epoch_done and step < total_steps:
            micro_batches = batches.take(cfg.grad_accum_steps)
            if cfg.streaming:  # shards end unevenly: when one rank runs out, every rank ends the epoch here
                epoch_done = any_rank(len(micro_batches) < cfg.grad_accum_steps)
            else:  # every rank has as many batches as the others, by construction of the sampler
                epoch_done = not micro_batches
            if epoch_done:
                break
            result = train_step(model, raw_model, optimizer, scaler, micro_batches, cfg, info, autocast)
            scheduler.step()
            step += 1
            epoch_done = batches.exhausted()
            skipped_steps += result.skipped
            window.loss_sum += result.loss_sum
            window.tokens += result.tokens
            for batch in micro_batches:  # CPU tensors: counted without waiting for the device
                shape = perf.StepShape.of_padded(batch["src"], batch["tgt_out"], data.PAD_ID)
                window.real_tokens += shape.src_tokens + shape.tgt_tokens
                window.padded_positions += batch["src"].numel() + batch["tgt_out"].numel()
                window.flops += perf.training_flops(shape, cfg.d_model, cfg.d_ff, cfg.num_layers,
                                                   model_cfg.tgt_vocab_size)
            window.steps += 1
            progress.update(1)

            if step % cfg.log_every == 0 or step == total_steps:
                log_window(window, result, step, epoch, skipped_steps, scheduler, peak, info, monitor, progress, say)
                window = Window.new(info.device)
            if step % cfg.eval_every == 0:
                run_evaluation()
            if step % cfg.save_every == 0:
                save()
            # A signal may reach one rank only: every rank stops after this same step.
            stopping = any_rank(stop.received is not None)
            if stopping:
                break
        if epoch_done:  # the epoch ran to its end (not stopped by --max_steps)
            epoch, position, in_epoch = epoch + 1, None, False
            if not stopping:
                if last_eval_step != step:
                    run_evaluation()
                save()
    progress.close()
    if stopping:
        say(f"stop requested ({stop.received or 'on another rank'}): saving step {step} and exiting")
    elif last_eval_step != step:
        run_evaluation()
    save()
    if not stopping:
        if cfg.average_last >= 2:
            averaged = run_on_main(lambda: checkpoint.write_average_of_last(cfg.model_folder, cfg.average_last))
            say(f"averaged the last {cfg.average_last} checkpoints into {averaged}" if averaged else
                "averaging skipped: fewer than two checkpoints were saved")
        score_test_split(parallel.evaluation_model(raw_model, make_model), best_step, corpus["test"], src_tok,
                         tgt_tok, cfg, info, autocast, monitor, say)
    if cfg.streaming:
        say(f"rank 0's stream, this run: {batches.dropped_too_long} pairs longer than --seq_len {cfg.seq_len} and "
            f"{batches.dropped_empty} empty ones skipped")
    monitor.close()
    say(f"done: {step} steps, {int(skipped_steps.item())} skipped")


def score_test_split(raw_model, best_step: int | None, test_pairs, src_tok, tgt_tok, cfg: Config, info: DistInfo,
                     autocast, monitor: RunMonitor, say) -> None:
    """Collective, once at the end: the test split translated by the best checkpoint (by validation BLEU) with beam
    search, scored with sacreBLEU, printed and logged (metrics.jsonl, W&B summary)."""
    test_set = data.tokenize_pairs(test_pairs, src_tok, tgt_tok, cfg.seq_len)
    if len(test_set.dataset) == 0:
        say("no test split to score (--test_size 0, or no pair fits --seq_len)")
        return
    path = checkpoint.checkpoint_path(cfg.model_folder, best_step) if best_step is not None else None
    best = run_on_main(lambda: checkpoint.load_model_weights(path) if path else None)  # only the weights travel
    if best is not None:
        raw_model.load_state_dict(best)
    which = f"best checkpoint, step {best_step}" if best is not None else "final weights (no best checkpoint saved)"
    result = evaluate(raw_model, test_set.dataset, test_pairs, test_set.kept, tgt_tok, info, cfg.batch_size,
                      len(test_set.dataset), autocast, beam_size=cfg.beam_size, length_penalty=cfg.length_penalty)
    if info.is_main:
        say(f"test ({which}, beam {cfg.beam_size}, length penalty {cfg.length_penalty}): BLEU {result.bleu:.2f} | "
            f"chrF {result.chrf:.2f} | loss {result.loss:.4f} | {len(test_set.dataset)} sentences "
            f"({test_set.dropped_too_long} longer than --seq_len left out) | {result.bleu_signature}")
        scores = {"test/bleu": result.bleu, "test/chrf": result.chrf, "test/loss": result.loss,
                  "test/checkpoint_step": best_step if best is not None else -1}
        monitor.log_summary(scores)


def log_window(window: Window, last: StepResult, step: int, epoch: int, skipped_steps: torch.Tensor, scheduler,
               peak: float, info: DistInfo, monitor: RunMonitor, progress, say) -> None:
    """Collective. One metrics line: loss, tokens/s, padding efficiency, step time, MFU and peak memory. Reading
    the device tensors here is the only host-device sync of the loop."""
    if info.device.type == "cuda":
        torch.cuda.synchronize(info.device)
    elapsed = time.perf_counter() - window.start
    loss_sum, real, padded, flops = dist_sum([window.loss_sum.item(), window.real_tokens, window.padded_positions,
                                              window.flops], info.device)
    tokens = window.tokens.item()
    metrics = {"train/loss": loss_sum / max(tokens, 1), "train/lr": scheduler.get_last_lr()[0],
               "train/grad_norm": last.grad_norm.item(), "train/tokens_per_s": real / elapsed,
               "train/tokens_per_s_per_device": real / elapsed / info.world_size,
               "train/padding_efficiency": real / max(padded, 1), "train/step_ms": 1000 * elapsed / window.steps,
               "train/mfu": flops / elapsed / (peak * info.world_size) if peak else 0.0,
               "train/epoch": epoch, "train/skipped_steps": int(skipped_steps.item()),
               "train/peak_mem_gb": dist_max([peak_memory_gb(info.device)], info.device)[0]}
    progress.set_postfix(loss=f"{metrics['train/loss']:.3f}", tok_s=f"{metrics['train/tokens_per_s']:.0f}")
    mfu = f"{metrics['train/mfu']:.1%}" if peak else "n/a (--peak_tflops)"
    say(f"step {step} | loss {metrics['train/loss']:.4f} | lr {metrics['train/lr']:.2e} | grad norm "
        f"{metrics['train/grad_norm']:.2f} | {metrics['train/tokens_per_s']:.0f} tok/s "
        f"({metrics['train/tokens_per_s_per_device']:.0f} per device) | padding eff "
        f"{metrics['train/padding_efficiency']:.0%} | {metrics['train/step_ms']:.0f} ms/step | MFU {mfu} | "
        f"peak mem {metrics['train/peak_mem_gb']:.2f} GB")
    if metrics["train/skipped_steps"]:
        say(f"  {metrics['train/skipped_steps']} steps skipped so far for a non-finite loss or gradient")
    monitor.log(step, metrics)


@record
def main(argv: list[str] | None = None) -> None:
    cfg = parse_config(argv)
    exit_code = 0
    try:
        validate(cfg)  # identical on every rank, so all ranks stop here together, before any collective
        info = init_distributed(cfg.dist_timeout)
        train(cfg, info)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        exit_code = 2
    finally:
        destroy_distributed()
    if exit_code:
        sys.exit(exit_code)


if __name__ == "__main__":
    main()
