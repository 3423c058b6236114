"""Every setting of the trainer, in one dataclass. The command line is generated from it.

Each field is a `--flag` of `train.py` with its default and a one-line help text, so a setting and its flag can
never drift apart. `validate` checks the values once, up front, on every rank.
"""

import argparse
import dataclasses
import json
import math
import re
import types
import typing
from dataclasses import dataclass, field

from errors import UserError
from model import ModelConfig


def _setting(default, help, **extra):
    return field(default=default, metadata={"help": help, **extra})


@dataclass
class Config:
    # data
    dataset: str = _setting("builtin", "corpus: 'builtin' (generated English-Italian corpus), a Hugging Face hub "
                                       "name such as Helsinki-NLP/opus_books, or a local folder (data files, "
                                       "train/ validation/ test/ sub-folders, or a save_to_disk dataset)")
    dataset_config: str | None = _setting(None, "hub dataset configuration, e.g. en-it for opus_books")
    data_files: str | None = _setting(None, "files in the opus_books schema (.jsonl/.json/.parquet), .tsv "
                                            "(source<TAB>target) or Moses pairs named by one side (train.en finds "
                                            "train.it); comma-separated, split=file, globs allowed; overrides "
                                            "--dataset")
    lang_src: str = _setting("en", "source language key in each example's 'translation' dict")
    lang_tgt: str = _setting("it", "target language key in each example's 'translation' dict")
    seq_len: int = _setting(128, "maximum tokens per sentence (with BOS/EOS); longer pairs are dropped up front")
    vocab_size: int | None = _setting(None, "subword vocabulary size of each tokenizer (default: by training pairs: "
                                            "4000 below 50k, 8000 below 500k, 16000 below 2M, else 32000; BPE stops "
                                            "earlier on small corpora)")
    share_vocab: bool | None = _setting(None, "one joint tokenizer for both languages, and one embedding shared by "
                                              "the encoder, the decoder and (with --tie_embeddings) the output layer "
                                              "(default: on, except on the builtin corpus)")
    streaming: bool = _setting(False, "read the training split as a stream (files or hub dataset not held in memory; "
                                      "needs --max_steps): sharded over ranks, shuffled through a buffer")
    shuffle_buffer: int = _setting(10000, "with --streaming: pairs in each rank's shuffle buffer")
    tokenizer_sample: int | None = _setting(None, "train the tokenizers on the first N training pairs (default: all "
                                                  "of an in-memory corpus up to 500000 pairs, a fixed random sample "
                                                  "of 500000 beyond; the first 100000 of a stream)")
    valid_size: int = _setting(500, "pairs held out for validation when the corpus has no validation split")
    test_size: int = _setting(500, "pairs held out for testing when the corpus has no test split")

    # model
    d_model: int = _setting(256, "width of the Transformer")
    num_layers: int | None = _setting(None, "layers in the encoder and in the decoder (each; default: 2 for a "
                                            "--max_time of at most 2h on CPU, where a smaller model takes more "
                                            "updates in the time, else 3)")
    num_heads: int = _setting(4, "attention heads; must divide --d_model")
    d_ff: int | None = _setting(None, "hidden width of the feed-forward blocks (default: 512 for a --max_time of "
                                      "at most 2h on CPU, else 1024)")
    dropout: float | None = _setting(None, "dropout in attention, feed-forward and embeddings (default: 0 for a "
                                           "--max_time of at most 30m on CPU, 0.1 for runs of at most 10 epochs or "
                                           "a --max_time of at most 2h; longer runs by training pairs: 0.3 below "
                                           "500k, 0.2 below 2M, else 0.1)")
    tie_embeddings: bool = _setting(True, "share the decoder embedding with the output projection")

    # optimisation
    batch_size: int | None = _setting(None, "sentence pairs per batch on each rank (per micro-step; default: 16 on "
                                            "CPU, where small batches buy more updates, 64 on GPU, where batches "
                                            "go by --max_tokens unless this is given); see --max_tokens")
    max_tokens: int | None = _setting(None, "instead of --batch_size: batches of about this many padded tokens per "
                                            "rank and micro-step, of similar lengths (fairseq's --max-tokens)")
    grad_accum_steps: int = _setting(1, "micro-steps per optimizer step; gradients are all-reduced on the last only")
    num_epochs: int | None = _setting(None, "passes over the training split (default: 4, or as many as --max_time "
                                            "allows when it is given)")
    max_steps: int | None = _setting(None, "stop after this many optimizer steps (whichever comes first with epochs)")
    max_time: str | None = _setting(None, "wall-clock budget of training, e.g. 14m, 2h, 1d6h, 90s or seconds: the "
                                          "run stops after the step at which it runs out (time before a resume "
                                          "counts), then validates, averages and scores the test split as usual")
    lr: float = _setting(1e-3, "peak learning rate, reached after warmup")
    lr_schedule: str | None = _setting(None, "decay after warmup; wsd: the peak held, then linear to zero over the "
                                             "last fifth of the run (default: wsd with --max_time, else "
                                             "inverse_sqrt)", choices=("inverse_sqrt", "cosine", "wsd"))
    warmup_steps: int = _setting(300, "linear warmup steps")
    weight_decay: float = _setting(0.01, "AdamW weight decay (not applied to biases, norms and embeddings)")
    grad_clip: float = _setting(1.0, "clip the global gradient norm to this value (0 disables)")
    label_smoothing: float = _setting(0.1, "label smoothing of the training loss")
    precision: str = _setting("auto", "auto = bf16 on GPUs that support it, fp16 (+GradScaler) on older GPUs, "
                                      "bf16 on CPUs that compute it natively (AVX512-BF16, AMX), else fp32",
                                      choices=("auto", "fp32", "bf16", "fp16"))
    strategy: str = _setting("ddp", "ddp: every rank holds the whole model (fastest while it fits); fsdp: parameters, "
                                    "gradients and optimizer state sharded over ranks (FSDP2)", choices=("ddp", "fsdp"))
    cpu_offload: bool = _setting(False, "with --strategy fsdp: keep parameters, gradients and optimizer state in CPU "
                                        "memory; the optimizer steps on the CPU")
    seed: int = _setting(0, "seed of initialisation, dropout and data order")
    device: str = _setting("auto", "auto = the GPU when torch can use one (a GPU it cannot use, such as one whose "
                                   "driver is too old, is an error), cuda, or cpu on purpose",
                           choices=("auto", "cuda", "cpu"))
    compile: bool | None = _setting(None, "torch.compile the model for training (default: on with CUDA, off on CPU)")
    num_workers: int | None = _setting(None, "DataLoader worker processes per rank (default: 2 with CUDA, 0 on CPU, "
                                             "where the cores are busy computing)")
    peak_tflops: float | None = _setting(None, "peak TFLOP/s of one device for MFU (default: a datasheet table for "
                                               "known GPUs, a measured matmul on CPU)")

    # evaluation
    eval_every: int = _setting(1000, "evaluate every N optimizer steps, at the end of training, and at the end of "
                                     "every epoch unless --max_time is given")
    eval_max_sentences: int = _setting(500, "validation sentences greedily decoded for BLEU/chrF at each evaluation")
    log_every: int = _setting(50, "print and log training metrics every N optimizer steps")
    beam_size: int = _setting(4, "beam size for the final test-set score (validation decodes greedily, = beam 1)")
    length_penalty: float = _setting(1.0, "beam search ranks hypotheses by log-probability / length ** this; 0 "
                                          "compares raw sums (favours short outputs), larger favours longer ones")

    # checkpoints
    model_folder: str = _setting("weights", "folder for checkpoints, tokenizers and metrics (shared by all nodes)")
    preload: str = _setting("latest", "resume from: 'latest' checkpoint in --model_folder, 'none', a step number "
                                      "or a checkpoint path")
    init_from: str | None = _setting(None, "start a new run (step 0, fresh optimizer, schedule and data order) from "
                                           "the weights and tokenizers of a checkpoint file, a model folder (its "
                                           "best checkpoint) or an export.py folder; a --model_folder that holds "
                                           "checkpoints resumes from them instead")
    save_every: int = _setting(1000, "save a checkpoint every N optimizer steps (and at the end of training)")
    keep_last: int = _setting(3, "keep this many most recent checkpoints (at least 2), plus the best by BLEU")
    average_last: int = _setting(0, "at the end of training, average the parameters of the last N checkpoints "
                                    "(at most --keep_last) into averaged_<first>-<last>.pt; 0 or 1: none")
    dist_timeout: float = _setting(1800.0, "seconds a collective may wait for the other ranks before failing")

    # logging
    wandb_mode: str = _setting("auto", "auto = the WANDB_MODE environment variable if set, else online when logged "
                                       "in (WANDB_API_KEY or `wandb login`), else offline",
                               choices=("auto", "online", "offline", "disabled"))
    wandb_project: str | None = _setting(None, "W&B project (default: WANDB_PROJECT, else transformer-translation)")
    wandb_entity: str | None = _setting(None, "W&B entity, a user or team (default: WANDB_ENTITY, else yours)")
    wandb_group: str | None = _setting(None, "W&B group, e.g. to gather the runs of one experiment")
    wandb_run_name: str | None = _setting(None, "W&B run name (default: W&B picks one)")
    wandb_log_model: bool = _setting(False, "at the end of training, log the best and the final weights (with the "
                                            "tokenizers and config.json) as a W&B model artifact")

    @classmethod
    def from_dict(cls, values: dict) -> "Config":
        """The settings a checkpoint saved (`to_dict`): any since removed are ignored, any since added keep their
        defaults."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{name: value for name, value in values.items() if name in names})


def _scalar_type(annotation):
    """int for `int`, int for `int | None`; flags parse to the non-None member of an optional annotation."""
    if isinstance(annotation, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        return members[0]
    return annotation


def _optional_int(text: str) -> int | None:
    return None if text.lower() == "none" else int(text)


def _optional_float(text: str) -> float | None:
    return None if text.lower() == "none" else float(text)


# --help's sections: each field belongs to the section of the nearest field above it named here.
SECTIONS = {"dataset": "data", "d_model": "model", "batch_size": "training", "strategy": "distributed",
            "seed": "training", "eval_every": "evaluation", "model_folder": "checkpoints",
            "dist_timeout": "distributed", "wandb_mode": "logging"}


def _flag_options(f: dataclasses.Field, annotation) -> dict:
    kind = _scalar_type(annotation)
    options = dict(default=f.default, help=f.metadata["help"], dest=f.name)
    if "choices" in f.metadata:
        options["choices"] = f.metadata["choices"]
    if kind is bool:
        options["action"] = argparse.BooleanOptionalAction
    elif annotation == (int | None):
        options["type"] = _optional_int
    elif annotation == (float | None):
        options["type"] = _optional_float
    else:
        options["type"] = kind
    return options


def build_parser() -> argparse.ArgumentParser:
    """Every Config field as a flag, in both spellings (--model_folder and --model-folder), in --help's sections;
    --config FILE sets any of them from a JSON or YAML file, and flags on the command line win."""
    parser = argparse.ArgumentParser(description="Train an encoder-decoder Transformer for translation "
                                                 "(run with python or torchrun).",
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", help="a JSON or YAML file of settings (keys as the flags, without dashes); "
                                         "flags on the command line win")
    hints, groups, group = typing.get_type_hints(Config), {}, None
    for f in dataclasses.fields(Config):
        if f.name in SECTIONS:
            title = SECTIONS[f.name]
            group = groups.get(title) or groups.setdefault(title, parser.add_argument_group(title))
        spellings = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        group.add_argument(*spellings, **_flag_options(f, hints[f.name]))
    return parser


def _settings_file(path: str, parser: argparse.ArgumentParser) -> dict:
    """The settings of a --config file; parser.error (exit 2, one line) for a file that is missing, unreadable
    or names a setting that does not exist."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        if path.endswith((".yaml", ".yml")):
            import yaml  # installed with datasets

            values = yaml.safe_load(text) or {}
        else:
            values = json.loads(text)
    except (OSError, ValueError) as e:
        parser.error(f"--config {path}: cannot read it ({e.__class__.__name__}: {str(e).splitlines()[0]})")
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of settings, got {type(values).__name__}")
    names = {f.name for f in dataclasses.fields(Config)}
    values = {key.replace("-", "_"): value for key, value in values.items()}
    unknown = sorted(set(values) - names)
    if unknown:
        parser.error(f"--config {path}: no such setting: {', '.join(unknown)} (see --help)")
    return values


