"""--device and --precision: what auto chooses, what is refused, and what a run records."""

import os

import pytest
import torch

from seq2seq import devices
from seq2seq.chatbot import make_chat_parser
from seq2seq.checkpoint import load_checkpoint
from seq2seq.evaluation import make_parser as make_evaluation_parser
from seq2seq.run import main as train_main


@pytest.mark.parametrize("native, chosen", [(True, "bf16"), (False, "fp32")])
def test_auto_picks_bf16_only_where_the_cpu_runs_it_natively(monkeypatch, native, chosen):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    precision, why = devices.resolve_precision("auto", torch.device("cpu"))
    assert precision == chosen and why.startswith("auto: ")


def test_explicit_precisions_are_kept_or_refused_in_one_line():
    cpu = torch.device("cpu")
    assert devices.resolve_precision("fp32", cpu) == ("fp32", "as asked")
    assert devices.resolve_precision("bf16", cpu) == ("bf16", "as asked")
    with pytest.raises(devices.DeviceError, match="fp16 needs CUDA"):
        devices.resolve_precision("fp16", cpu)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer of a machine without CUDA")
def test_a_missing_device_is_refused_in_one_line():
    with pytest.raises(devices.DeviceError, match="no CUDA device"):
        devices.resolve_device("cuda")


def test_the_gru_probe_sees_the_dtype_the_gru_really_runs_in():
    assert devices.gru_runs_in(torch.bfloat16, torch.device("cpu"))  # the model's GRU casts itself


def test_train_says_what_auto_chose_first_and_records_the_choice(pair_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: False)
    train_main(["--hidden-size", "8", "--encoder-layers", "1", "--decoder-layers", "1", "--batch-size", "4",
                "--iterations", "2", "--device", "cpu", "--data-dir", str(pair_dir), "--save-dir", str(tmp_path)])  # fmt: skip
    first = capsys.readouterr().err.splitlines()[0]
    assert first.startswith("cpu, fp32 (auto: this CPU has no native bf16")
    assert load_checkpoint(tmp_path / "last.pth")["config"]["machine"]["precision"] == "fp32"  # not "auto"


def test_chat_follows_the_hardware_and_evaluation_stays_in_fp32_by_default():
    assert make_chat_parser().parse_args([]).precision == "auto"
    assert make_evaluation_parser().parse_args([]).precision == "fp32"


def test_huge_pages_are_asked_for_unless_the_environment_says_otherwise(monkeypatch):
    monkeypatch.delenv("THP_MEM_ALLOC_ENABLE", raising=False)
    devices.huge_pages_for_tensors()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "1"
    monkeypatch.setenv("THP_MEM_ALLOC_ENABLE", "0")
    devices.huge_pages_for_tensors()
    assert os.environ["THP_MEM_ALLOC_ENABLE"] == "0"
