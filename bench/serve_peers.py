"""The servers bench/serve.py measures: scripts for the naive FastAPI server (async and
threadpool variants), LitServe with batching and TorchServe with batching, and how each is
started. Every server answers ``POST /predict``-style JSON ``{"inputs": [256 floats]}``
with ``{"outputs": [10 floats]}``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field
from pathlib import Path

# An async endpoint: each forward pass runs on the event loop with every torch thread, one
# at a time (FastAPI's advice for code that does not block for long).
NAIVE_ASYNC = """
import sys
import torch
from fastapi import FastAPI
from pydantic import BaseModel
import uvicorn

model = torch.jit.load(sys.argv[1]).eval()
app = FastAPI()


class Request(BaseModel):
    inputs: list[float]


@app.get("/health")
async def health():
    return {"ok": True}


@app.post("/predict")
async def predict(request: Request):
    with torch.inference_mode():
        out = model(torch.tensor([request.inputs]))
    return {"outputs": out[0].tolist()}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False)
"""

# A sync endpoint in FastAPI's threadpool, one torch thread per call, so concurrent calls
# share the cores instead of each oversubscribing them (PyTorch's CPU threading advice).
NAIVE_THREADPOOL = """
import sys
import torch
from fastapi import FastAPI
from pydantic import BaseModel
import uvicorn

torch.set_num_threads(1)
model = torch.jit.load(sys.argv[1]).eval()
app = FastAPI()


class Request(BaseModel):
    inputs: list[float]


@app.get("/health")
def health():
    return {"ok": True}


@app.post("/predict")
def predict(request: Request):
    with torch.inference_mode():
        out = model(torch.tensor([request.inputs]))
    return {"outputs": out[0].tolist()}


uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
            access_log=False)
"""

LITSERVE = """
import sys
import torch
import litserve as ls


class MLP(ls.LitAPI):
    def setup(self, device):
        self.model = torch.jit.load(sys.argv[1]).eval()

    def decode_request(self, request):
        return torch.tensor(request["inputs"], dtype=torch.float32)

    def batch(self, inputs):
        return torch.stack(inputs)

    def predict(self, x):
        with torch.inference_mode():
            return self.model(x)

    def unbatch(self, output):
        return list(output)

    def encode_response(self, output):
        return {"outputs": output.tolist()}


if __name__ == "__main__":
    api = MLP(max_batch_size=64, batch_timeout=0.002)
    server = ls.LitServer(api, accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
               generate_client_file=False)
"""

# TorchServe's custom-handler contract: handle(data, context) gets the batch the frontend
# aggregated (up to batchSize requests or maxBatchDelay ms) and returns one answer each.
TORCHSERVE_HANDLER = """
import json
import os

import torch

_model = None


def handle(data, context):
    global _model
    if _model is None:
        torch.set_num_threads(os.cpu_count())
        model_dir = context.system_properties.get("model_dir")
        _model = torch.jit.load(os.path.join(model_dir, "mlp.pt")).eval()
    if data is None:
        return None
    rows = []
    for item in data:
        body = item.get("body") or item.get("data")
        if isinstance(body, (bytes, bytearray)):
            body = json.loads(body)
        rows.append(body["inputs"])
    with torch.inference_mode():
        out = _model(torch.tensor(rows, dtype=torch.float32))
    return [{"outputs": row} for row in out.tolist()]
"""

TORCHSERVE_INSTALL = (
    "python -m venv {venv} && "
    "echo {site} > {venv}/lib/python3.11/site-packages/kilowatt-shared.pth && "
    "echo torch=={torch} > {venv}/constraints.txt && "
    "{venv}/bin/pip install -c {venv}/constraints.txt torchserve==0.12.0 "
    "torch-model-archiver==0.12.0"
)


@dataclass
class Server:
    """How to start one server and where it answers."""

    name: str
    command: list[str]
    health: str
    predict: str
    env: dict[str, str] = field(default_factory=dict)


def write_scripts(work: Path) -> None:
    for name, text in (
        ("naive_async.py", NAIVE_ASYNC),
        ("naive_threadpool.py", NAIVE_THREADPOOL),
        ("litserve_server.py", LITSERVE),
    ):
        (work / name).write_text(textwrap.dedent(text))


def naive(kind: str, model_file: Path, port: int) -> Server:
    base = f"http://127.0.0.1:{port}"
    script = f"naive_{kind}.py"
    return Server(
        f"naive-{kind}",
        [sys.executable, script, str(model_file), str(port)],
        f"{base}/health",
        f"{base}/predict",
    )


def litserve(model_file: Path, port: int) -> Server:
    base = f"http://127.0.0.1:{port}"
    command = [sys.executable, "litserve_server.py", str(model_file), str(port)]
    return Server("litserve", command, f"{base}/health", f"{base}/predict")


def torchserve_venv(venv: Path) -> Path | None:
    """The venv holding TorchServe (created outside the repo on first use), or None."""
    if (venv / "bin" / "torchserve").exists():
        return venv
    import site

    import torch

    command = TORCHSERVE_INSTALL.format(
        venv=venv, site=site.getsitepackages()[0], torch=torch.__version__.split("+")[0]
    )
    print(f"installing TorchServe: {command}", flush=True)
    venv.parent.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(command, shell=True, capture_output=True, text=True)
    if done.returncode != 0:
        print(f"TorchServe could not be installed: {done.stderr[-500:]}", file=sys.stderr)
        return None
    return venv


def torchserve(venv: Path, work: Path, model_file: Path, ports: tuple[int, int, int]) -> Server:
    """Archive the model with its handler and configure TorchServe's batching."""
    store = work / "model_store"
    store.mkdir(exist_ok=True)
    (work / "ts_handler.py").write_text(textwrap.dedent(TORCHSERVE_HANDLER))
    if not (store / "mlp.mar").exists():
        subprocess.run(
            [str(venv / "bin" / "torch-model-archiver"), "--model-name", "mlp",
             "--version", "1.0", "--serialized-file", str(model_file),
             "--handler", str(work / "ts_handler.py"), "--export-path", str(store)],
            check=True,
        )  # fmt: skip
    inference, management, metrics = ports
    # batchSize/maxBatchDelay as the batch-inference guide documents them, matched to the
    # other batching servers (64 requests, 2 ms); one worker with every core, as kilowatt.
    models = {
        "mlp": {
            "1.0": {
                "defaultVersion": True, "marName": "mlp.mar", "minWorkers": 1,
                "maxWorkers": 1, "batchSize": 64, "maxBatchDelay": 2, "responseTimeout": 120,
            }
        }
    }  # fmt: skip
    config = work / "ts_config.properties"
    config.write_text(
        f"inference_address=http://127.0.0.1:{inference}\n"
        f"management_address=http://127.0.0.1:{management}\n"
        f"metrics_address=http://127.0.0.1:{metrics}\n"
        "disable_token_authorization=true\n"
        "install_py_dep_per_model=false\n"
        "job_queue_size=1000\n"
        f"models={json.dumps(models)}\n"
        "load_models=mlp.mar\n"
    )
    base = f"http://127.0.0.1:{inference}"
    command = [
        str(venv / "bin" / "torchserve"), "--start", "--foreground", "--ncs",
        "--model-store", str(store), "--ts-config", str(config), "--disable-token-auth",
    ]  # fmt: skip
    return Server("torchserve", command, f"{base}/ping", f"{base}/predictions/mlp")
