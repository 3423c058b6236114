"""A census of the training step and of decoding, on CPU: what a GPU would pay for is counted here, where it can be
seen without one (issue 21). Host syncs, fp32 copies of the logits, casts, collectives that talk to nobody, norms
nobody asked for, key shapes that change every token, vocabulary-sized allocations per token."""

from collections import Counter

import pytest
import torch
import torch.distributed as dist
from torch.utils._python_dispatch import TorchDispatchMode

import decoding
import model as network
import optimization
import parallel
import runtime
from config import parse_config
from dataset import collate
from distributed import DistInfo, LateAgreement, any_rank, destroy_distributed, dist_sum
from model import ModelConfig, Transformer
from tokenizer import BOS_ID, EOS_ID, PAD_ID

VOCAB, D_MODEL = 400, 32
HOST_SYNCS = {"_local_scalar_dense", "nonzero", "is_nonzero", "equal", "masked_select"}


class Census(TorchDispatchMode):
    """Every aten op run inside it, and the shapes and dtypes of what they return."""

    def __init__(self):
        super().__init__()
        self.ops, self.outputs = Counter(), []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops[func.overloadpacket.__name__] += 1
        for tensor in (out if isinstance(out, (tuple, list)) else [out]):
            if isinstance(tensor, torch.Tensor):
                self.outputs.append((func.overloadpacket.__name__, tensor.dtype, tensor.numel()))
        return out


def tiny_model(**overrides) -> Transformer:
    torch.manual_seed(0)
    settings = dict(src_vocab_size=VOCAB, tgt_vocab_size=VOCAB, d_model=D_MODEL, num_heads=2, num_layers=1,
                    d_ff=64, dropout=0.1, max_len=64, pad_id=PAD_ID)
    return Transformer(ModelConfig(**{**settings, **overrides}))


def batch(sentences=8, length=20) -> dict:
    tokens = torch.randint(4, VOCAB, (sentences, length + 1), generator=torch.Generator().manual_seed(1))
    tokens[::2, -4:] = PAD_ID  # some padding, as real batches have
    return {"src": tokens[:, 1:], "tgt_in": tokens[:, :-1], "tgt_out": tokens[:, 1:]}


def one_step(model, flags=(), precision="bf16", census=None, force_overflow=False, warm=True):
    cfg = parse_config(["--d_model", str(D_MODEL), *flags])
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    optimizer = optimization.build_optimizer(model, cfg)
    autocast = runtime.make_autocast(precision, info.device)
    if warm:  # the optimizer's state made, as at every step but the first
        optimization.train_step(model, model, optimizer, None, [batch()], cfg, info, autocast)
    with census or Census():
        return optimization.train_step(model, model, optimizer, None, [batch()], cfg, info, autocast,
                                       force_overflow=force_overflow)


@pytest.mark.parametrize("flags", [(), ("--grad_clip", "0")])
def test_a_training_step_never_waits_for_the_device(flags):
    census = Census()
    read = Counter()
    with pytest.MonkeyPatch.context() as patch:
        for method in ("item", "tolist"):
            original = getattr(torch.Tensor, method)
            patch.setattr(torch.Tensor, method, lambda t, *a, _o=original, _m=method: (read.update([_m]), _o(t, *a))[1])
        one_step(tiny_model(), flags, census=census)
    assert not HOST_SYNCS & set(census.ops) and not read, (census.ops, read)


def test_a_bf16_step_has_no_fp32_tensor_of_the_logits_size_and_stays_in_its_op_and_cast_budget(monkeypatch):
    monkeypatch.setattr(network, "LOSS_CHUNK_ELEMENTS", 64 * VOCAB)  # a few chunks at this size, as at 16k tokens
    census = Census()
    one_step(tiny_model(), census=census)
    logits_size = batch()["tgt_out"].numel() * VOCAB
    assert not [(op, n) for op, dtype, n in census.outputs if dtype == torch.float32 and n >= logits_size]
    # The counts of this model's step today (1 layer each side, fused AdamW, clipping on, 3 loss chunks: 121 casts,
    # 821 ops), with a margin of a tenth: a change that adds casts or ops per layer shows here first. Most casts
    # are of parameters (fp32 master weights to bf16 and their gradients back), vectors and matrices, not
    # activations: see the next test.
    assert census.ops["_to_copy"] <= 133, census.ops["_to_copy"]
    assert sum(census.ops.values()) <= 903, sum(census.ops.values())


