"""Evaluation on every rank: a token-weighted loss and translations (greedy or beam) scored with sacreBLEU.

Each rank works on its own shard through the unwrapped model (never a DDP forward alone), then one all-reduce
(loss) and one gather (translations) bring the results together; rank 0 scores BLEU and chrF on detokenized text.
"""

import random
from dataclasses import dataclass

import torch

from dataset import TranslationDataset, collate, shard_for_rank
from decoding import PlaceholderBudget, decode_tokens
from distributed import DistInfo, dist_sum, gather_to_main
from model import cross_entropy_sum
from progress import progress
from tokenizer import BOS_ID, EOS_ID, PAD_ID, placeholders


@dataclass
class EvalResult:
    loss: float
    tokens: int
    bleu: float | None = None  # rank 0 only
    chrf: float | None = None
    bleu_signature: str = ""
    samples: list[tuple[str, str, str]] | None = None  # (source, reference, hypothesis)
    placeholder_match: float | None = None  # rank 0 only; None when no reference keeps its source's placeholders


def _length_sorted_batches(dataset: TranslationDataset, indices: list[int], batch_size: int):
    """Batches of similar source length, so little compute goes to padding."""
    ordered = sorted(indices, key=lambda i: int(dataset.src_lengths[i]))
    for start in range(0, len(ordered), batch_size):
        chunk = ordered[start:start + batch_size]
        yield chunk, collate([dataset[i] for i in chunk], dataset.max_len)


def tokenize_as_given(pairs: list[tuple[str, str]], src_tokenizer, tgt_tokenizer,
                      seq_len: int) -> tuple[TranslationDataset, int]:
    """Every pair of a split scored as given (a test split: published figures count all of it), none dropped: a
    source longer than `seq_len` is cut to fit the model's positions, and its reference, scored as text, stays whole
    (cut only for the loss). Returns the dataset (example i is pair i) and how many sources were cut."""
    src_ids = [e.ids for e in src_tokenizer.encode_batch([p[0] for p in pairs], add_special_tokens=False)]
    tgt_ids = [e.ids for e in tgt_tokenizer.encode_batch([p[1] for p in pairs], add_special_tokens=False)]
    cut = sum(len(ids) + 1 > seq_len for ids in src_ids)
    return TranslationDataset([ids[:seq_len - 1] + [EOS_ID] for ids in src_ids],
                              [([BOS_ID] + ids + [EOS_ID])[:seq_len] for ids in tgt_ids], seq_len), cut


@torch.no_grad()
def validation_loss(model, dataset: TranslationDataset, dist_info: DistInfo, batch_size: int,
                    autocast) -> tuple[float, int]:
    """Mean cross-entropy per target token over the whole split (all ranks), without label smoothing."""
    model.eval()
    loss_sum, tokens = 0.0, 0
    indices = shard_for_rank(len(dataset), dist_info.rank, dist_info.world_size)
    for _, batch in _length_sorted_batches(dataset, indices, batch_size):
        src, tgt_in, tgt_out = (batch[k].to(dist_info.device) for k in ("src", "tgt_in", "tgt_out"))
        with autocast():
            logits = model(src, tgt_in)
        loss_sum += cross_entropy_sum(logits.flatten(0, 1), tgt_out.flatten(), PAD_ID).item()
        tokens += int((tgt_out != PAD_ID).sum())
    loss_sum, tokens = dist_sum([loss_sum, tokens], dist_info.device)
    return loss_sum / max(tokens, 1), int(tokens)


@torch.no_grad()
def translate_examples(model, dataset: TranslationDataset, indices: list[int], sources: list[str], tgt_tokenizer,
                       batch_size: int, device, autocast, beam_size: int = 1,
                       length_penalty: float = 1.0) -> dict[int, str]:
    """{dataset index: detokenized hypothesis} for the given examples; `sources[i]` is example i's source text."""
    model.eval()
    placeholders_kept = PlaceholderBudget(tgt_tokenizer)
    out = {}
    batches = _length_sorted_batches(dataset, indices, batch_size)
    what = "translating" if beam_size == 1 else f"translating (beam {beam_size})"
    for chunk, batch in progress(batches, -(-len(indices) // batch_size), what):
        budget = placeholders_kept.for_sources([sources[i] for i in chunk], device)
        with autocast():
            tokens = decode_tokens(model, batch["src"].to(device), beam_size, length_penalty, budget)
        texts = tgt_tokenizer.decode_batch(tokens.tolist(), skip_special_tokens=True)
        out.update(zip(chunk, texts))
    return out


def corpus_scores(hypotheses: list[str], references: list[str]) -> tuple[float, float, str, str]:
    """sacreBLEU BLEU and chrF on detokenized text, with their signatures."""
    import sacrebleu

    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    bleu_score = bleu.corpus_score(hypotheses, [references])
    chrf_score = chrf.corpus_score(hypotheses, [references])
    return bleu_score.score, chrf_score.score, str(bleu.get_signature()), str(chrf.get_signature())


def placeholder_match_rate(sources: list[str], references: list[str], hypotheses: list[str]) -> float | None:
    """Of the sentences whose reference keeps exactly its source's placeholders (%s, %(name)d, {0}, ...), the
    share whose translation keeps them too (as a multiset: their order may change between languages). BLEU hides
    a broken placeholder; the program that prints the translation does not."""
    kept = [(sorted(placeholders(ref)), sorted(placeholders(hyp))) for src, ref, hyp in
            zip(sources, references, hypotheses) if placeholders(src) and sorted(placeholders(src)) ==
            sorted(placeholders(ref))]
    return sum(ref == hyp for ref, hyp in kept) / len(kept) if kept else None


def scored_sample(num_examples: int, max_sentences: int) -> list[int]:
    """The examples translated for BLEU: all, or a fixed random sample of `max_sentences` (the first ones of a
    file sorted by, say, the alphabet would be a biased sample), the same at every evaluation and on every rank."""
    if max_sentences >= num_examples:
        return list(range(num_examples))
    return sorted(random.Random(0).sample(range(num_examples), max_sentences))


def evaluate(model, dataset: TranslationDataset, pairs: list[tuple[str, str]], kept: list[int], tgt_tokenizer,
             dist_info: DistInfo, batch_size: int, max_sentences: int, autocast, num_samples: int = 3,
             beam_size: int = 1, length_penalty: float = 1.0) -> EvalResult:
    """Collective: every rank must call it. `pairs[kept[i]]` is the text of dataset example i."""
    loss, tokens = validation_loss(model, dataset, dist_info, batch_size, autocast)
    sample = scored_sample(len(dataset), max_sentences)
    mine = [sample[i] for i in shard_for_rank(len(sample), dist_info.rank, dist_info.world_size)]
    sources = [pairs[k][0] for k in kept]
    hypotheses = translate_examples(model, dataset, mine, sources, tgt_tokenizer, batch_size, dist_info.device,
                                    autocast, beam_size, length_penalty)
    gathered = gather_to_main(hypotheses)
    result = EvalResult(loss=loss, tokens=tokens)
    if gathered is None:
        return result
    merged = {i: text for shard in gathered for i, text in shard.items()}
    hyps = [merged[i] for i in sample]
    refs = [pairs[kept[i]][1] for i in sample]
    sample_sources = [sources[i] for i in sample]
    result.bleu, result.chrf, result.bleu_signature, _ = corpus_scores(hyps, refs)
    result.placeholder_match = placeholder_match_rate(sample_sources, refs, hyps)
    result.samples = list(zip(sample_sources, refs, hyps))[:num_samples]
    return result
