"""Our trainer against the Hugging Face way, side by side: the same corpus, the same wall-clock budget, two CPU
processes each, one markdown table.

The Hugging Face side is what an HF user would write in an afternoon: a `MarianMTModel` built from scratch in the
shape our trainer takes for a short CPU budget (d_model 256, 4 heads, 2+2 layers, feed-forward 512, tied
embeddings), trained by `Seq2SeqTrainer` under `torchrun --standalone --nproc_per_node 2` (gloo, CPU): 16 pairs per
process, label smoothing 0.1, `train_sampling_strategy="group_by_length"` (transformers 5's name for
`group_by_length`), lr 1e-3 with the inverse square root schedule after 300 warmup steps, the precision our trainer
takes on this CPU, and HF's defaults for everything else (AdamW betas 0.9/0.999, no weight decay, gradient clipping
at 1.0). A TrainerCallback stops it once the budget is spent, and `predict` translates the test split with beam 4
(at most 128 tokens). It reads our joint byte-level BPE tokenizer (the same vocabulary size, trained on the same
pairs: the same token ids) through `PreTrainedTokenizerFast`. Our side is `torchrun --standalone --nproc_per_node 2
train.py --max_time ...` with its defaults (the wsd schedule, a greedy validation and a checkpoint every 1000
steps, the best checkpoint scored with beam 4 and decoding that keeps the source's placeholders).

Both sides read the corpus with corpus.load_corpus (the same cleaning and held-out splits), and both score every
test pair (a source longer than --seq_len cut to fit) against the same references, with sacreBLEU on detokenized
text. Both budgets run from the start of setup (corpus, tokenizer, model) to the last step; scoring the test split
comes after it. ms/step and the rates cover the training loop; our windows of --log_every steps that hold a
validation, a checkpoint or an epoch's end are left out (the HF run has none of them), and our pairs/s counts full
batches of 16 per process.

Usage (transformers and accelerate come with requirements-dev.txt; nothing else in this repository imports them):

    python real_corpora.py --langs de --max_pairs 27000 --out corpora
    python compare_hf.py --data_files corpora/system-en-de-27000/train.jsonl --lang_tgt de --json compare-de.json
    python compare_hf.py --data_files train=a.jsonl,validation=b.jsonl,test=c.jsonl --which hf --max_steps 20

The full comparison takes about twice --minutes plus each side's start and test scoring; run nothing else
meanwhile. Each side's log and model folder stay in --work_dir (default: a new temporary folder, named in the log).
"""

import argparse
import datetime
import json
import logging
import os
import subprocess
import sys
import tempfile
import time

import torch
import torch.distributed as dist

import config
import corpus
import tokenizer
from errors import UserError
from evaluation import corpus_scores, placeholder_match_rate
from model import Transformer, count_parameters
from monitor import setup_logging
from runtime import resolve_precision

NPROC = 2
HERE = os.path.dirname(os.path.abspath(__file__))
# Marian's positions are sinusoidal and not trained: room for the longest source and the longest generation.
MAX_POSITIONS = 256
SYSTEMS = {"hf": "HF MarianMTModel + Seq2SeqTrainer", "ours": "ours: train.py defaults"}

logger = logging.getLogger("translation")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=14, help="wall-clock budget of each side's training")
    p.add_argument("--data_files", required=True,
                   help="as train.py's: opus_books-schema .jsonl files, train=...,validation=...,test=... (a file "
                        "without split= is training data; missing splits are held out as train.py holds them out)")
    p.add_argument("--lang_src", default="en", help="source language key in each example's 'translation' dict")
    p.add_argument("--lang_tgt", default="it", help="target language key in each example's 'translation' dict")
    p.add_argument("--which", choices=("hf", "ours", "both"), default="both", help="which side(s) to run")
    p.add_argument("--json", help="also write the rows and the table to this JSON file")
    p.add_argument("--work_dir", help="folder for each side's log and model folder (default: a new temporary one)")
    p.add_argument("--max_steps", type=int, help="also stop each side after this many optimizer steps (smoke runs)")
    p.add_argument("--hf_worker", action="store_true", help=argparse.SUPPRESS)  # one torchrun worker of the HF side
    args = p.parse_args(argv)
    if args.minutes <= 0 or (args.max_steps is not None and args.max_steps < 1):
        p.error("--minutes must be positive and --max_steps at least 1")
    return args


