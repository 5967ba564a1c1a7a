"""Tensors between the gRPC messages of the Open Inference Protocol and NumPy.

An input travels either in its typed ``contents`` field (``fp32_contents`` for FP32, ...)
or, in the same position, as raw little-endian bytes in ``raw_input_contents``; the answer
uses raw bytes when the request did (as Triton's clients expect) and typed contents
otherwise.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from kilowatt.serve.errors import InvalidInput
from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
from kilowatt.serve.handler import DTYPES, oip_dtype
from kilowatt.serve.protocol import Tensors, named_outputs, select_outputs

__all__ = ["decode_inputs", "encode_outputs"]

# Which ``InferTensorContents`` field carries each datatype (FP16 has none: raw only).
_CONTENTS_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
}


def decode_inputs(request: pb.ModelInferRequest) -> Tensors:
    """The request's input tensors: one array, or a dict by name when there are several.

    Raises:
        InvalidInput: unknown datatype, raw contents that do not match the inputs or their
            shapes, typed contents of the wrong count.
    """
    if not request.inputs:
        raise InvalidInput("the request has no inputs; send one tensor per model input")
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise InvalidInput(
            f"raw_input_contents holds {len(raw)} tensors for {len(request.inputs)} inputs; "
            "send one raw blob per input, in the same order"
        )
    tensors: dict[str, np.ndarray] = {}
    for index, tensor in enumerate(request.inputs):
        if tensor.name in tensors:
            raise InvalidInput(f"input {tensor.name!r} is sent twice; send each input once")
        blob = raw[index] if raw else None
        tensors[tensor.name] = _decode_tensor(tensor, blob)
    return next(iter(tensors.values())) if len(tensors) == 1 else tensors


def _decode_tensor(tensor: Any, blob: bytes | None) -> np.ndarray:
    datatype = tensor.datatype.upper()
    if datatype not in DTYPES:
        raise InvalidInput(
            f"datatype {tensor.datatype!r} of input {tensor.name!r} is not one of "
            f"{', '.join(DTYPES)}"
        )
    dtype = DTYPES[datatype].newbyteorder("<")
    shape = tuple(int(d) for d in tensor.shape)
    if any(d < 0 for d in shape):
        raise InvalidInput(f"shape {list(shape)} of input {tensor.name!r} has a negative size")
    count = int(np.prod(shape)) if shape else 1
    if blob is not None:
        if len(blob) != count * dtype.itemsize:
            raise InvalidInput(
                f"input {tensor.name!r}: {len(blob)} raw bytes do not hold shape {list(shape)} "
                f"of {datatype} ({count * dtype.itemsize} bytes)"
            )
        # A private, writable, native-order copy: torch refuses read-only buffers.
        return np.frombuffer(blob, dtype=dtype).astype(DTYPES[datatype]).reshape(shape)
    field = _CONTENTS_FIELD.get(datatype)
    if field is None:
        raise InvalidInput(f"input {tensor.name!r}: {datatype} travels as raw_input_contents only")
    values = getattr(tensor.contents, field)
    if len(values) != count:
        raise InvalidInput(
            f"input {tensor.name!r}: contents.{field} holds {len(values)} values but shape "
            f"{list(shape)} needs {count}"
        )
    return np.asarray(values, dtype=DTYPES[datatype]).reshape(shape)


def encode_outputs(
    outputs: Any, response: pb.ModelInferResponse, raw: bool, requested: tuple[str, ...] = ()
) -> None:
    """Fill ``response`` with the model's outputs (those ``requested``, or all of them)."""
    selected = [
        (name, oip_dtype(array.dtype), array)
        for name, array in select_outputs(named_outputs(outputs), requested)
    ]
    # Raw blobs pair with outputs by position, so it is all raw or all typed; FP16 has no
    # typed field and makes the whole answer raw.
    raw = raw or any(datatype not in _CONTENTS_FIELD for _, datatype, _ in selected)
    for name, datatype, array in selected:
        tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
        if raw:
            little = array.astype(array.dtype.newbyteorder("<"), copy=False)
            response.raw_output_contents.append(np.ascontiguousarray(little).tobytes())
        else:
            getattr(tensor.contents, _CONTENTS_FIELD[datatype]).extend(array.reshape(-1).tolist())
