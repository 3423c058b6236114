"""How the model is spread over the ranks (--strategy), and the one checkpoint format every strategy reads and writes.

- ddp: every rank holds the whole model and optimizer; DDP all-reduces the gradients. Fastest while it all fits.
- fsdp: FSDP2 (`fully_shard`) per encoder and decoder layer and at the root: parameters, gradients and optimizer
  state are sharded over the ranks and gathered layer by layer for compute; with --cpu_offload they live in CPU memory.

Checkpoints always hold full, unsharded tensors keyed by parameter name (torch.distributed.checkpoint.state_dict
with full_state_dict=True), gathered with every rank taking part and written by rank 0: a run saved under FSDP
resumes under DDP or on another number of ranks, and translate.py loads it on one CPU.
"""

import contextlib
import os
import sys

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

import runtime
from config import Config
from errors import UserError
from model import ModelConfig, Transformer

# torch.distributed.fsdp and .checkpoint are imported only by FSDP runs: they add over a second to every start.


def is_sharded(module: torch.nn.Module) -> bool:
    fsdp = sys.modules.get("torch.distributed.fsdp")  # nothing is sharded until FSDP is imported
    return fsdp is not None and isinstance(module, fsdp.FSDPModule)


def _state_dict_options(gathered: bool):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    # gathered: full tensors on rank 0 only, in CPU memory; otherwise full tensors on every rank
    return StateDictOptions(full_state_dict=True, cpu_offload=gathered)


def check_strategy(cfg: Config) -> None:
    if cfg.strategy == "fsdp" and not dist.is_initialized():
        raise UserError("--strategy fsdp shards over a process group: launch with torchrun (one GPU: "
                        "torchrun --standalone --nproc_per_node=1 train.py ...)")


def build_sharded(model_cfg: ModelConfig, cfg: Config, precision: str, device: torch.device) -> Transformer:
    """--strategy fsdp: the model built on the meta device (no memory anywhere), sharded, then each rank
    materializes its own shards only, on the GPU (in host memory with --cpu_offload). Every rank draws each full
    initial tensor in host memory, one at a time, from the same seed and keeps its slice: the same model as
    `Transformer(model_cfg)` built whole, with no full copy in any GPU's or rank's memory."""
    from torch.distributed.tensor import distribute_tensor

    with torch.device("meta"):
        raw_model = Transformer(model_cfg)
    shard(raw_model, cfg, precision, device)
    raw_model.to_empty(device="cpu" if cfg.cpu_offload else device)
    with torch.no_grad():
        for param, value in raw_model.initial_values():
            # src_data_rank=None: each rank slices its own copy of `value`, no communication
            param.to_local().copy_(distribute_tensor(value, param.device_mesh, param.placements,
                                                     src_data_rank=None).to_local())
    raw_model.reset_buffers(device)  # buffers are not sharded: the compute device, with or without offload
    return raw_model


def shard(raw_model: Transformer, cfg: Config, precision: str, device: torch.device) -> None:
    """In place, before the optimizer is built: each layer is a unit of all-gather and reduce-scatter, the root
    holds the embeddings, the final norms and the output layer. Parameters are gathered in bf16 under --precision
    bf16; gradients are reduced in fp32. Within one node, each layer's gathered parameters are kept from its
    forward to its backward (`reshard_after_forward`: one all-gather a layer per step instead of two, for the
    memory of a layer's full parameters); across nodes, where the gathers are slow and memory is what FSDP is
    chosen for, they are freed after the forward."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    mixed = MixedPrecisionPolicy(param_dtype=torch.bfloat16 if precision == "bf16" else None,
                                 reduce_dtype=torch.float32)
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cfg.cpu_offload else OffloadPolicy()
    reshard = reshard_after_forward(dist.get_world_size(), int(os.environ.get("LOCAL_WORLD_SIZE", "0")))
    for layer in [*raw_model.encoder_layers, *raw_model.decoder_layers]:
        fully_shard(layer, mp_policy=mixed, offload_policy=offload, reshard_after_forward=reshard)
    fully_shard(raw_model, mp_policy=mixed, offload_policy=offload, reshard_after_forward=reshard)


def reshard_after_forward(world_size: int, local_world_size: int) -> bool:
    """True when the ranks span several nodes (LOCAL_WORLD_SIZE, set by torchrun, is the ranks of this node)."""
    return local_world_size < world_size


def wrap(raw_model: torch.nn.Module, cfg: Config, world_size: int, device: torch.device,
         compile_model: bool) -> torch.nn.Module:
    """The module the training step calls: `raw_model` with its layers compiled in place (when on), then DDP over
    several ranks for --strategy ddp (FSDP's hooks are on `raw_model` itself). `raw_model` stays what is evaluated
    and checkpointed (its parameter names do not change)."""
    if compile_model:
        runtime.compile_layers(raw_model)
    model = raw_model
    if cfg.strategy == "ddp" and world_size > 1:
        # No buffer to broadcast each forward (the position table is a constant), gradients reduced straight
        # from their bucket views, and a static graph (every step uses every parameter the same way) unless
        # micro-steps skip the gradient sync, which DDP's static graph does not support.
        model = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
                    forward_sync_buffers=False, gradient_as_bucket_view=True,
                    static_graph=cfg.grad_accum_steps == 1)
    return model


def gradient_sync(model: torch.nn.Module, raw_model: torch.nn.Module, sync: bool):
    """A context for one micro-step: gradients are reduced over ranks only when `sync` (the last micro-step)."""
    if is_sharded(raw_model):
        raw_model.set_requires_gradient_sync(sync)
        return contextlib.nullcontext()
    if isinstance(model, DDP) and not sync:
        return model.no_sync()
    return contextlib.nullcontext()


def clip_grad_norm(raw_model: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """The global gradient norm (before clipping), a plain tensor: under FSDP the norm of the sharded gradients
    comes back replicated on every rank, so its local value is the full norm."""
    norm = torch.nn.utils.clip_grad_norm_(raw_model.parameters(), max_norm)
    return norm.to_local() if is_sharded(raw_model) else norm


def non_finite_gradients(raw_model: torch.nn.Module) -> torch.Tensor:
    """1.0 (a one-element tensor on the gradients' device) when any local gradient holds an inf or a NaN."""
    grads = [p.grad for p in raw_model.parameters() if p.grad is not None]
    found = torch.zeros(1, device=grads[0].device)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=found.device))
    return found.squeeze(0)


