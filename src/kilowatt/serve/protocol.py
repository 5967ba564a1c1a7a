"""Request and response bodies: the plain ``/predict`` JSON and the Open Inference Protocol.

Parsing is hand-written over ``orjson`` rather than pydantic models: the hot path decodes
thousands of bodies a second and validation here is a handful of checks. Every malformed
body raises ``InvalidInput`` naming what is wrong.

OIP (KServe v2) JSON tensors look like::

    {"inputs": [{"name": "input0", "shape": [1, 256], "datatype": "FP32", "data": [...]}]}

With the binary tensor data extension, the header ``Inference-Header-Content-Length: N``
says the first N bytes are that JSON and the rest are raw tensor bytes, one input after the
other, each sized by its ``parameters.binary_data_size``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from kilowatt.serve.errors import InvalidInput
from kilowatt.serve.handler import DTYPES, oip_dtype

__all__ = [
    "InferRequest",
    "decode_oip",
    "decode_predict",
    "encode_oip",
    "encode_predict",
]


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: the input tensor and how the answer should be encoded."""

    rows: np.ndarray
    request_id: str | None = None
    binary_output: bool = False
    model: str | None = None


def _loads(body: bytes) -> Any:
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidInput(f"the body is not valid JSON: {exc}") from None


def _array(data: Any, dtype: np.dtype[Any], what: str) -> np.ndarray:
    try:
        array = np.asarray(data, dtype=dtype)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            f"{what} cannot be read as a {oip_dtype(dtype)} tensor ({exc}); "
            "send numbers in nested lists of equal length"
        ) from None
    return array


def decode_predict(body: bytes, dtype: np.dtype[Any]) -> InferRequest:
    """``{"inputs": [...]}`` (one sample or a list of samples) -> the input tensor."""
    doc = _loads(body)
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise InvalidInput('the body must be a JSON object with an "inputs" field')
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInput('"model" must be a string naming a served model')
    rows = _array(doc["inputs"], dtype, '"inputs"')
    return InferRequest(rows=rows, model=model)


def encode_predict(outputs: Any) -> bytes:
    """``{"outputs": [...]}`` with the model's outputs as nested lists."""
    return orjson.dumps({"outputs": _plain(outputs)}, option=orjson.OPT_SERIALIZE_NUMPY)


def _plain(outputs: Any) -> Any:
    if isinstance(outputs, dict):
        return {str(k): _plain(v) for k, v in outputs.items()}
    if isinstance(outputs, tuple | list):
        return [_plain(v) for v in outputs]
    return np.ascontiguousarray(outputs)


def _oip_header(body: bytes, header_length: int | None) -> tuple[Any, bytes]:
    if header_length is None:
        return _loads(body), b""
    if header_length < 0 or header_length > len(body):
        raise InvalidInput(
            f"Inference-Header-Content-Length {header_length} is outside the body "
            f"of {len(body)} bytes"
        )
    return _loads(body[:header_length]), body[header_length:]


def decode_oip(body: bytes, header_length: int | None, expected: np.dtype[Any]) -> InferRequest:
    """An OIP inference request (JSON or binary extension) -> the input tensor.

    A model with one input accepts it under any input name.
    """
    doc, tail = _oip_header(body, header_length)
    if not isinstance(doc, dict):
        raise InvalidInput("the inference request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1 or not isinstance(inputs[0], dict):
        raise InvalidInput('"inputs" must be a list holding exactly one tensor object')
    tensor = inputs[0]
    shape = tensor.get("shape")
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput('"shape" must be a list of non-negative integers')
    datatype = tensor.get("datatype")
    if not isinstance(datatype, str) or datatype.upper() not in DTYPES:
        raise InvalidInput(f'"datatype" {datatype!r} is not one of {", ".join(DTYPES)}')
    dtype = DTYPES[datatype.upper()]
    rows = _tensor_rows(tensor, shape, dtype, tail)
    return InferRequest(
        rows=rows,
        request_id=str(doc["id"]) if "id" in doc else None,
        binary_output=_wants_binary(doc),
    )


def _tensor_rows(
    tensor: dict[str, Any], shape: list[int], dtype: np.dtype[Any], tail: bytes
) -> np.ndarray:
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or size > len(tail):
            raise InvalidInput(
                f"binary_data_size {size} does not match shape {shape} of {dtype.name} "
                f"({count * dtype.itemsize} bytes) or the {len(tail)} bytes sent"
            )
        # A private, writable copy: torch refuses to wrap read-only buffers safely.
        return np.frombuffer(tail[:size], dtype=dtype).reshape(shape).copy()
    if "data" not in tensor:
        raise InvalidInput('the input tensor has no "data" (nor binary_data_size)')
    flat = _array(tensor["data"], dtype, '"data"').reshape(-1)
    if flat.size != count:
        raise InvalidInput(f'"data" holds {flat.size} values but shape {shape} needs {count}')
    return flat.reshape(shape)


def _wants_binary(doc: dict[str, Any]) -> bool:
    if (doc.get("parameters") or {}).get("binary_data_output"):
        return True
    requested = doc.get("outputs") or []
    return any(
        (o.get("parameters") or {}).get("binary_data") for o in requested if isinstance(o, dict)
    )


def encode_oip(
    outputs: Any, model: str, version: str, request_id: str | None, binary: bool
) -> tuple[bytes, int | None]:
    """The OIP response body, and the JSON header length when tensors go as binary."""
    named = _named_outputs(outputs)
    tensors, blobs = [], []
    for name, array in named:
        entry: dict[str, Any] = {
            "name": name,
            "datatype": oip_dtype(array.dtype),
            "shape": list(array.shape),
        }
        if binary:
            blob = np.ascontiguousarray(array).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = array.reshape(-1)
        tensors.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": tensors}
    if request_id is not None:
        doc["id"] = request_id
    header = orjson.dumps(doc, option=orjson.OPT_SERIALIZE_NUMPY)
    if not binary:
        return header, None
    return header + b"".join(blobs), len(header)


def _named_outputs(outputs: Any) -> list[tuple[str, np.ndarray]]:
    if isinstance(outputs, dict):
        return [(str(k), np.ascontiguousarray(v)) for k, v in outputs.items()]
    if isinstance(outputs, tuple | list):
        return [(f"output{i}", np.ascontiguousarray(v)) for i, v in enumerate(outputs)]
    return [("output0", np.ascontiguousarray(outputs))]