def parse_config(argv: list[str] | None = None) -> Config:
    """Flags (and a --config file) to a Config; argparse itself reports unknown flags and malformed values (exit
    2)."""
    parser = build_parser()
    known, _ = parser.parse_known_args(argv)
    if known.config:
        parser.set_defaults(**_settings_file(known.config, parser))
    values = vars(parser.parse_args(argv))
    values.pop("config")
    return Config(**values)


DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}


def parse_duration(text: str) -> float:
    """Seconds in '14m', '2h', '1d6h', '1h30m', '90s' or a plain number of seconds; ValueError otherwise."""
    text = text.strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([dhms])", text)
    if not parts or "".join(number + unit for number, unit in parts) != text:
        raise ValueError(f"not a duration: {text!r}")
    return sum(float(number) * DURATION_UNITS[unit] for number, unit in parts)


def duration_text(seconds: float) -> str:
    """42s, 3m05s, 1h02m, 2d03h: two units at most, as parse_duration reads them."""
    seconds = int(round(seconds))
    for unit, size, smaller, smaller_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit}{seconds % size // smaller_size:02d}{smaller}"
    return f"{seconds}s"


def max_time_seconds(cfg: "Config") -> float:
    """--max_time in seconds; infinite when unset."""
    return math.inf if cfg.max_time is None else parse_duration(cfg.max_time)


def _check(condition: bool, flag: str, message: str) -> None:
    if not condition:
        raise UserError(f"--{flag}: {message}")


def validate(cfg: Config) -> None:
    """Check values that argparse cannot; raises UserError naming the flag to change."""
    for name in ("seq_len", "d_model", "num_layers", "num_heads", "d_ff", "batch_size",
                 "grad_accum_steps", "num_epochs", "eval_every", "eval_max_sentences", "log_every", "save_every"):
        value = getattr(cfg, name)
        _check(value is None or value > 0, name, f"must be a positive integer, got {value}")
    for name in ("valid_size", "test_size", "warmup_steps"):
        _check(getattr(cfg, name) >= 0, name, f"must be zero or positive, got {getattr(cfg, name)}")
    _check(cfg.max_steps is None or cfg.max_steps > 0, "max_steps", f"must be positive, got {cfg.max_steps}")
    if cfg.max_time is not None:
        try:
            seconds = parse_duration(cfg.max_time)
        except ValueError:
            seconds = None
        _check(seconds is not None and seconds > 0, "max_time",
               f"expected a positive duration such as 14m, 2h, 1d6h, 90s or a number of seconds, got {cfg.max_time!r}")
    _check(cfg.max_tokens is None or cfg.max_tokens >= cfg.seq_len, "max_tokens",
           f"must be at least --seq_len ({cfg.seq_len}) so that every kept pair fits a batch, got {cfg.max_tokens}")
    _check(cfg.num_workers is None or cfg.num_workers >= 0, "num_workers",
           f"must be zero or positive, got {cfg.num_workers}")
    _check(cfg.peak_tflops is None or cfg.peak_tflops > 0, "peak_tflops", f"must be positive, got {cfg.peak_tflops}")
    _check(cfg.shuffle_buffer > 0, "shuffle_buffer", f"must be positive, got {cfg.shuffle_buffer}")
    _check(cfg.tokenizer_sample is None or cfg.tokenizer_sample > 0, "tokenizer_sample",
           f"must be positive, got {cfg.tokenizer_sample}")
    if cfg.streaming:
        _check(cfg.max_steps is not None, "max_steps", "is required with --streaming (a stream's length is unknown)")
        _check(cfg.max_tokens is None, "max_tokens", "does not apply to --streaming; use --batch_size")
        _check(cfg.dataset != "builtin" or bool(cfg.data_files), "streaming",
               "needs --data_files or a hub --dataset; the builtin corpus is generated in memory")
    _check(not cfg.cpu_offload or cfg.strategy == "fsdp", "cpu_offload", "needs --strategy fsdp")
    _check(cfg.strategy != "fsdp" or cfg.precision != "fp16", "precision",
           "fp16 is not supported with --strategy fsdp (it needs a gradient scaler); use bf16 or fp32")
    _check("://" not in cfg.model_folder, "model_folder",
           "must be a mounted folder (checkpoints are committed by renaming files, which object stores such as "
           "s3:// cannot do); mount a shared drive on every node")
    _check(cfg.d_model % cfg.num_heads == 0, "num_heads",
           f"must divide --d_model ({cfg.d_model} is not divisible by {cfg.num_heads})")
    _check((cfg.d_model // cfg.num_heads) % 2 == 0, "num_heads", "--d_model / --num_heads must be even")
    _check(cfg.seq_len >= 4, "seq_len", f"must be at least 4 to hold BOS, EOS and a word, got {cfg.seq_len}")
    _check(cfg.vocab_size is None or cfg.vocab_size >= 300, "vocab_size",
           f"must be at least 300 (byte alphabet + specials), got {cfg.vocab_size}")
    _check(cfg.dropout is None or 0.0 <= cfg.dropout < 1.0, "dropout", f"must be in [0, 1), got {cfg.dropout}")
    _check(0.0 <= cfg.label_smoothing < 1.0, "label_smoothing", f"must be in [0, 1), got {cfg.label_smoothing}")
    _check(cfg.lr > 0, "lr", f"must be positive, got {cfg.lr}")
    _check(cfg.weight_decay >= 0, "weight_decay", f"must be zero or positive, got {cfg.weight_decay}")
    _check(cfg.grad_clip >= 0, "grad_clip", f"must be zero or positive, got {cfg.grad_clip}")
    _check(cfg.keep_last >= 2, "keep_last", f"must be at least 2, got {cfg.keep_last}")
    _check(0 <= cfg.average_last <= cfg.keep_last, "average_last",
           f"must be between 0 and --keep_last ({cfg.keep_last}), got {cfg.average_last}")
    _check(cfg.beam_size >= 1, "beam_size", f"must be at least 1, got {cfg.beam_size}")
    _check(cfg.length_penalty >= 0, "length_penalty", f"must be zero or positive, got {cfg.length_penalty}")
    _check(cfg.dist_timeout > 0, "dist_timeout", f"must be positive, got {cfg.dist_timeout}")
    _check(cfg.lang_src != cfg.lang_tgt, "lang_tgt", f"must differ from --lang_src ({cfg.lang_src})")
    _check(bool(cfg.model_folder.strip()), "model_folder", "must not be empty")
    _check(cfg.dataset_config is None or cfg.dataset != "builtin", "dataset_config",
           "only applies to a hub dataset; the builtin corpus has none")
    _check(bool(cfg.preload.strip()), "preload", "expected 'latest', 'none', a step number or a checkpoint path")
    _check(cfg.init_from is None or cfg.preload in ("latest", "none"), "init_from",
           f"starts from weights, --preload {cfg.preload} resumes a checkpoint: give one of them")


# The published Transformer recipe by training-corpus size, as (fewer pairs than, dropout, vocabulary per tokenizer):
# fairseq's IWSLT'14 de-en (160k pairs) trains with dropout 0.3 and a ~10k BPE vocabulary, WMT'16 en-de (4.5M pairs)
# with 0.1 and 32k; Sennrich & Zhang (2019, "Revisiting low-resource NMT") find small corpora want smaller
# vocabularies still. opus_books en-it (32k pairs) and the builtin corpus (20k) fall in the first row.
CORPUS_SIZE_RECIPE = ((50_000, 0.3, 4000), (500_000, 0.3, 8000), (2_000_000, 0.2, 16000), (math.inf, 0.1, 32000))
# The builtin corpus is measured instead: generated by a grammar, without noise and with one translation per sentence,
# it learns best with little dropout (docs/experiments.md#dropout-on-the-builtin-corpus).
BUILTIN_DROPOUT = 0.1


# Short runs (the default 4 epochs, a --max_time of a few hours or less) learn fastest with dropout 0.1; the
# corpus-size dropout above is for runs long enough to overfit
# (docs/experiments.md#dropout-of-short-runs).
LONG_RUN_EPOCHS = 10
LONG_RUN_SECONDS = 2 * 3600
# A CPU budget of half an hour or less shows each training pair only a few times: there is nothing yet to
# regularize, and dropout only slows learning (docs/experiments.md#dropout-of-short-runs).
NO_DROPOUT_CPU_SECONDS = 30 * 60
# Sentences per rank and micro-step by device: on a CPU, throughput in tokens/s hardly depends on the batch, so small
# batches buy more updates in the same time; a GPU needs large batches to be busy
# (docs/experiments.md#batch-size-by-device).
BATCH_SIZE_BY_DEVICE = {"cpu": 16, "cuda": 64}
# Layers and feed-forward width: a budget of a few CPU hours or less buys few updates, and a smaller network takes
# twice as many in the same time and learns more from them
# (docs/experiments.md#model-shape-for-short-cpu-budgets).
MODEL_SHAPE = {"short_cpu": (2, 512), "otherwise": (3, 1024)}
DEFAULT_EPOCHS = 4
# The learning-rate schedule of a --max_time run: warmup-stable-decay (the peak held, then a linear cooldown over the
# last fifth of the budget): measured better than inverse square root at 14 minutes
# (docs/experiments.md#schedule-for-a-time-budget). Runs ended by epochs keep inverse square root, which the quick
# start measured.
SCHEDULE_FOR_A_BUDGET = "wsd"
UNTIL_THE_BUDGET = 10**9  # --num_epochs unset with --max_time: the budget ends the run


def resolve_defaults(cfg: Config, train_pairs: int | None, device_type: str) -> tuple[Config, str]:
    """`cfg` with every setting left unset resolved, and a line saying what was chosen; deterministic, so every
    rank resolves the same values:
    - --num_epochs: 4, or until the budget when --max_time is given;
    - --batch_size: by device (BATCH_SIZE_BY_DEVICE);
    - --share_vocab: on for real corpora (names, numbers and placeholders are copied from source to target), off
      for the builtin corpus (its figures were measured so);
    - --dropout: 0 for a --max_time of at most half an hour on CPU (NO_DROPOUT_CPU_SECONDS), 0.1 for other short
      runs, else by corpus size (CORPUS_SIZE_RECIPE); 0.1 on the builtin corpus;
    - --vocab_size: by corpus size (train_pairs None: a stream, whose size is unknown, taken as large);
    - --num_layers and --d_ff: smaller for a short --max_time on CPU (MODEL_SHAPE);
    - --lr_schedule: wsd with --max_time (SCHEDULE_FOR_A_BUDGET), else inverse_sqrt."""
    pairs = math.inf if train_pairs is None else train_pairs
    _, dropout, vocab_size = next((row for row in CORPUS_SIZE_RECIPE if pairs < row[0]), CORPUS_SIZE_RECIPE[-1])
    builtin = cfg.dataset == "builtin" and not cfg.data_files
    epochs = cfg.num_epochs or (UNTIL_THE_BUDGET if cfg.max_time else DEFAULT_EPOCHS)
    long_run = max_time_seconds(cfg) > LONG_RUN_SECONDS if cfg.max_time else epochs > LONG_RUN_EPOCHS
    short_cpu = device_type == "cpu" and cfg.max_time is not None and not long_run
    if builtin or not long_run:
        dropout = BUILTIN_DROPOUT if builtin else 0.1
    if short_cpu and not builtin and max_time_seconds(cfg) <= NO_DROPOUT_CPU_SECONDS:
        dropout = 0.0
    num_layers, d_ff = MODEL_SHAPE["short_cpu" if short_cpu else "otherwise"]
    chosen = {"num_epochs": epochs, "batch_size": BATCH_SIZE_BY_DEVICE.get(device_type, 64),
              "share_vocab": not builtin, "dropout": dropout, "vocab_size": vocab_size, "num_layers": num_layers,
              "d_ff": d_ff, "lr_schedule": SCHEDULE_FOR_A_BUDGET if cfg.max_time else "inverse_sqrt"}
    unset = [name for name in chosen if getattr(cfg, name) is None]
    resolved = dataclasses.replace(cfg, **{name: chosen[name] for name in unset})
    size = f"{train_pairs:,} training pairs" if train_pairs is not None else "a stream of unknown size"
    shown = [f"--{name} {'until --max_time' if chosen[name] == UNTIL_THE_BUDGET else chosen[name]}" for name in unset]
    note = (f"{', '.join(shown)} (for {size}, a {'long' if long_run else 'short'} run, on {device_type})"
            if shown else "")
    return resolved, note


# A GPU needs thousands of tokens per step to be busy: 16k per GPU for Transformer-base (d_model 512, 6 layers), more
# for smaller networks (as many more as each token costs less), but never so many that an epoch of the corpus has
# fewer than MIN_STEPS_PER_EPOCH optimizer steps: a small corpus (the quick start's) keeps the updates it learns from.
GPU_TOKENS_FOR_BASE = 16384
GPU_MAX_TOKENS = 65536
MIN_STEPS_PER_EPOCH = 300


def gpu_token_budget(cfg: Config, given: Config, train_tokens: int, world_size: int) -> tuple[Config, str]:
    """For a CUDA run whose user (`given`: the settings as given) set neither --batch_size nor --max_tokens: `cfg`
    with a --max_tokens by model size and corpus size (`train_tokens`: the padded tokens of an epoch, the longer
    side of each pair), and a line saying so. Deterministic, so every rank chooses the same."""
    if given.batch_size is not None or given.max_tokens is not None or cfg.streaming:
        return cfg, ""
    by_model = GPU_TOKENS_FOR_BASE * (512 * 6) // (cfg.d_model * cfg.num_layers)
    by_corpus = train_tokens // (world_size * MIN_STEPS_PER_EPOCH)
    tokens = max(cfg.seq_len, min(by_model, by_corpus, GPU_MAX_TOKENS) // 128 * 128)
    note = (f"--max_tokens {tokens} (GPU: {by_model} for this model size, at most {by_corpus} for "
            f"{MIN_STEPS_PER_EPOCH} steps per epoch of {train_tokens:,} tokens on {world_size} ranks)")
    return dataclasses.replace(cfg, max_tokens=tokens), note


def to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


def model_config(cfg: Config, src_vocab_size: int, tgt_vocab_size: int, pad_id: int,
                 dropout: float | None = None) -> ModelConfig:
    """The network the settings describe, for these vocabularies (dropout overridden for inference)."""
    return ModelConfig(src_vocab_size=src_vocab_size, tgt_vocab_size=tgt_vocab_size, d_model=cfg.d_model,
                       num_heads=cfg.num_heads, num_layers=cfg.num_layers, d_ff=cfg.d_ff,
                       dropout=cfg.dropout if dropout is None else dropout, max_len=cfg.seq_len, pad_id=pad_id,
                       tie_embeddings=cfg.tie_embeddings, share_embeddings=cfg.share_vocab)