def gather_full_state(raw_model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                      is_main: bool) -> tuple[dict, dict]:
    """Collective: the full model and optimizer state dicts on rank 0, as CPU tensors (empty dicts elsewhere). The
    optimizer's state is keyed by parameter name, as torch.distributed.checkpoint writes it under FSDP (the first
    name of a shared parameter), so that any strategy reads what another wrote."""
    if is_sharded(raw_model):
        from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_optimizer_state_dict

        options = _state_dict_options(gathered=True)
        return (get_model_state_dict(raw_model, options=options),
                get_optimizer_state_dict(raw_model, optimizer, options=options))
    if not is_main:
        return {}, {}
    to_cpu = lambda value: value.detach().cpu() if isinstance(value, torch.Tensor) else value  # noqa: E731
    names = _names_by_position(raw_model, optimizer)
    saved = optimizer.state_dict()
    return ({name: to_cpu(value) for name, value in raw_model.state_dict().items()},
            {"state": {names[i]: {k: to_cpu(v) for k, v in state.items()} for i, state in saved["state"].items()},
             "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                              for group in saved["param_groups"]]})


def _names_by_position(raw_model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """The name of each parameter in the order of optimizer.state_dict()'s integer ids."""
    name_of = {id(p): name for name, p in raw_model.named_parameters()}  # the first name of a shared parameter
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def load_full_state(raw_model: torch.nn.Module, optimizer: torch.optim.Optimizer, model_state: dict | None,
                    optimizer_state: dict) -> None:
    """Every rank, with the same full state dicts (from any strategy): each keeps its own shard under FSDP. Without
    FSDP `model_state` may be None on ranks other than 0, whose weights DDP overwrites with rank 0's when it wraps."""
    if is_sharded(raw_model):
        from torch.distributed.checkpoint.state_dict import set_model_state_dict, set_optimizer_state_dict

        options = _state_dict_options(gathered=False)
        set_model_state_dict(raw_model, dict(model_state), options=options)  # a copy: FSDP swaps in its shards
        set_optimizer_state_dict(raw_model, optimizer, optimizer_state, options=options)
        return
    if model_state is not None:
        raw_model.load_state_dict(model_state)
    position = {name: i for i, name in enumerate(_names_by_position(raw_model, optimizer))}
    optimizer.load_state_dict(
        {"state": {position[name]: state for name, state in optimizer_state["state"].items()},
         "param_groups": [{**group, "params": [position[name] for name in group["params"]]}
                          for group in optimizer_state["param_groups"]]})


def evaluation_model(raw_model: Transformer, precision: str, device: torch.device) -> Transformer:
    """Collective. The model to decode with. Ranks decode different sentences for different numbers of steps, and
    under FSDP every layer call is a collective, so they would wait on each other forever: FSDP runs evaluate an
    unsharded copy instead, gathered one parameter at a time with its matrices in the dtype the training forward
    computes in (bf16 under --precision bf16: about 2 bytes a parameter on each GPU, the only full copy there)."""
    if not is_sharded(raw_model):
        return raw_model
    from torch.distributed.tensor import DTensor

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    gathered, weights = {}, {}
    for name, param in raw_model.named_parameters(remove_duplicate=False):  # the same order on every rank
        if id(param) not in gathered:  # cast before the gather: half the bytes to send under bf16
            # Vectors (norm weights, biases: a tiny share) stay fp32, as in training, where layers cast them
            local = param.to_local().detach().to(device, dtype if param.dim() >= 2 else torch.float32)
            gathered[id(param)] = DTensor.from_local(local, param.device_mesh, param.placements,
                                                     shape=param.shape, stride=param.stride()).full_tensor()
        weights[name] = gathered[id(param)]
    with torch.device("meta"):
        copy = Transformer(raw_model.config)
    copy.load_state_dict(weights, assign=True)  # takes the gathered tensors as they are: no second allocation
    copy.reset_buffers(device)
    return copy
