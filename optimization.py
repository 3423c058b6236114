"""Optimisation: the AdamW optimizer, the learning-rate schedules and one training step.

`train_step` is the step `train.py` loops over and `bench.py` times: the loss of every micro-batch normalised by
the global count of target tokens, gradients reduced over ranks on the last micro-step only, clipping, and an
update that a non-finite loss or gradient skips on every rank alike, without the host waiting for the device.
"""

import math
from dataclasses import dataclass

import torch

import parallel
from config import Config
from distributed import DistInfo, all_reduce_sum_
from model import cross_entropy_sum
from tokenizer import PAD_ID

# wsd's decay: the last fifth of the run (Hagele et al. 2024, "Scaling laws and compute-optimal training beyond
# fixed training durations": a 20 % linear cooldown matches cosine at any length).
WSD_COOLDOWN = 0.2


def lr_multiplier(cfg: Config, total_steps: int | float, budget_used=lambda: 0.0):
    """Linear warmup to --lr, then inverse square root, cosine, or warmup-stable-decay (wsd: --lr held until the
    last WSD_COOLDOWN of the run, then a linear decay to zero); a function of optimizer steps done. Cosine and wsd
    follow whichever is further along: the steps (of --max_steps / --num_epochs) or the fraction of --max_time
    spent (`budget_used()`), so a run ended by time still ends at a small learning rate."""
    warmup = max(cfg.warmup_steps, 1)

    def multiplier(steps_done: int) -> float:
        step = steps_done + 1
        if step <= cfg.warmup_steps:
            return step / warmup
        if cfg.lr_schedule == "inverse_sqrt":
            return math.sqrt(warmup / step)
        by_steps = (step - cfg.warmup_steps) / max(total_steps - cfg.warmup_steps, 1)
        progress = min(max(by_steps, budget_used()), 1.0)
        if cfg.lr_schedule == "wsd":
            return min(1.0, (1.0 - progress) / WSD_COOLDOWN)
        return 0.5 * (1.0 + math.cos(math.pi * progress))

    return multiplier


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.AdamW:
    """Fused AdamW (CUDA and CPU): one kernel for all parameters, and it can skip a step on the device."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and "embed" not in name else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(0.9, 0.98), eps=1e-9, fused=True)


@dataclass
class StepResult:
    """Device tensors: the host reads them only at log intervals, since reading one waits for the GPU's queue."""
    loss_sum: torch.Tensor  # label-smoothed loss summed over this rank's target tokens
    tokens: torch.Tensor  # non-padding target tokens of the step, all ranks
    grad_norm: torch.Tensor | None  # None when clipping is off: no norm is computed then
    skipped: torch.Tensor  # 1.0 when a loss or gradient was not finite: no update, on every rank alike


def train_step(model, raw_model, optimizer, scaler, micro_batches: list[dict], cfg: Config, info: DistInfo,
               autocast, force_overflow: bool = False) -> StepResult:
    """One optimizer step over this rank's micro-batches. Collective: every rank calls it with its own batches.
    No host-device sync: the optimizer skips a non-finite step on the device (fused AdamW's found_inf).
    `force_overflow` (tests, gpu_check.sh) makes the loss infinite, as an fp16 overflow does."""
    batches = [{k: b[k].to(info.device, non_blocking=True) for k in ("src", "tgt_in", "tgt_out")}
               for b in micro_batches]
    # Whether a source batch holds padding decides whether its attention needs a mask: collate knows it from the
    # lengths (asking the device would wait for its queue); a batch made elsewhere is taken as padded.
    src_padded = [b.get("src_padded", True) for b in micro_batches]
    # Normalise by the global count of target tokens, so every token weighs the same whatever the split. Counted on
    # the device: a tensor made from a host number would be copied synchronously, waiting for the GPU's queue.
    global_tokens = all_reduce_sum_(sum((b["tgt_out"] != PAD_ID).sum() for b in batches).float())
    loss_sum = torch.zeros((), device=info.device)
    for i, batch in enumerate(batches):
        sync = i == len(batches) - 1  # reduce gradients over ranks on the last micro-step only
        with parallel.gradient_sync(model, raw_model, sync):
            with autocast():
                logits = model(batch["src"], batch["tgt_in"], src_padded=src_padded[i])
            # Summed in fp32 from logits in the compute dtype: no fp32 copy of the (tokens x vocabulary) logits.
            micro_loss = cross_entropy_sum(logits.flatten(0, 1), batch["tgt_out"].flatten(), PAD_ID,
                                           cfg.label_smoothing)
            # DDP and FSDP average gradients over ranks; scaling by the world size turns that into a global sum.
            scaled = micro_loss * info.world_size / global_tokens
            if force_overflow:
                scaled = scaled * math.inf
            (scaler.scale(scaled) if scaler else scaled).backward()
        loss_sum += micro_loss.detach()
    if scaler:
        scaler.unscale_(optimizer)
    grad_norm, skipped = check_gradients(raw_model, cfg.grad_clip, scaler is not None)
    if scaler:
        scaler.step(optimizer)  # skips by itself when the unscaled gradients are not finite
        scaler.update()
    else:
        optimizer.found_inf = skipped
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_sum, global_tokens, grad_norm, skipped)


def check_gradients(raw_model: torch.nn.Module, grad_clip: float, scaled: bool):
    """(the gradient norm before clipping, or None; 1.0 if a gradient is not finite). The gradients were reduced
    over ranks, so a NaN on one rank is a NaN on all and every rank takes the same decision. Without clipping, no
    norm is computed: a fused check for inf and NaN is enough, except where the decision needs the norm's
    reduction over ranks (FSDP's sharded gradients) or the scaler keeps its own books (fp16)."""
    if grad_clip or scaled or parallel.is_sharded(raw_model):
        grad_norm = parallel.clip_grad_norm(raw_model, grad_clip or math.inf).detach()
        return grad_norm, (~torch.isfinite(grad_norm)).float()
    return None, parallel.non_finite_gradients(raw_model)
