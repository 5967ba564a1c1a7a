"""Tensors between OIP gRPC messages and NumPy: typed contents, raw contents, and the
errors a client sees for each malformed tensor."""

from __future__ import annotations

import numpy as np
import pytest

from kilowatt.serve.errors import InvalidInput
from kilowatt.serve.grpc import grpc_predict_v2_pb2 as pb
from kilowatt.serve.grpc.tensors import decode_inputs, encode_outputs


def _request(*tensors: tuple[str, str, list[int]]) -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=shape)
    return request


def test_typed_contents_of_two_inputs_decode_by_name_with_their_dtypes() -> None:
    request = _request(("x", "FP32", [2, 2]), ("ids", "INT64", [2, 1]))
    request.inputs[0].contents.fp32_contents.extend([1.5, 2, 3, 4])
    request.inputs[1].contents.int64_contents.extend([7, 2**40])
    tensors = decode_inputs(request)
    assert isinstance(tensors, dict) and list(tensors) == ["x", "ids"]
    assert tensors["x"].dtype == np.float32 and tensors["x"].tolist() == [[1.5, 2], [3, 4]]
    assert tensors["ids"].dtype == np.int64 and tensors["ids"].tolist() == [[7], [2**40]]


def test_raw_contents_decode_little_endian_into_writable_arrays() -> None:
    request = _request(("x", "FP16", [1, 3]))
    request.raw_input_contents.append(np.array([1, 2, 3], dtype="<f2").tobytes())
    array = decode_inputs(request)
    assert isinstance(array, np.ndarray)
    assert (array.dtype, array.tolist(), array.flags.writeable) == (np.float16, [[1, 2, 3]], True)


@pytest.mark.parametrize(
    ("tensors", "raw", "message"),
    [
        # one raw blob for two inputs: they pair by position
        ([("a", "FP32", [1]), ("b", "FP32", [1])], [b"\0" * 4], "holds 1 tensors for 2 inputs"),
        # raw bytes that do not fill the shape
        ([("a", "FP32", [2])], [b"\0" * 4], r"4 raw bytes do not hold shape \[2\]"),
        # typed contents of the wrong count
        ([("a", "INT32", [3])], [], r"contents.int_contents holds 0 values but shape \[3\]"),
        # a datatype the server does not carry
        ([("a", "BYTES", [1])], [], "datatype 'BYTES' of input 'a' is not one of"),
        # FP16 has no typed field
        ([("a", "FP16", [1])], [], "FP16 travels as raw_input_contents only"),
        # no inputs at all
        ([], [], "the request has no inputs"),
    ],
)
def test_malformed_tensors_name_the_problem(
    tensors: list[tuple[str, str, list[int]]], raw: list[bytes], message: str
) -> None:
    request = _request(*tensors)
    request.raw_input_contents.extend(raw)
    with pytest.raises(InvalidInput, match=message):
        decode_inputs(request)


def test_outputs_are_raw_when_asked_and_typed_otherwise_in_the_order_requested() -> None:
    outputs = {"total": np.array([[3.0]], np.float32), "ids": np.array([[4]], np.int64)}
    typed = pb.ModelInferResponse()
    encode_outputs(outputs, typed, raw=False, requested=("ids", "total"))
    assert [o.name for o in typed.outputs] == ["ids", "total"]
    assert list(typed.outputs[0].contents.int64_contents) == [4]
    assert list(typed.outputs[1].contents.fp32_contents) == [3.0]
    raw = pb.ModelInferResponse()
    encode_outputs(outputs, raw, raw=True)
    assert [list(o.shape) for o in raw.outputs] == [[1, 1], [1, 1]]
    assert raw.raw_output_contents[1] == np.array([4], "<i8").tobytes()
    with pytest.raises(InvalidInput, match="no output"):
        encode_outputs(outputs, pb.ModelInferResponse(), raw=False, requested=("nope",))
