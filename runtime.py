"""How the network runs on its device: numeric precision and compilation. Shared by train.py, bench.py and
translate.py, so that the three run the model the same way.

- Precision: `--precision auto` is bf16 on GPUs that support it, fp16 with a GradScaler on older GPUs (Pascal,
  Volta), fp32 on CPUs. Matmuls that stay in fp32 use TF32 tensor cores on Ampere and newer.
- Compilation is regional: each encoder and decoder layer is compiled on its own (torchtitan's way), with dynamic
  shapes. Every encoder layer shares one compiled graph and every decoder layer another, so compile time does not
  grow with depth, and batches of new lengths reuse the graphs instead of compiling again. Evaluation and decoding
  run eagerly (`eager()`): they never compile, and never evict or invalidate the training graphs.
"""

import contextlib
import re

import torch

from errors import UserError


def cpu_computes_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices natively (AVX512-BF16 or AMX): training then runs faster under bf16
    autocast than in fp32, with the same losses (docs/experiments.md#bf16-on-cpus-that-compute-it);
    elsewhere bf16 is emulated and slower than fp32."""
    return any(getattr(torch.cpu, name, lambda: False)() for name in ("_is_avx512_bf16_supported",
                                                                       "_is_amx_tile_supported"))


def resolve_precision(requested: str, device: torch.device) -> str:
    if requested == "auto":
        if device.type == "cpu":
            return "bf16" if cpu_computes_bf16() else "fp32"
        if device.type != "cuda":
            return "fp32"
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"  # fp16 on P4000/V100-class GPUs
    if requested == "fp16" and device.type != "cuda":
        raise UserError("--precision fp16 needs a CUDA GPU: use fp32 or bf16 on a CPU")
    return requested


def make_autocast(precision: str, device: torch.device):
    """A factory of autocast contexts for `precision` (a no-op context in fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def configure_cuda(device: torch.device) -> None:
    """TF32 tensor cores for what still runs in fp32 (Ampere and newer), and the attention kernels pinned to
    FlashAttention, memory-efficient attention and the math fallback: cuDNN attention, which CUDA 13 builds try
    first on Hopper, builds an execution plan for every new shape (seconds each, and cached decoding used to make a
    new shape every token); it stays off until a measurement shows it pays (docs/speed.md)."""
    if device.type != "cuda":
        return
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    torch.backends.cuda.enable_cudnn_sdp(False)


# The CUDA 12.6 builds still carry kernels for Maxwell to Hopper; the default (PyPI) build starts at Turing.
OLD_GPU_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"


def runs_on(capability: tuple[int, int], arch_list: list[str]) -> bool:
    """Whether a torch built for `arch_list` (torch.cuda.get_arch_list()) has kernels for a GPU of `capability`:
    a binary for sm_XY runs on X.Y and later minors of X (an sm_XYa binary on X.Y alone); PTX for compute_XY is
    compiled by the driver for X.Y and any later GPU."""
    for arch in arch_list:
        match = re.fullmatch(r"(sm|compute)_(\d+)(\d)([af]?)", arch)
        if not match:
            continue
        kind, built = match[1], (int(match[2]), int(match[3]))
        if match[4] == "a":
            ok = capability == built
        elif kind == "sm":
            ok = capability[0] == built[0] and capability[1] >= built[1]
        else:
            ok = capability >= built
        if ok:
            return True
    return False


def check_gpu_supported(device: torch.device) -> None:
    """Before the first CUDA kernel: a GPU this torch build has no kernels for (a P4000 or V100 under the default
    CUDA 13 build) would otherwise fail at its first kernel with 'no kernel image is available'."""
    if device.type != "cuda":
        return
    capability = torch.cuda.get_device_capability(device)
    arch_list = torch.cuda.get_arch_list()
    if not runs_on(capability, arch_list):
        raise UserError(f"{torch.cuda.get_device_name(device)} (compute capability {capability[0]}.{capability[1]}) "
                        f"is not supported by torch {torch.__version__} (CUDA {torch.version.cuda}, built for "
                        f"{' '.join(arch_list)}): install a build that is, e.g. `{OLD_GPU_INSTALL}` "
                        f"(docs/install.md)")


NVIDIA_DRIVER_FILE = "/proc/driver/nvidia/version"
# The CUDA 12.6 build runs on drivers from 525 on (Linux); what torch's default build needs is in its error.
OLD_DRIVER_INSTALL = "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu126"


def nvidia_driver_version() -> str | None:
    """The loaded NVIDIA kernel driver's version (Linux), or None where there is none."""
    try:
        with open(NVIDIA_DRIVER_FILE, encoding="utf-8") as f:
            match = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", f.read())
    except OSError:
        return None
    return match[1] if match else "unknown"


def choose_device(requested: str, local_rank: int = 0) -> torch.device:
    """--device: "cpu" on purpose, "cuda" (this process's GPU), or "auto": the GPU when torch can use one. A GPU that
    torch cannot use (its driver too old for the CUDA torch was built with) is an error under "auto" too, not a
    silent fall back to the CPU: a run meant for the GPU would take days there."""
    if requested == "cpu":
        return torch.device("cpu")
    if torch.cuda.is_available():
        return torch.device("cuda", local_rank)
    driver = nvidia_driver_version()
    if requested == "cuda" or (driver is not None and torch.version.cuda is not None):
        what = (f"NVIDIA driver {driver} is loaded but torch {torch.__version__} (built for CUDA {torch.version.cuda})"
                f" cannot use the GPU: the driver is too old for that CUDA" if driver else
                f"torch {torch.__version__} sees no CUDA GPU (build: CUDA {torch.version.cuda or 'none, a CPU build'})")
        raise UserError(f"--device {requested}: {what}; update the driver, or install a torch built for an older "
                        f"CUDA (`{OLD_DRIVER_INSTALL}`, docs/install.md), or pass --device cpu to train on the CPU")
    return torch.device("cpu")


def compile_by_default(requested: bool | None, device: torch.device) -> bool:
    """--compile unset: on with CUDA (it pays for itself once per layer kind), off on CPU."""
    return requested if requested is not None else device.type == "cuda"


def compile_layers(model: torch.nn.Module) -> None:
    """Regional compilation, in place: every encoder and decoder layer of `model` (a model.Transformer) is
    compiled with dynamic shapes. Nothing compiles here; the first training step does, once per layer kind."""
    for layer in [*model.encoder_layers, *model.decoder_layers]:
        layer.compile(dynamic=True)


def eager():
    """A context in which compiled layers run eagerly and nothing compiles: evaluation and decoding, whose shapes
    and modes (no grad, key/value caches) differ from training's."""
    return torch.compiler.set_stance("force_eager")


def compilation_count() -> int:
    """Graphs compiled by torch._dynamo in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])