def run_config(args) -> config.Config:
    """Our trainer's settings for this comparison, defaults unresolved: what both sides start from."""
    return config.Config(data_files=args.data_files, lang_src=args.lang_src, lang_tgt=args.lang_tgt,
                         max_time=str(args.minutes * 60), max_steps=args.max_steps)


# ----------------------------------------------------------------------------------------------- launching

def torchrun(script: str, flags: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={NPROC}", script,
            *flags]


def launch(command: list[str], log_path: str) -> float:
    """Runs a launch to its end, from this directory (relative paths in the flags stay valid), its output in
    `log_path`; the seconds it took."""
    logger.info(f"running {' '.join(command[2:])} (log: {log_path})")
    started = time.perf_counter()
    with open(log_path, "w", encoding="utf-8") as out:
        code = subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode
    if code:
        with open(log_path, encoding="utf-8", errors="replace") as f:
            logger.error("the end of its log:\n" + "".join(f.readlines()[-30:]))
        raise UserError(f"{os.path.basename(command[5])} exited with status {code}: see {log_path}")
    return time.perf_counter() - started


def fresh_folder(work: str, name: str) -> str:
    """A side's own folder, refused when it holds an earlier run: train.py would resume from it."""
    folder = os.path.join(work, name)
    if os.path.isdir(folder) and os.listdir(folder):
        raise UserError(f"--work_dir: {folder} holds an earlier run; give another --work_dir")
    os.makedirs(folder, exist_ok=True)
    return folder


def common_flags(args) -> list[str]:
    flags = ["--data_files", args.data_files, "--lang_src", args.lang_src, "--lang_tgt", args.lang_tgt]
    return flags + (["--max_steps", str(args.max_steps)] if args.max_steps else [])


def run_hf(args, work: str) -> dict:
    folder = fresh_folder(work, "hf")
    flags = [*common_flags(args), "--minutes", str(args.minutes), "--hf_worker", "--work_dir", folder]
    wall_s = launch(torchrun(os.path.abspath(__file__), flags), os.path.join(work, "hf.log"))
    with open(os.path.join(folder, "row.json"), encoding="utf-8") as f:
        return {**json.load(f), "wall_s": wall_s}


def run_ours(args, work: str) -> dict:
    folder = fresh_folder(work, "ours")
    flags = [*common_flags(args), "--max_time", str(args.minutes * 60), "--model_folder", folder,
             "--wandb_mode", "disabled"]
    wall_s = launch(torchrun(os.path.join(HERE, "train.py"), flags), os.path.join(work, "ours.log"))
    return {**ours_row(folder), "wall_s": wall_s}


# ----------------------------------------------------------------------------------------------- our row

def training_windows(lines: list[dict], cfg: config.Config) -> tuple[float, float, int]:
    """(seconds, real tokens, steps) of the metrics windows that only trained. A window that starts right after a
    validation or a checkpoint, or in which an epoch ended (a checkpoint too), holds that time as well: left out."""
    seconds, tokens, steps, previous, epoch = 0.0, 0.0, 0, 0, 0
    for line in lines:
        if "train/step_ms" not in line:
            continue
        paused = previous > 0 and (previous % cfg.eval_every == 0 or previous % cfg.save_every == 0)
        if not paused and line["train/epoch"] == epoch:
            window_s = line["train/step_ms"] * (line["step"] - previous) / 1000
            seconds, tokens = seconds + window_s, tokens + line["train/tokens_per_s"] * window_s
            steps += line["step"] - previous
        previous, epoch = line["step"], line["train/epoch"]
    return seconds, tokens, steps


def our_parameters(folder: str, cfg: config.Config) -> int:
    """The parameters of the network our run trained, rebuilt from its settings and tokenizers."""
    vocab = []
    for lang in (cfg.lang_src, cfg.lang_tgt):
        with open(tokenizer.tokenizer_path(folder, lang), encoding="utf-8") as f:
            vocab.append(tokenizer.tokenizer_from_json(f.read()).get_vocab_size())
    return count_parameters(Transformer(config.model_config(cfg, *vocab, tokenizer.PAD_ID)))