def test_a_bf16_step_keeps_the_residual_stream_in_bf16_and_casts_activations_at_the_edges_only():
    # Without dropout: attention dropout sends CPU attention to its math kernel, which computes bf16 in fp32.
    model, seen = tiny_model(dropout=0.0), []
    for layer in [*model.encoder_layers, *model.decoder_layers, model.encoder_norm, model.decoder_norm]:
        layer.register_forward_hook(lambda module, args, out: seen.append(out.dtype))
    census = Census()
    one_step(model, census=census)
    assert seen and set(seen) == {torch.bfloat16}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # the master weights the optimizer updates
    # Casts of the residual stream's size: the two embeddings' outputs into bf16, and their gradients back
    # (ebdd226 cast it in and out of every norm: 23 such casts for this 1-layer model).
    stream_size = batch()["src"].numel() * D_MODEL
    casts = [n for op, dtype, n in census.outputs if op == "_to_copy" and n == stream_size]
    assert len(casts) == 4, len(casts)


def test_chunked_cross_entropy_matches_torch_in_value_and_gradient(monkeypatch):
    monkeypatch.setattr(network, "LOSS_CHUNK_ELEMENTS", 7 * 97)
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16):
        logits = (3 * torch.randn(50, 97)).to(dtype).requires_grad_()
        target = torch.randint(0, 97, (50,))
        target[::5] = PAD_ID
        expected = torch.nn.functional.cross_entropy(logits.float(), target, ignore_index=PAD_ID,
                                                     label_smoothing=0.1, reduction="sum")
        (expected_grad,) = torch.autograd.grad(expected, logits)
        loss = network.cross_entropy_sum(logits, target, PAD_ID, 0.1)
        (grad,) = torch.autograd.grad(2 * loss, logits)
        assert loss.dtype == torch.float32 and grad.dtype == dtype
        torch.testing.assert_close(loss, expected, rtol=1e-5, atol=1e-3)
        torch.testing.assert_close(grad.float(), 2 * expected_grad.float(), rtol=1e-2, atol=1e-3)


def test_without_clipping_no_norm_is_computed_and_a_non_finite_step_is_still_skipped(monkeypatch):
    norms = []
    original = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *a, **k: (norms.append(1), original(*a, **k))[1])
    model = tiny_model()
    result = one_step(model, ("--grad_clip", "0"))
    assert not norms and result.grad_norm is None and result.skipped.item() == 0.0
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = one_step(model, ("--grad_clip", "0"), force_overflow=True, warm=False)
    assert result.skipped.item() == 1.0 and all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    one_step(model)
    assert norms  # with clipping on, the norm is what clips


def test_a_process_group_of_one_runs_no_collective(tmp_path, monkeypatch):
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        calls = []
        for name in ("all_reduce", "broadcast", "all_gather_object", "gather_object", "broadcast_object_list"):
            monkeypatch.setattr(dist, name, lambda *a, _n=name, **k: calls.append(_n))
        one_step(tiny_model(), precision="fp32")
        agree = LateAgreement()
        assert agree([1.0]) == [1.0] and any_rank(True) and dist_sum([2.0], torch.device("cpu")) == [2.0]
        agree.close()
        assert not calls
    finally:
        destroy_distributed()


