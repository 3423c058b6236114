import json

import pytest
import torch

from config import parse_config
from helpers import TINY_MODEL
from monitor import RunMonitor, resolve_wandb_mode


def test_auto_mode_is_offline_without_a_key_and_says_so(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    mode, note = resolve_wandb_mode("auto")
    assert mode == "offline" and "wandb sync" in note


def test_auto_mode_follows_the_wandb_mode_environment_variable(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    for mode in ("disabled", "offline", "online"):
        monkeypatch.setenv("WANDB_MODE", mode)
        assert resolve_wandb_mode("auto") == (mode, None)


def test_auto_mode_is_online_with_an_api_key_or_a_wandb_login(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_wandb_mode("auto") == ("online", None)
    monkeypatch.delenv("WANDB_API_KEY")
    netrc = tmp_path / "netrc"
    netrc.write_text("machine api.wandb.ai\n  login user\n  password " + "y" * 40 + "\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    assert resolve_wandb_mode("auto") == ("online", None)


@pytest.mark.parametrize("mode", ["online", "offline", "disabled"])
def test_explicit_modes_are_kept(mode):
    assert resolve_wandb_mode(mode) == (mode, None)


def test_metrics_jsonl_on_main_rank_only(tmp_path):
    cfg = parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "disabled"])
    main = RunMonitor(cfg, enabled=True, run_id="abc")
    other = RunMonitor(cfg, enabled=False, run_id="abc")
    main.log(3, {"train/loss": 1.5})
    other.log(3, {"train/loss": 9.9})
    main.close()
    other.close()
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 1 and lines[0]["step"] == 3 and lines[0]["train/loss"] == 1.5


class FakeWandbRun:
    """What RunMonitor asks of a W&B run, recorded."""

    def __init__(self, **settings):
        self.settings, self.logged, self.summary, self.artifacts = settings, [], {}, []

    def log(self, metrics, step):
        self.logged.append(step)

    def log_artifact(self, artifact, aliases):
        self.artifacts.append((artifact, aliases))

    def finish(self):
        pass


@pytest.fixture
def fake_wandb(monkeypatch):
    import wandb

    runs = []
    monkeypatch.setattr(wandb, "init", lambda **settings: runs.append(FakeWandbRun(**settings)) or runs[-1])
    return runs


def test_a_restarted_run_logs_to_the_same_wandb_run_and_never_logs_a_step_twice(tmp_path, fake_wandb):
    cfg = parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "offline"])
    first = RunMonitor(cfg, enabled=True, run_id="first-id")
    for step in (2, 4, 6):  # preempted after logging step 6; its last checkpoint was step 4
        first.log(step, {"train/loss": 1.0})
    first.close()
    second = RunMonitor(cfg, enabled=True, run_id="new-id")  # a restart before any checkpoint makes a new id
    for step in (6, 8):  # step 6 is computed again after resuming from step 4
        second.log(step, {"train/loss": 1.0})
    second.log_summary({"test/bleu": 30.0})
    second.close()
    assert [run.settings["id"] for run in fake_wandb] == ["first-id", "first-id"] and second.run_id == "first-id"
    assert fake_wandb[0].logged == [2, 4, 6] and fake_wandb[1].logged == [8]
    steps = [json.loads(line).get("step") for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == [2, 4, 6, 8, None] and fake_wandb[1].summary == {"test/bleu": 30.0}


def test_wandb_takes_project_entity_and_folder_from_the_environment_unless_flags_say_otherwise(tmp_path, monkeypatch,
                                                                                             fake_wandb):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    RunMonitor(parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "offline"]), True, "a").close()
    RunMonitor(parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "offline", "--wandb_project", "flag",
                             "--wandb_entity", "team"]), True, "a").close()
    assert [(r.settings["project"], r.settings["entity"]) for r in fake_wandb] == [("from-env", None), ("flag", "team")]
    assert all(r.settings["dir"] == str(tmp_path / "wandb-dir") for r in fake_wandb)
    monkeypatch.delenv("WANDB_PROJECT")
    monkeypatch.delenv("WANDB_DIR")
    RunMonitor(parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "offline"]), True, "a").close()
    assert (fake_wandb[-1].settings["project"], fake_wandb[-1].settings["dir"]) == ("transformer-translation",
                                                                                     str(tmp_path))


def test_wandb_that_cannot_start_online_falls_back_to_offline_then_to_none_and_training_goes_on(tmp_path, monkeypatch,
                                                                                              capsys):
    import wandb

    modes = []

    def init(**settings):
        modes.append(settings["mode"])
        if len(modes) == 1 or settings["mode"] == "online":
            raise wandb.errors.CommError("Network error: api.wandb.ai unreachable")
        return FakeWandbRun(**settings)

    monkeypatch.setattr(wandb, "init", init)
    monitor = RunMonitor(parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "online"]), True, "a")
    assert modes == ["online", "offline"] and monitor.wandb_run is not None
    assert "trying offline" in capsys.readouterr().err
    modes.clear()
    monitor = RunMonitor(parse_config(["--model_folder", str(tmp_path), "--wandb_mode", "offline"]), True, "a")
    assert modes == ["offline"] and monitor.wandb_run is None  # the first attempt fails again: no W&B, no crash
    assert "training goes on without W&B" in capsys.readouterr().err
    monitor.log(1, {"train/loss": 1.0})
    monitor.close()


def test_a_run_puts_its_best_validation_in_the_summary_and_with_wandb_log_model_its_weights_in_an_artifact(
        tmp_path, toy_corpus, fake_wandb):
    import train

    train.main([*TINY_MODEL, "--data_files", toy_corpus, "--valid_size", "20", "--test_size", "20", "--max_steps", "6",
                "--eval_every", "3", "--save_every", "3", "--model_folder", str(tmp_path / "w"), "--wandb_mode",
                "offline", "--wandb_log_model"])
    (run,) = fake_wandb
    assert {"val/best_bleu", "val/best_chrf", "val/best_step", "test/bleu"} <= set(run.summary)
    (artifact, aliases), = run.artifacts
    names = set(artifact.manifest.entries)
    assert {"best.pt", "final.pt", "config.json", "tokenizer_en.json", "tokenizer_it.json"} <= names
    assert artifact.type == "model" and artifact.metadata["final_step"] == 6
    weights = torch.load(tmp_path / "w" / "weights_00000006.pt", weights_only=True)
    assert "optimizer" not in weights and weights["step"] == 6