def ours_row(folder: str) -> dict:
    """Our run's row, from what it left in its model folder: metrics.jsonl (a line per --log_every steps, the
    validations, the test scores) and config.json (the settings it resolved)."""
    with open(os.path.join(folder, "metrics.jsonl"), encoding="utf-8") as f:
        lines = [json.loads(line) for line in f]
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        cfg = config.Config.from_dict(json.load(f))
    summary = {key: value for line in lines if line.get("summary") for key, value in line.items()}
    if "test/bleu" not in summary:
        raise UserError(f"{folder}/metrics.jsonl holds no test score: the run did not finish")
    seconds, tokens, steps = training_windows(lines, cfg)
    pairs = steps * cfg.batch_size * cfg.grad_accum_steps * NPROC
    return {"system": "ours", "parameters": our_parameters(folder, cfg),
            "steps": max(line.get("step", 0) for line in lines), "train_s": seconds,
            "ms_per_step": 1000 * seconds / steps if steps else None,
            "tokens_per_s": tokens / seconds if seconds else None, "pairs_per_s": pairs / seconds if seconds else None,
            "bleu": summary["test/bleu"], "chrf": summary["test/chrf"],
            "placeholder_match": summary.get("test/placeholder_match")}


# ----------------------------------------------------------------------------------------------- the HF side

def hf_classes():
    """The callback that ends training at the budget, and Seq2SeqTrainer counting what it trained on: classes
    built on transformers' own, defined here so that importing this module never imports transformers."""
    from transformers import Seq2SeqTrainer, TrainerCallback

    class TimeLimit(TrainerCallback):
        """Stops after the step at which the budget (counted from `started`) is spent, on every rank at that same
        step: a rank that stopped alone would leave the other waiting in its next all-reduce."""

        def __init__(self, started: float, budget_s: float):
            self.started, self.budget_s = started, budget_s
            self.train_began = self.train_ended = 0.0

        def on_train_begin(self, args, state, control, **kwargs):
            self.train_began = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            spent = torch.tensor([float(time.perf_counter() - self.started >= self.budget_s)])
            if dist.is_initialized():
                dist.all_reduce(spent, op=dist.ReduceOp.MAX)
            if spent.item():
                control.should_training_stop = True

        def on_train_end(self, args, state, control, **kwargs):
            self.train_ended = time.perf_counter()

    class CountingTrainer(Seq2SeqTrainer):
        """Seq2SeqTrainer as it is, counting the real (non-padding) source and target tokens and the pairs of
        every training step on this rank: the measurement, not part of the recipe."""
        real_tokens, pairs = 0, 0

        def training_step(self, model, inputs, *args, **kwargs):
            self.real_tokens += int(inputs["attention_mask"].sum()) + int((inputs["labels"] != -100).sum())
            self.pairs += len(inputs["labels"])
            return super().training_step(model, inputs, *args, **kwargs)

    return TimeLimit, CountingTrainer


def hf_training_args(cfg: config.Config, folder: str, max_steps: int | None):
    from transformers import Seq2SeqTrainingArguments

    return Seq2SeqTrainingArguments(
        output_dir=folder, use_cpu=True, seed=cfg.seed,
        # gloo between torchrun's processes; DDP's own warning asks to turn off its search for unused parameters
        # (an extra pass over the graph every step), and a user who reads it does. Alone, accelerate wants neither.
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None, ddp_find_unused_parameters=False,
        per_device_train_batch_size=cfg.batch_size, per_device_eval_batch_size=cfg.batch_size,
        learning_rate=cfg.lr, lr_scheduler_type="inverse_sqrt", warmup_steps=cfg.warmup_steps,
        label_smoothing_factor=cfg.label_smoothing, train_sampling_strategy="group_by_length",
        # The epochs are only an upper bound: the budget (or --max_steps) ends the run.
        num_train_epochs=10_000, max_steps=max_steps or -1,
        # Our trainer's precision on this CPU (bf16 where it computes bf16 natively): a like-for-like step.
        bf16=resolve_precision("auto", torch.device("cpu")) == "bf16",
        eval_strategy="no", save_strategy="no", logging_steps=cfg.log_every, report_to="none", disable_tqdm=True,
        dataloader_num_workers=0, predict_with_generate=True, generation_num_beams=cfg.beam_size,
        generation_max_length=cfg.seq_len)


def hf_model(cfg: config.Config, vocab_size: int):
    from transformers import MarianConfig, MarianMTModel, set_seed

    set_seed(cfg.seed)
    return MarianMTModel(MarianConfig(
        vocab_size=vocab_size, d_model=cfg.d_model, encoder_layers=cfg.num_layers, decoder_layers=cfg.num_layers,
        encoder_attention_heads=cfg.num_heads, decoder_attention_heads=cfg.num_heads, encoder_ffn_dim=cfg.d_ff,
        decoder_ffn_dim=cfg.d_ff, dropout=cfg.dropout, attention_dropout=cfg.dropout,
        max_position_embeddings=MAX_POSITIONS, scale_embedding=True, share_encoder_decoder_embeddings=True,
        tie_word_embeddings=cfg.tie_embeddings, pad_token_id=tokenizer.PAD_ID, eos_token_id=tokenizer.EOS_ID,
        forced_eos_token_id=tokenizer.EOS_ID, bos_token_id=tokenizer.BOS_ID, decoder_start_token_id=tokenizer.BOS_ID))


