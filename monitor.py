"""What the trainer tells its user: the log (one channel, rank-aware), and metrics in `metrics.jsonl` in the model
folder and in Weights & Biases, on global rank 0 only.

Every room logs through `logging.getLogger("translation")`; `setup_logging` decides where that goes: rank 0 at
INFO, the other ranks at WARNING (no line printed N times). W&B is imported lazily and never touches the network
in `offline` or `disabled` mode.
"""

import json
import logging
import netrc
import os
import sys
import time
import uuid

from config import Config, to_dict

log = logging.getLogger("translation")


class _LineHandler(logging.Handler):
    """Information to `stream` (sys.stdout unless told, looked up at each line, so captured output and tqdm's
    bars keep working), written through tqdm so that a progress bar is not torn; warnings and errors to stderr,
    with their level in front."""

    def __init__(self, stream=None):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        try:
            message = self.format(record)
            if record.levelno >= logging.WARNING:
                print(f"{record.levelname}: {message}", file=sys.stderr, flush=True)
            else:
                tqdm.write(message, file=self.stream or sys.stdout)
        except Exception:
            self.handleError(record)


def setup_logging(rank: int, stream=None) -> None:
    """The log of this process: rank 0 at INFO, others at WARNING; called again, it replaces its handler."""
    log.handlers.clear()
    log.addHandler(_LineHandler(stream))
    log.setLevel(logging.INFO if rank == 0 else logging.WARNING)
    log.propagate = False


WANDB_MODES = ("online", "offline", "disabled")


def resolve_wandb_mode(mode: str) -> tuple[str, str | None]:
    """(mode, note): `auto` follows a WANDB_MODE environment variable when one is set, is online when an API key is
    configured, else offline with a one-line note."""
    if mode != "auto":
        return mode, None
    if os.environ.get("WANDB_MODE") in WANDB_MODES:
        return os.environ["WANDB_MODE"], None
    if os.environ.get("WANDB_API_KEY") or _netrc_has_wandb_login():
        return "online", None
    return "offline", ("W&B: no API key found (WANDB_API_KEY or `wandb login`), logging offline; "
                       "upload later with `wandb sync`")


def _netrc_has_wandb_login() -> bool:
    try:
        path = os.environ.get("NETRC") or os.path.expanduser("~/.netrc")
        return os.path.exists(path) and netrc.netrc(path).authenticators("api.wandb.ai") is not None
    except (OSError, netrc.NetrcParseError):
        return False


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


class RunMonitor:
    """Writes metrics on the main rank and does nothing elsewhere, so callers need no rank checks."""

    def __init__(self, cfg: Config, enabled: bool, run_id: str):
        self.enabled = enabled
        self.run_id = run_id
        self.wandb_run = None
        self._metrics_file = None
        if not enabled:
            return
        self._metrics_file = open(os.path.join(cfg.model_folder, "metrics.jsonl"), "a", encoding="utf-8")
        mode, note = resolve_wandb_mode(cfg.wandb_mode)
        if note:
            log.info(note)
        if mode == "disabled":
            return
        if mode == "offline":
            os.environ["WANDB_MODE"] = "offline"
            os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # offline means no network at all
        import wandb

        self.wandb_run = wandb.init(project=cfg.wandb_project, group=cfg.wandb_group, name=cfg.wandb_run_name,
                                    id=run_id, resume="allow", mode=mode, dir=cfg.model_folder,
                                    config=to_dict(cfg))

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled:
            return
        self._write_line({"step": step}, metrics)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_summary(self, metrics: dict) -> None:
        """Final figures: a line of metrics.jsonl and the W&B run summary."""
        if not self.enabled:
            return
        self._write_line({"summary": True}, metrics)
        if self.wandb_run is not None:
            self.wandb_run.summary.update(metrics)

    def _write_line(self, head: dict, metrics: dict) -> None:
        self._metrics_file.write(json.dumps({**head, "time": round(time.time(), 3), **metrics}) + "\n")
        self._metrics_file.flush()

    def log_samples(self, step: int, rows: list[tuple[str, str, str]]) -> None:
        """A W&B table of (source, reference, hypothesis) sample translations."""
        if self.wandb_run is None:
            return
        import wandb

        table = wandb.Table(columns=["source", "reference", "hypothesis"], data=[list(r) for r in rows])
        self.wandb_run.log({"val/samples": table}, step=step)

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
