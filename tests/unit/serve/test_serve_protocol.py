"""Decoding and encoding request bodies: /predict JSON, OIP JSON and the binary extension."""

from __future__ import annotations

import numpy as np
import orjson
import pytest

from kilowatt.serve.errors import InvalidInput
from kilowatt.serve.protocol import decode_oip, decode_predict, encode_oip, encode_predict

FP32 = np.dtype(np.float32)


def _oip(data: object, shape: list[int], datatype: str = "FP32", **extra: object) -> bytes:
    tensor = {"name": "anything", "shape": shape, "datatype": datatype, "data": data}
    return orjson.dumps({"inputs": [tensor], **extra})


def test_predict_body_one_sample_and_a_batch() -> None:
    assert decode_predict(b'{"inputs": [1, 2.5]}', FP32).rows.tolist() == [1.0, 2.5]
    batch = decode_predict(b'{"inputs": [[1, 2], [3, 4]], "model": "m"}', FP32)
    assert (batch.rows.shape, batch.model) == ((2, 2), "m")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),  # a syntax error
        (b"[1, 2]", 'JSON object with an "inputs" field'),  # no object
        (b'{"inputs": [[1, 2], [3]]}', "nested lists of equal length"),  # ragged
        (b'{"inputs": ["a", "b"]}', "cannot be read as a FP32 tensor"),  # not numbers
        (b'{"inputs": [1], "model": 3}', '"model" must be a string'),  # bad model field
    ],
)
def test_bad_predict_bodies_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_predict(body, FP32)


def test_oip_json_tensor_takes_any_input_name_and_reshapes() -> None:
    request = decode_oip(_oip([1, 2, 3, 4], [2, 2], id="r1"), None)
    assert request.rows.tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert (request.request_id, request.binary_output) == ("r1", False)


def test_oip_binary_extension_round_trip() -> None:
    values = np.arange(6, dtype=np.float32).reshape(2, 3)
    header = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "x",
                    "shape": [2, 3],
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": values.nbytes},
                }
            ],
            "parameters": {"binary_data_output": True},
        }
    )
    request = decode_oip(header + values.tobytes(), len(header))
    assert request.rows.tolist() == values.tolist() and request.binary_output
    body, json_length = encode_oip(request.rows * 2, "m", "1", None, binary=True)
    doc = orjson.loads(body[:json_length])
    out = np.frombuffer(body[json_length:], dtype=np.float32).reshape(doc["outputs"][0]["shape"])
    assert out.tolist() == (values * 2).tolist()
    assert doc["outputs"][0]["parameters"] == {"binary_data_size": 24}


def test_oip_json_response() -> None:
    body, json_length = encode_oip(np.array([[1.5, 2.0]], dtype=np.float32), "m", "3", "r", False)
    assert json_length is None
    assert orjson.loads(body) == {
        "model_name": "m",
        "model_version": "3",
        "id": "r",
        "outputs": [{"name": "output0", "datatype": "FP32", "shape": [1, 2], "data": [1.5, 2.0]}],
    }


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (_oip([1, 2], [3]), r'"data" holds 2 values but shape \[3\] needs 3'),  # short data
        (
            _oip([1], [1], datatype="FP8"),
            "'FP8' of input 'anything' is not one of",
        ),  # unknown datatype
        (_oip([1], [-1]), "non-negative integers"),  # negative dimension
        (b'{"inputs": []}', "non-empty list of tensor objects"),  # no tensor
        (b'{"inputs": [{"name": "x", "shape": [1], "datatype": "FP32"}]}', 'has no "data"'),
    ],
)
def test_bad_oip_bodies_say_what_is_wrong(body: bytes, message: str) -> None:
    with pytest.raises(InvalidInput, match=message):
        decode_oip(body, None)


def test_binary_header_length_outside_the_body_is_rejected() -> None:
    with pytest.raises(InvalidInput, match="outside the body of 2 bytes"):
        decode_oip(b"{}", 10)


def test_predict_response_is_plain_lists() -> None:
    assert orjson.loads(encode_predict(np.array([0.5, 1.0], dtype=np.float32))) == {
        "outputs": [0.5, 1.0]
    }
