"""The start-up check that this torch build has kernels for the GPU, with the GPU and the build mocked."""

import os

import pytest
import torch

import distributed
import runtime
import train
from errors import UserError

# torch.cuda.get_arch_list() of the PyPI build (CUDA 13) and of the CUDA 12.6 build.
CUDA13_BUILD = ["sm_75", "sm_80", "sm_86", "sm_90", "sm_100", "sm_120", "compute_120"]
CUDA126_BUILD = ["sm_50", "sm_60", "sm_70", "sm_75", "sm_80", "sm_86", "sm_90"]


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


def fake_gpu(monkeypatch, capability, arch_list, name="Quadro P4000"):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    monkeypatch.setattr(torch.cuda, "get_arch_list", lambda: arch_list)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    touched = []  # anything that would run a kernel or join a process group
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: touched.append("set_device"))
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: touched.append("process group"))
    return touched


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
