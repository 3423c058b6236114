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
DEFAULT_PROJECT = "transformer-translation"


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


RUN_ID_FILE = "wandb_run_id"  # in the model folder: every restart of a run logs to the same W&B run


def logged_through(metrics_path: str) -> int:
    """The last step a previous start of this run logged to metrics.jsonl (and W&B); -1 for none."""
    last = -1
    try:
        with open(metrics_path, encoding="utf-8") as f:
            for line in f:
                try:
                    last = max(last, json.loads(line).get("step", -1))
                except ValueError:
                    continue  # a line cut short by a crash
    except OSError:
        pass
    return last


def folder_run_id(folder: str, run_id: str) -> str:
    """The W&B run id kept in the model folder (written by the first start), else `run_id`, now kept there."""
    path = os.path.join(folder, RUN_ID_FILE)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or run_id
    with open(path, "w", encoding="utf-8") as f:
        f.write(run_id + "\n")
    return run_id


class RunMonitor:
    """Writes metrics on the main rank and does nothing elsewhere, so callers need no rank checks. One history per
    training run across any number of restarts: the W&B run id is kept in the model folder, and the steps a restart
    computes again (from its checkpoint up to where the previous start had logged) are not logged twice."""

    def __init__(self, cfg: Config, enabled: bool, run_id: str):
        self.enabled, self.run_id, self.cfg = enabled, run_id, cfg
        self.wandb_run = None
        self._metrics_file = None
        if not enabled:
            return
        path = os.path.join(cfg.model_folder, "metrics.jsonl")
        self.logged_before = logged_through(path)
        if self.logged_before >= 0:
            log.info(f"metrics of steps up to {self.logged_before} were logged before this start: not logged again")
        self._metrics_file = open(path, "a", encoding="utf-8")
        self.run_id = folder_run_id(cfg.model_folder, run_id)
        mode, note = resolve_wandb_mode(cfg.wandb_mode)
        if note:
            log.info(note)
        if mode != "disabled":
            self.wandb_run = self._start_wandb(mode)

    def _start_wandb(self, mode: str):
        """A W&B run (resumed when its id exists); offline with a warning if it cannot start online, and none with a
        warning if it cannot start at all: training never dies of its monitoring. WANDB_PROJECT, WANDB_ENTITY,
        WANDB_DIR and WANDB_BASE_URL are honoured where no flag says otherwise."""
        import wandb

        cfg = self.cfg
        for attempt in (mode, "offline") if mode == "online" else (mode,):
            if attempt == "offline":
                os.environ["WANDB_MODE"] = "offline"
                os.environ.setdefault("WANDB_ERROR_REPORTING", "false")  # offline means no network at all
            try:
                return wandb.init(project=cfg.wandb_project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                                  entity=cfg.wandb_entity, group=cfg.wandb_group, name=cfg.wandb_run_name,
                                  id=self.run_id, resume="allow", mode=attempt,
                                  dir=os.environ.get("WANDB_DIR") or cfg.model_folder, config=to_dict(cfg))
            except Exception as e:  # no network, no login, a server that refuses: W&B raises many kinds
                log.warning(f"W&B could not start {attempt} ({type(e).__name__}: {str(e).strip()[:200]}); "
                            f"{'trying offline' if attempt == 'online' else 'training goes on without W&B'}")
        return None

    def log(self, step: int, metrics: dict) -> None:
        if not self.enabled or step <= self.logged_before:
            return
        self._write_line({"step": step}, metrics)
        if self.wandb_run is not None:
            self.wandb_run.log(metrics, step=step)

    def log_summary(self, metrics: dict) -> None:
        """Figures of the whole run (the best validation, the test score): a line of metrics.jsonl and the W&B
        run summary."""
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
        if self.wandb_run is None or step <= self.logged_before:
            return
        import wandb

        table = wandb.Table(columns=["source", "reference", "hypothesis"], data=[list(r) for r in rows])
        self.wandb_run.log({"val/samples": table}, step=step)

    def log_model(self, files: dict[str, str], metadata: dict) -> None:
        """--wandb_log_model: `files` (name in the artifact: path) as one W&B model artifact of this run."""
        if self.wandb_run is None:
            return
        import wandb

        artifact = wandb.Artifact(f"model-{self.run_id}", type="model", metadata=metadata)
        for name, path in files.items():
            artifact.add_file(path, name=name)
        self.wandb_run.log_artifact(artifact, aliases=["latest", "best"])

    def close(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self.wandb_run is not None:
            self.wandb_run.finish()
            self.wandb_run = None