def joint_tokenizer(cfg: config.Config, pairs: dict, folder: str):
    """Our joint tokenizer, trained as train.py trains it (the same pairs, the same vocabulary size) by the first
    rank to get here, and read from its file by the other."""
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        sample = corpus.tokenizer_sample(cfg, pairs)
        tokenizer.train_tokenizer([text for pair in sample for text in pair], cfg.vocab_size).save(path)
    with open(path, encoding="utf-8") as f:
        return tokenizer.tokenizer_from_json(f.read())


def hf_tokenizer(tok):
    """Our tokenizer as HF's, which appends EOS to every sentence as Marian's does; literal "[EOS]" in a sentence
    stays text, as in ours: the same token ids as train.py feeds its model, plus that EOS."""
    from tokenizers import Tokenizer, processors
    from transformers import PreTrainedTokenizerFast

    wrapped = Tokenizer.from_str(tok.to_str())
    wrapped.post_processor = processors.TemplateProcessing(single=f"$A {tokenizer.EOS}",
                                                           special_tokens=[(tokenizer.EOS, tokenizer.EOS_ID)])
    return PreTrainedTokenizerFast(tokenizer_object=wrapped, pad_token=tokenizer.PAD, unk_token=tokenizer.UNK,
                                   bos_token=tokenizer.BOS, eos_token=tokenizer.EOS, split_special_tokens=True)


def hf_dataset(hf_tok, pairs: list[tuple[str, str]], seq_len: int):
    import datasets

    def encode(batch):
        return hf_tok(batch["src"], text_target=batch["tgt"], max_length=seq_len, truncation=True)

    raw = datasets.Dataset.from_dict({"src": [s for s, _ in pairs], "tgt": [t for _, t in pairs]})
    return raw.map(encode, batched=True, remove_columns=["src", "tgt"])


def dist_sum(values: list[float]) -> list[float]:
    totals = torch.tensor(values, dtype=torch.float64)
    if dist.is_initialized():
        dist.all_reduce(totals)
    return totals.tolist()


def hf_worker(args) -> None:
    """One torchrun worker of the HF side; rank 0 writes the row to --work_dir/row.json."""
    import transformers
    from transformers import DataCollatorForSeq2Seq

    started = time.perf_counter()  # after the imports, as train.py's budget starts after its own
    base = run_config(args)
    # Nothing the Trainer's arguments take depends on the corpus size: resolved as for a corpus of unknown size.
    training_args = hf_training_args(config.resolve_defaults(base, None, "cpu")[0], args.work_dir, args.max_steps)
    with training_args.main_process_first(desc="corpus and tokenizer"):
        pairs = corpus.load_corpus(base)
        cfg, _ = config.resolve_defaults(base, len(pairs["train"]), "cpu")
        tok = joint_tokenizer(cfg, pairs, args.work_dir)
    hf_tok = hf_tokenizer(tok)
    model = hf_model(cfg, tok.get_vocab_size())
    TimeLimit, CountingTrainer = hf_classes()
    limit = TimeLimit(started, args.minutes * 60)
    trainer = CountingTrainer(model=model, args=training_args, train_dataset=hf_dataset(hf_tok, pairs["train"],
                                                                                        cfg.seq_len),
                              data_collator=DataCollatorForSeq2Seq(hf_tok, model=model), processing_class=hf_tok,
                              callbacks=[limit])
    trainer.train()
    train_s = limit.train_ended - limit.train_began
    real_tokens, trained_pairs = dist_sum([trainer.real_tokens, trainer.pairs])
    steps = trainer.state.global_step
    # Length grouping would also reorder predict's sentences (and under DDP, hand every rank all of them): grouping
    # is a training choice, and the references are text in the test split's order.
    trainer.args.train_sampling_strategy = "sequential"
    test_set = hf_dataset(hf_tok, pairs["test"], cfg.seq_len)  # every pair, as train.py scores them
    output = trainer.predict(test_set)
    if not trainer.is_world_process_zero():
        return
    scores = score_translations(tok, output, pairs["test"], list(test_set["labels"]))
    row = {"system": "hf", "transformers": transformers.__version__,
           "parameters": sum(p.numel() for p in model.parameters() if p.requires_grad), "steps": steps,
           "train_s": train_s, "ms_per_step": 1000 * train_s / steps, "tokens_per_s": real_tokens / train_s,
           "pairs_per_s": trained_pairs / train_s, **scores}
    with open(os.path.join(args.work_dir, "row.json"), "w", encoding="utf-8") as f:
        json.dump(row, f, indent=2)


