"""`kilowatt generate train` and `kilowatt generate serve` through the CLI."""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest
import torch

from kilowatt.catalog import load_catalog
from kilowatt.cli.generate_cmd import record_serving_calibration
from kilowatt.cli.main import main
from kilowatt.plan import load_calibration
from kilowatt.plan.calibration import serving_class
from kilowatt.serve.generate import SamplingParams, load_runner
from kilowatt.serve.generate.engine import GenerationEngine
from kilowatt.serve.process import ServerProcess

pytestmark = pytest.mark.e2e


def test_train_writes_a_servable_model_whose_serving_calibrates_the_planner(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "train", str(tmp_path / "tiny"), "--steps", "2"]) == 0
    assert "kilowatt generate serve" in capsys.readouterr().out
    engine = GenerationEngine(load_runner(tmp_path / "tiny", num_blocks=32, block_size=16))
    engine.start()
    try:
        answer = engine.generate("The grid", SamplingParams(max_tokens=5, temperature=0))
    finally:
        engine.close()
    assert answer.report.completion_tokens == 5
    assert engine.tokens_fed == 8 + 4  # the prompt, then each new token but the last
    mfu = record_serving_calibration(engine)
    peak = load_catalog().accelerator("cpu").peak_flops("fp32") * torch.get_num_threads()
    assert mfu == pytest.approx(engine.achieved_flops() / peak)
    recorded = load_calibration().entry("cpu", serving_class("transformer"))
    assert recorded is not None
    assert recorded.mfu == pytest.approx(mfu)
    # the prompt's 8 tokens were prefill, the 4 fed afterwards decode
    assert engine.prefill_tokens_fed == 8
    prefill_rate = engine.achieved_prefill_flops()
    assert prefill_rate is not None
    assert recorded.prefill_mfu == pytest.approx(prefill_rate / peak)
    assert "time to first token" in capsys.readouterr().out


def test_serve_refuses_a_folder_without_a_causal_lm(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["generate", "serve", str(tmp_path), "--no-meter"]) == 1
    err = capsys.readouterr().err
    assert "is not a causal language model folder" in err
    assert "kilowatt generate train" in err


def test_serve_binds_its_own_port_and_answers_there(tmp_path: Path) -> None:
    assert main(["generate", "train", str(tmp_path / "tiny"), "--steps", "2"]) == 0
    args = ["serve", str(tmp_path / "tiny"), "--name", "tiny", "--no-meter", "--no-calibrate"]
    with ServerProcess(args, program="generate", log_path=tmp_path / "serve.log") as server:
        port = int(server.endpoint.rsplit(":", 1)[1])
        listening = {
            c.laddr.port
            for c in psutil.Process(server.pid).net_connections("tcp")
            if c.status == psutil.CONN_LISTEN
        }
        body = {"model": "tiny", "prompt": "The grid", "max_tokens": 3, "temperature": 0}
        answer = httpx.post(f"{server.endpoint}/v1/completions", json=body, timeout=60)
    # --port 0: the server bound a free port itself, announced it, and answers there
    assert port != 0 and port in listening
    assert answer.status_code == 200
    assert answer.json()["usage"]["completion_tokens"] == 3
