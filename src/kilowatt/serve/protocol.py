"""Request and response bodies: the plain ``/predict`` JSON and the Open Inference Protocol.

Parsing is hand-written over ``orjson`` rather than pydantic models: the hot path decodes
thousands of bodies a second and validation here is a handful of checks. Every malformed
body raises ``InvalidInput`` naming what is wrong.

OIP (KServe v2) JSON tensors look like::

    {"inputs": [{"name": "input0", "shape": [1, 256], "datatype": "FP32", "data": [...]}]}

A model with several inputs takes one tensor per input name; ``/predict`` takes them as
``{"inputs": {"a": [...], "b": [...]}}``.

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
    "Tensors",
    "decode_oip",
    "decode_predict",
    "encode_oip",
    "encode_predict",
    "named_outputs",
    "select_outputs",
]


#: A request's input: one tensor, or tensors by input name for a model with several.
Tensors = np.ndarray | dict[str, np.ndarray]


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: the input tensor(s) and how the answer should be encoded.

    Attributes:
        rows: one tensor, or several by name when the request names more than one.
        outputs: names of the outputs asked for; empty means every output.
    """

    rows: Tensors
    request_id: str | None = None
    binary_output: bool = False
    model: str | None = None
    outputs: tuple[str, ...] = ()


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


def decode_predict(
    body: bytes, dtype: np.dtype[Any], named: dict[str, np.dtype[Any]] | None = None
) -> InferRequest:
    """``{"inputs": [...]}`` (one sample or a list of samples) -> the input tensor.

    ``{"inputs": {"name": [...], ...}}`` gives one tensor per input name, read with the
    dtype ``named`` gives that name (``dtype`` for names it does not list).
    """
    doc = _loads(body)
    if not isinstance(doc, dict) or "inputs" not in doc:
        raise InvalidInput('the body must be a JSON object with an "inputs" field')
    model = doc.get("model")
    if model is not None and not isinstance(model, str):
        raise InvalidInput('"model" must be a string naming a served model')
    inputs = doc["inputs"]
    if isinstance(inputs, dict):
        if not inputs:
            raise InvalidInput('"inputs" names no tensor; give one list per model input')
        dtypes = named or {}
        rows: Tensors = {
            str(k): _array(v, dtypes.get(str(k), dtype), f'"inputs.{k}"') for k, v in inputs.items()
        }
    else:
        rows = _array(inputs, dtype, '"inputs"')
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


def decode_oip(body: bytes, header_length: int | None) -> InferRequest:
    """An OIP inference request (JSON or binary extension) -> the input tensor(s).

    One input comes back as an array (a model with one input accepts any input name);
    several come back as a dict by name, in the order sent.
    """
    doc, tail = _oip_header(body, header_length)
    if not isinstance(doc, dict):
        raise InvalidInput("the inference request must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs or not all(isinstance(i, dict) for i in inputs):
        raise InvalidInput('"inputs" must be a non-empty list of tensor objects')
    tensors: dict[str, np.ndarray] = {}
    offset = 0
    for index, tensor in enumerate(inputs):
        name = str(tensor.get("name", f"input{index}"))
        if name in tensors:
            raise InvalidInput(f"input {name!r} is sent twice; send each input once")
        shape, dtype = _shape_and_dtype(tensor.get("shape"), tensor.get("datatype"), name)
        tensors[name], offset = _tensor_rows(tensor, shape, dtype, tail, offset)
    return InferRequest(
        rows=next(iter(tensors.values())) if len(tensors) == 1 else tensors,
        request_id=str(doc["id"]) if "id" in doc else None,
        binary_output=_wants_binary(doc),
        outputs=_requested_outputs(doc),
    )


def _shape_and_dtype(shape: Any, datatype: Any, name: str) -> tuple[list[int], np.dtype[Any]]:
    if not isinstance(shape, list) or not all(isinstance(d, int) and d >= 0 for d in shape):
        raise InvalidInput(f'"shape" of input {name!r} must be a list of non-negative integers')
    if not isinstance(datatype, str) or datatype.upper() not in DTYPES:
        raise InvalidInput(
            f'"datatype" {datatype!r} of input {name!r} is not one of {", ".join(DTYPES)}'
        )
    return shape, DTYPES[datatype.upper()]


def _tensor_rows(
    tensor: dict[str, Any], shape: list[int], dtype: np.dtype[Any], tail: bytes, offset: int
) -> tuple[np.ndarray, int]:
    count = int(np.prod(shape)) if shape else 1
    size = (tensor.get("parameters") or {}).get("binary_data_size")
    if size is not None:
        if size != count * dtype.itemsize or offset + size > len(tail):
            raise InvalidInput(
                f"binary_data_size {size} does not match shape {shape} of {dtype.name} "
                f"({count * dtype.itemsize} bytes) or the {len(tail) - offset} bytes left"
            )
        # A private, writable copy: torch refuses to wrap read-only buffers safely.
        blob = tail[offset : offset + size]
        return np.frombuffer(blob, dtype=dtype).reshape(shape).copy(), offset + size
    if "data" not in tensor:
        raise InvalidInput('the input tensor has no "data" (nor binary_data_size)')
    flat = _array(tensor["data"], dtype, '"data"').reshape(-1)
    if flat.size != count:
        raise InvalidInput(f'"data" holds {flat.size} values but shape {shape} needs {count}')
    return flat.reshape(shape), offset


def _requested_outputs(doc: dict[str, Any]) -> tuple[str, ...]:
    requested = doc.get("outputs") or []
    if not isinstance(requested, list):
        raise InvalidInput('"outputs" must be a list of {"name": ...} objects')
    return tuple(str(o["name"]) for o in requested if isinstance(o, dict) and "name" in o)


def _wants_binary(doc: dict[str, Any]) -> bool:
    if (doc.get("parameters") or {}).get("binary_data_output"):
        return True
    requested = doc.get("outputs") or []
    return any(
        (o.get("parameters") or {}).get("binary_data") for o in requested if isinstance(o, dict)
    )


def encode_oip(
    outputs: Any,
    model: str,
    version: str,
    request_id: str | None,
    binary: bool,
    requested: tuple[str, ...] = (),
) -> tuple[bytes, int | None]:
    """The OIP response body, and the JSON header length when tensors go as binary."""
    named = select_outputs(named_outputs(outputs), requested)
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


def named_outputs(outputs: Any) -> list[tuple[str, np.ndarray]]:
    """A model's outputs as (name, array) pairs: dict keys, else ``output0``, ``output1``..."""
    if isinstance(outputs, dict):
        return [(str(k), np.ascontiguousarray(v)) for k, v in outputs.items()]
    if isinstance(outputs, tuple | list):
        return [(f"output{i}", np.ascontiguousarray(v)) for i, v in enumerate(outputs)]
    return [("output0", np.ascontiguousarray(outputs))]


def select_outputs(
    named: list[tuple[str, np.ndarray]], requested: tuple[str, ...]
) -> list[tuple[str, np.ndarray]]:
    """The outputs a request asked for, in the order asked; all of them when none named."""
    if not requested:
        return named
    by_name = dict(named)
    unknown = [name for name in requested if name not in by_name]
    if unknown:
        raise InvalidInput(
            f"the model has no output(s) {', '.join(map(repr, unknown))}; "
            f"its outputs: {', '.join(by_name)}"
        )
    return [(name, by_name[name]) for name in requested]