def score_translations(tok, output, test_pairs: list[tuple[str, str]], labels: list[list[int]]) -> dict:
    """BLEU, chrF and the placeholder rate of `predict`'s translations, detokenized by our tokenizer as train.py
    detokenizes them. Under DDP, accelerate pads the ranks' last batches to equal sizes with sentences from the
    start, and the gather keeps them at the end: the first rows are the test split in order, which the labels given
    back (`labels`: the test set's own) confirm."""
    count = len(test_pairs)
    # Labels come back padded with -100 across batches and with PAD to the generation length within one.
    given_back = [[i for i in row if i >= 0 and i != tokenizer.PAD_ID] for row in output.label_ids[:count].tolist()]
    if given_back != labels:
        wrong = sum(a != b for a, b in zip(given_back, labels)) + abs(len(labels) - len(given_back))
        raise RuntimeError(f"predict gave back {len(given_back)} labels for {count} test sentences, {wrong} of them "
                           f"not in their place: its translations cannot be paired with their references")
    hypotheses = tok.decode_batch([[i for i in row if i >= 0] for row in output.predictions[:count].tolist()],
                                  skip_special_tokens=True)
    sources, references = [s for s, _ in test_pairs], [t for _, t in test_pairs]
    bleu, chrf, signature, _ = corpus_scores(hypotheses, references)
    return {"bleu": bleu, "chrf": chrf, "placeholder_match": placeholder_match_rate(sources, references, hypotheses),
            "test_sentences": count, "bleu_signature": signature,
            "samples": list(zip(sources, references, hypotheses))[:3]}

# ----------------------------------------------------------------------------------------------- the table

def number(value, spec: str, suffix: str = "") -> str:
    return "n/a" if value is None else f"{value:{spec}}{suffix}"


def markdown_table(rows: list[dict]) -> str:
    lines = ["| system | parameters | steps | ms/step | real tokens/s | pairs/s | test BLEU | test chrF | "
             "placeholders kept |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = None if r["placeholder_match"] is None else 100 * r["placeholder_match"]
        lines.append(f"| {SYSTEMS[r['system']]} | {r['parameters'] / 1e6:.2f}M | {r['steps']:,} | "
                     f"{number(r['ms_per_step'], '.0f')} | {number(r['tokens_per_s'], ',.0f')} | "
                     f"{number(r['pairs_per_s'], ',.0f')} | {r['bleu']:.2f} | {r['chrf']:.2f} | "
                     f"{number(kept, '.1f', ' %')} |")
    return "\n".join(lines)


def headline(args, rows: list[dict]) -> str:
    hf = next((r for r in rows if r["system"] == "hf"), {})
    test = f"{hf['test_sentences']} test sentences, " if hf else ""
    version = f"transformers {hf['transformers']}, " if hf else ""
    return (f"{args.lang_src}->{args.lang_tgt}, {args.data_files}: {args.minutes:g} min of training each, {NPROC} "
            f"CPU processes ({os.cpu_count()} cores), {test}{version}torch {torch.__version__}, "
            f"{datetime.date.today().isoformat()}")


def compare(args) -> None:
    work = args.work_dir or tempfile.mkdtemp(prefix="compare_hf-")
    os.makedirs(work, exist_ok=True)
    logger.info(f"logs and model folders in {work}")
    rows = []
    if args.which in ("hf", "both"):
        rows.append(run_hf(args, work))
    if args.which in ("ours", "both"):
        rows.append(run_ours(args, work))
    table = f"{headline(args, rows)}\n\n{markdown_table(rows)}"
    print(table)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"args": vars(args), "work_dir": work, "rows": rows, "table": table}, f, indent=2,
                      ensure_ascii=False)


def main(argv=None) -> None:
    args = parse_args(argv)
    setup_logging(rank=int(os.environ.get("RANK", "0")), stream=sys.stderr)  # stdout carries the table
    try:
        if args.hf_worker:
            hf_worker(args)
        else:
            compare(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr, flush=True)
        sys.exit(2)


if __name__ == "__main__":
    main()