def self_attention_key_shapes(monkeypatch) -> list:
    shapes = []
    original = torch.nn.functional.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        if q.shape[2] == 1 and attn_mask is not None and attn_mask.shape[0] == 1:  # cached decoder self-attention
            shapes.append(tuple(k.shape))
        return original(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(network.F, "scaled_dot_product_attention", recording)
    return shapes


def test_a_cached_generation_attends_to_one_key_shape_from_first_token_to_last(monkeypatch):
    model = tiny_model(dropout=0.0).eval()
    src = torch.randint(4, VOCAB, (3, 7))
    for search in (lambda: decoding.greedy_decode(model, src, BOS_ID, -1, 20),
                   lambda: decoding.beam_search(model, src, BOS_ID, -1, 20, beam_size=3)):
        shapes = self_attention_key_shapes(monkeypatch)
        search()
        assert len(shapes) == 20 and len(set(shapes)) == 1, set(shapes)


def test_beam_search_encodes_each_sentence_once_and_its_token_budget_allocates_nothing_vocabulary_sized():
    model = tiny_model(dropout=0.0).eval()
    src = torch.randint(4, VOCAB, (2, 6))
    encoded = []
    original = model.encode
    model.encode = lambda s, m: (encoded.append(s.shape[0]), original(s, m))[1]
    budget = decoding.TokenBudget(torch.tensor([5, 6, 7]), torch.tensor([0, 0, 1]), torch.tensor([[1, 1], [2, 0]]))
    census = Census()
    original_restrict = decoding.TokenBudget.restrict

    def counted_restrict(self, scores, *args, **kwargs):
        with census:
            return original_restrict(self, scores, *args, **kwargs)

    decoding.TokenBudget.restrict = counted_restrict
    try:
        out = decoding.beam_search(model, src, BOS_ID, EOS_ID, 12, beam_size=4, budget=budget)
    finally:
        decoding.TokenBudget.restrict = original_restrict
    assert encoded == [2]  # two sentences, not eight beams
    assert out.shape[0] == 2 and census.ops  # the budget was applied
    vocabulary_sized = [(op, n) for op, _, n in census.outputs if n >= VOCAB and op not in ("masked_fill_",
                                                                                             "index_copy_")]
    assert not vocabulary_sized, vocabulary_sized  # in-place ops return their own input


def test_a_source_batch_without_padding_attends_without_a_mask_and_trains_alike(monkeypatch):
    masks = []
    original = torch.nn.functional.scaled_dot_product_attention
    monkeypatch.setattr(network.F, "scaled_dot_product_attention",
                        lambda q, k, v, attn_mask=None, **kw: (masks.append(attn_mask is None), original(
                            q, k, v, attn_mask=attn_mask, **kw))[1])
    unpadded = batch()
    unpadded["src"] = torch.randint(4, VOCAB, unpadded["src"].shape)
    losses = []
    for src_padded in (False, True):  # the same numbers with a mask that masks nothing
        masks.clear()
        model = tiny_model(dropout=0.0)
        logits = model(unpadded["src"], unpadded["tgt_in"], src_padded=src_padded)
        losses.append(network.cross_entropy_sum(logits.flatten(0, 1), unpadded["tgt_out"].flatten(), PAD_ID))
        # encoder self-attention, decoder self-attention (causal), cross-attention
        assert masks == [not src_padded, True, not src_padded], masks
    torch.testing.assert_close(losses[0], losses[1])
    cfg = parse_config(["--d_model", str(D_MODEL)])
    info = DistInfo(rank=0, local_rank=0, world_size=1, device=torch.device("cpu"))
    model = tiny_model()
    optimizer = optimization.build_optimizer(model, cfg)
    sentences = [(torch.randint(4, VOCAB, (length,)), torch.randint(4, VOCAB, (9,))) for length in (6, 6, 5)]
    for rows, expected in ((sentences[:2], [True, True, True]), (sentences, [False, True, False])):
        masks.clear()
        optimization.train_step(model, model, optimizer, None, [collate(rows, 64)], cfg, info,
                                runtime.make_autocast("fp32", info.device))
        assert masks == expected  # collate knows from the lengths whether a source holds padding


def test_cuda_setup_pins_attention_away_from_cudnn():
    # Saved and restored by hand: torch.backends' flags are properties of module objects, which monkeypatch (pytest
    # 9.2) cannot undo.
    saved = (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.matmul.allow_tf32,
             torch.backends.cudnn.allow_tf32)
    try:
        runtime.configure_cuda(torch.device("cpu"))
        assert torch.backends.cuda.cudnn_sdp_enabled() == saved[0]  # nothing changes for a CPU run
        runtime.configure_cuda(torch.device("cuda", 0))
        assert not torch.backends.cuda.cudnn_sdp_enabled() and torch.backends.cuda.flash_sdp_enabled()
    finally:
        torch.backends.cuda.enable_cudnn_sdp(saved[0])
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved[1:]


def test_fsdp_keeps_gathered_layers_until_backward_within_a_node_only():
    assert not parallel.reshard_after_forward(world_size=8, local_world_size=8)
    assert parallel.reshard_after_forward(world_size=16, local_world_size=8)
    assert parallel.reshard_after_forward(world_size=2, local_world_size=0)  # not launched by torchrun: as before


def test_a_gpu_run_batches_by_a_token_budget_sized_by_model_and_corpus_unless_the_user_sized_batches():
    from config import gpu_token_budget, resolve_defaults

    def budget(flags, train_tokens, world_size=1):
        given = parse_config(flags)
        cfg, _ = resolve_defaults(given, 1_000_000, "cuda")
        return gpu_token_budget(cfg, given, train_tokens, world_size)[0].max_tokens

    base = ["--d_model", "512", "--num_layers", "6", "--num_heads", "8", "--d_ff", "2048"]
    assert budget(base, 10**9) == 16384  # Transformer-base on a WMT-sized corpus: ~16k tokens per GPU
    assert budget(["--num_layers", "3"], 10**9) == 65536  # a quarter of the cost per token: more, up to a cap
    # The quick start's corpus (~280k tokens an epoch) keeps about the batches it was measured with (64 sentences).
    assert 700 <= budget(["--num_layers", "3"], 280_000) <= 1000
    assert budget(["--num_layers", "3"], 280_000, world_size=8) == 128  # never below --seq_len
    assert budget(["--batch_size", "32"], 10**9) is None and budget(["--max_tokens", "2048"], 10**9) == 2048
