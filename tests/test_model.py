"""The network (model.py): causal, blind to padding, finite in low precision, able to learn, embeddings tied."""

import torch

from helpers import random_tokens, tiny_model

PAD = 0


def test_future_target_tokens_do_not_change_earlier_logits():
    model = tiny_model()
    src, tgt = random_tokens(2, 7), random_tokens(2, 9, vocab=60, seed=2)
    changed = tgt.clone()
    changed[:, 5:] = random_tokens(2, 4, vocab=60, seed=3)
    a, b = model(src, tgt), model(src, changed)
    torch.testing.assert_close(a[:, :5], b[:, :5])
    assert not torch.allclose(a[:, 5:], b[:, 5:])


def test_padding_content_and_amount_do_not_change_real_positions():
    model = tiny_model()
    src, tgt = random_tokens(2, 6), random_tokens(2, 5, vocab=60, seed=2)
    src[1, 4:] = PAD  # the second sentence is shorter
    reference = model(src, tgt)
    more_padding = torch.cat([src, torch.full((2, 5), PAD)], dim=1)
    torch.testing.assert_close(model(more_padding, tgt), reference)
    # Target padding after the real tokens of row 1 does not touch the real positions of any row.
    padded_tgt = torch.cat([tgt, torch.full((2, 3), PAD)], dim=1)
    torch.testing.assert_close(model(src, padded_tgt)[:, :5], reference)
    # Garbage in the padding positions is masked: only real source keys are attended to.
    garbage = src.clone()
    garbage[1, 4:] = 7
    assert not torch.allclose(model(garbage, tgt)[1], reference[1])  # proves the test can see a difference
    masked = model.decode(tgt, model.encode(garbage, model.source_mask(src)), model.source_mask(src))
    torch.testing.assert_close(masked[0], reference[0])


def test_padding_keeps_fp16_free_of_overflow():
    model = tiny_model().to(torch.bfloat16)
    src = random_tokens(3, 8)
    src[:, 3:] = PAD
    logits = model(src, random_tokens(3, 4, vocab=60))
    assert torch.isfinite(logits).all()


def test_tiny_model_overfits_one_batch():
    model = tiny_model().train()
    src, tgt = random_tokens(4, 6), random_tokens(4, 7, vocab=60, seed=5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(150):
        logits = model(src, tgt[:, :-1])
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.05


def test_tied_embeddings_share_storage_and_untied_do_not():
    tied, untied = tiny_model(), tiny_model(tie_embeddings=False)
    assert tied.output.weight is tied.tgt_embed.weight
    assert untied.output.weight is not untied.tgt_embed.weight
