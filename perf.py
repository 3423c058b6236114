"""How fast training runs: the FLOPs of an encoder-decoder step, the peak FLOP/s of the device, and MFU.

MFU (model FLOPs utilisation) = the FLOPs the model needs per second of training / the device's peak. The count
is analytic (matrix multiplications only, 2 FLOPs per multiply-add, backward = 2 x forward) on the real,
non-padding tokens, so compute spent on padding lowers MFU, as it should.
"""

import time
from dataclasses import dataclass

import torch

# Dense peak TFLOP/s per GPU, without sparsity: (tensor-core bf16/fp16, fp32 or tf32 as matmuls run in fp32 mode).
# Matched against torch.cuda.get_device_name(), first match wins (so "H100 PCIe" precedes "H100").
GPU_PEAK_TFLOPS: list[tuple[str, float, float]] = [
    ("H200", 989.0, 494.0),
    ("GH200", 989.0, 494.0),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.0, 494.0),  # SXM
    ("A100", 312.0, 156.0),
    ("A10G", 70.0, 35.0),  # AWS
    ("A10", 125.0, 62.5),
    ("L40S", 362.0, 183.0),
    ("L4", 121.0, 60.0),
    ("A6000", 155.0, 77.4),  # RTX A6000, Paperspace
    ("A5000", 111.0, 55.6),
    ("A4000", 76.7, 38.4),
    ("V100", 125.0, 15.7),  # no tf32: fp32 is plain fp32
    ("RTX 4090", 165.0, 82.6),
    ("RTX 3090", 71.0, 35.6),
    ("P4000", 5.3, 5.3),  # Pascal: no tensor cores, fp16 runs at fp32 speed at best
    ("P5000", 8.9, 8.9),
]


@dataclass(frozen=True)
class StepShape:
    """The real (non-padding) token counts of a batch, and the sums that attention cost grows with."""
    src_tokens: int
    tgt_tokens: int
    src_sq: int  # sum over sentences of source length squared
    tgt_sq: int
    src_tgt: int  # sum over sentences of source length x target length

    @staticmethod
    def of_batch(src_lengths: torch.Tensor, tgt_lengths: torch.Tensor) -> "StepShape":
        s, t = src_lengths.long(), tgt_lengths.long()
        return StepShape(int(s.sum()), int(t.sum()), int((s * s).sum()), int((t * t).sum()), int((s * t).sum()))

    @staticmethod
    def of_padded(src: torch.Tensor, tgt: torch.Tensor, pad_id: int) -> "StepShape":
        """From right-padded (batch, length) token tensors."""
        return StepShape.of_batch((src != pad_id).sum(dim=1), (tgt != pad_id).sum(dim=1))

    def __add__(self, other: "StepShape") -> "StepShape":
        return StepShape(*(a + b for a, b in zip(vars(self).values(), vars(other).values())))


def forward_flops(shape: StepShape, d_model: int, d_ff: int, num_layers: int, tgt_vocab: int) -> float:
    """Forward FLOPs of the encoder, the decoder (self- and cross-attention) and the output layer."""
    d = d_model
    encoder = (8 * d * d + 4 * d * d_ff) * shape.src_tokens + 4 * d * shape.src_sq
    decoder_self = 8 * d * d * shape.tgt_tokens + 4 * d * shape.tgt_sq
    decoder_cross = 4 * d * d * shape.tgt_tokens + 4 * d * d * shape.src_tokens + 4 * d * shape.src_tgt
    decoder_ff = 4 * d * d_ff * shape.tgt_tokens
    output = 2 * d * tgt_vocab * shape.tgt_tokens
    return float(num_layers * (encoder + decoder_self + decoder_cross + decoder_ff) + output)


def training_flops(shape: StepShape, d_model: int, d_ff: int, num_layers: int, tgt_vocab: int) -> float:
    """Forward + backward (twice the forward: gradients of activations and of weights)."""
    return 3.0 * forward_flops(shape, d_model, d_ff, num_layers, tgt_vocab)


def measure_cpu_peak_flops(size: int = 1024, repeats: int = 8, dtype: torch.dtype = torch.float32) -> float:
    """This CPU's matmul FLOP/s in `dtype` with the current thread count: the best of a few timed matmuls."""
    generator = torch.Generator().manual_seed(0)  # not the global RNG: training's random streams stay untouched
    a, b = (torch.randn(size, size, generator=generator).to(dtype) for _ in range(2))
    a @ b  # warm up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2.0 * size ** 3 / best


def peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> tuple[float, str]:
    """(peak FLOP/s, where it came from) for MFU. `override_tflops` (--peak_tflops) wins; an unknown GPU gives 0
    (MFU not reported) with a note to pass --peak_tflops."""
    if override_tflops:
        return override_tflops * 1e12, "--peak_tflops"
    if device.type == "cpu":
        dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        return measure_cpu_peak_flops(dtype=dtype), f"measured {precision} matmul on this CPU"
    if device.type != "cuda":
        return 0.0, f"unknown for {device.type}: pass --peak_tflops"
    name = torch.cuda.get_device_name(device)
    for key, half, full in GPU_PEAK_TFLOPS:
        if key in name:
            return (half if precision in ("bf16", "fp16") else full) * 1e12, f"{key} {precision} datasheet"
    return 0.0, f"unknown GPU {name!r}: pass --peak_tflops"
