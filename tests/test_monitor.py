import json

import pytest

from config import parse_config
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
