"""The start-up check that this torch build has kernels for the GPU, with the GPU and the build mocked."""

import os

import pytest
import torch

import distributed
import runtime
import train
from errors import UserError
from helpers import CUDA13_BUILD, CUDA126_BUILD, fake_gpu


@pytest.mark.parametrize("capability, arch_list, runs", [
    ((6, 1), CUDA13_BUILD, False),   # Quadro P4000/P5000 (Pascal)
    ((7, 0), CUDA13_BUILD, False),   # V100 (Volta)
    ((7, 5), CUDA13_BUILD, True),    # T4 (Turing)
    ((8, 9), CUDA13_BUILD, True),    # L4: sm_86's binary runs on later minors of 8
    ((12, 1), CUDA13_BUILD, True),
    ((6, 1), CUDA126_BUILD, True),
    ((7, 0), CUDA126_BUILD, True),
    ((10, 0), CUDA126_BUILD, False),  # a binary never runs on another major
    ((10, 0), ["sm_90", "compute_90"], True),  # ... but PTX is compiled by the driver for later GPUs
    ((8, 0), ["sm_90", "compute_90"], False),  # and never for earlier ones
    ((9, 0), ["sm_90a"], True),
    ((10, 0), ["sm_90a"], False),  # arch-specific binaries run on their own capability only
])
def test_which_builds_run_on_which_gpus(capability, arch_list, runs):
    assert runtime.runs_on(capability, arch_list) is runs


def test_an_unsupported_gpu_is_one_line_naming_it_and_the_install_command(monkeypatch):
    fake_gpu(monkeypatch, (6, 1), CUDA13_BUILD)
    with pytest.raises(UserError) as caught:
        runtime.check_gpu_supported(torch.device("cuda", 0))
    message = str(caught.value)
    assert "Quadro P4000 (compute capability 6.1) is not supported" in message and "\n" not in message
    assert runtime.OLD_GPU_INSTALL in message and "sm_75" in message
    fake_gpu(monkeypatch, (6, 1), CUDA126_BUILD)
    runtime.check_gpu_supported(torch.device("cuda", 0))
    runtime.check_gpu_supported(torch.device("cpu"))  # nothing to check on a CPU


@pytest.mark.parametrize("launched_by_torchrun", [False, True])
def test_every_rank_refuses_an_unsupported_gpu_before_any_kernel_or_collective(monkeypatch, launched_by_torchrun):
    touched = fake_gpu(monkeypatch, (7, 0), CUDA13_BUILD, name="Tesla V100-SXM2-16GB")
    if launched_by_torchrun:
        for key, value in {"RANK": "1", "LOCAL_RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": "1"}.items():
            monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="Tesla V100-SXM2-16GB .compute capability 7.0. is not supported"):
        distributed.init_distributed()
    assert touched == []


def test_train_py_on_an_unsupported_gpu_exits_with_one_line_and_writes_nothing(monkeypatch, tmp_path, capsys):
    fake_gpu(monkeypatch, (6, 1), CUDA13_BUILD)
    folder = tmp_path / "weights"
    with pytest.raises(SystemExit) as caught:
        train.main(["--model_folder", str(folder)])
    assert caught.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: Quadro P4000 (compute capability 6.1) is not supported") and len(err) == 1
    assert not os.path.exists(folder)


def test_a_gpu_that_torch_cannot_use_is_an_error_not_a_silent_cpu_run(monkeypatch, tmp_path):
    driver_file = tmp_path / "version"
    driver_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02  Thu May  2 14:37:44 UTC 2024\n")
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", str(driver_file))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    assert runtime.nvidia_driver_version() == "470.256.02"
    with pytest.raises(UserError) as refused:
        runtime.choose_device("auto")
    message = str(refused.value)
    assert "driver 470.256.02" in message and "CUDA 13.0" in message and "--device cpu" in message
    assert "\n" not in message and "cu126" in message
    assert runtime.choose_device("cpu") == torch.device("cpu")  # on purpose: no question asked
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", str(tmp_path / "none"))  # a machine without a GPU
    assert runtime.choose_device("auto") == torch.device("cpu")
    with pytest.raises(UserError, match="sees no CUDA GPU"):
        runtime.choose_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert runtime.choose_device("auto", local_rank=3) == torch.device("cuda", 3)


def test_train_stops_with_one_line_when_the_gpu_cannot_be_used(monkeypatch, tmp_path, capsys):
    driver_file = tmp_path / "version"
    driver_file.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02\n")
    monkeypatch.setattr(runtime, "NVIDIA_DRIVER_FILE", str(driver_file))
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    with pytest.raises(SystemExit) as stop:
        train.main(["--model_folder", str(tmp_path / "w")])
    assert stop.value.code == 2 and "driver 470.256.02" in capsys.readouterr().err
    assert not (tmp_path / "w").exists()
