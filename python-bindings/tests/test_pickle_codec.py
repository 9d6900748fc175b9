"""The `python-pickle` value codec (how Python results travel between processes), fed
its own encodings and damaged ones through the extension's `_encode_value` and
`_decode_value`: what a worker receives from the wire or reads back from a spill file."""

import pickle
import struct

import numpy as np
import pytest

import partita as pt
from partita import _partita

PREFIX = b"\x01" + struct.pack("<H", len(b"python-pickle")) + b"python-pickle"


def sample():
    rng = np.random.default_rng(3)
    return {
        "c": rng.normal(size=(30, 20)),
        "odd": np.arange(13, dtype=np.uint8),
        "readonly": np.frombuffer(np.arange(5.0).tobytes()),
        "text": "x",
    }


def assert_sample(got):
    want = sample()
    assert got.keys() == want.keys()
    for k, v in want.items():
        if isinstance(v, np.ndarray):
            np.testing.assert_array_equal(got[k], v)
            assert got[k].dtype == v.dtype, k
        else:
            assert got[k] == v


def oob_head(lengths, trailer):
    """An out-of-band head as the codec writes it (format byte 1, then the buffer list)."""
    out = PREFIX + b"\x01" + struct.pack("<I", len(lengths))
    out += b"".join(struct.pack("<Q", n) for n in lengths)
    return out + struct.pack("<Q", len(trailer)) + trailer


def test_values_round_trip_joined_and_split():
    head, body = _partita._encode_value(sample())
    assert head.startswith(PREFIX + b"\x01") and len(body) % 8 == 0 and len(body) >= 4800
    assert_sample(_partita._decode_value(head, body))  # as the wire delivers it
    assert_sample(_partita._decode_value(head + body))  # as a spill file holds it
    # Scalars and objects without buffers travel in band, with no body.
    for obj in (7, 2.5, "text", None, b"raw", [1, {"a": (2, 3)}]):
        head, body = _partita._encode_value(obj)
        assert body == b"" and head[len(PREFIX)] == 0
        assert _partita._decode_value(head) == obj


def test_arrays_are_sent_from_their_own_memory_and_arrive_writable():
    a = np.arange(1000, dtype=np.int64)
    head, body = _partita._encode_value(a)
    assert body == a.tobytes()
    got = _partita._decode_value(head, body)
    np.testing.assert_array_equal(got, a)
    assert got.flags.writeable
    # Not contiguous: the whole array is pickled in band.
    strided = np.arange(100.0).reshape(10, 10)[::2, ::3]
    head, body = _partita._encode_value(strided)
    assert body == b""
    np.testing.assert_array_equal(_partita._decode_value(head), strided)


def codec_error(match, head, body=None):
    with pytest.raises(pt.CodecError, match=match):
        _partita._decode_value(head, body)


def test_damaged_payloads_are_codec_errors_naming_the_fault():
    head, body = _partita._encode_value(sample())
    codec_error("malformed Python value: empty", PREFIX)
    codec_error("unknown format 7", PREFIX + b"\x07abc")
    codec_error("cannot unpickle a Python value", PREFIX + b"\x00not a pickle")
    # A valid pickle of something the receiver cannot load.
    codec_error("No module named 'no_such_module'", PREFIX + b"\x00cno_such_module\nf\n.")
    # Every cut through the out-of-band head is refused, joined or split.
    for cut in range(len(PREFIX) + 1, len(head)):
        codec_error("malformed Python value", head[:cut])
        codec_error("malformed Python value", head[:cut], body)
    # A body that disagrees with the head: short, long, or missing.
    codec_error("a body of", head, body[:-8])
    codec_error("a body of", head, body + bytes(8))
    codec_error("a body of", head + body[:-8])
    codec_error("a body of", head)
    # A split head with bytes after its pickle, and a body under an in-band head.
    codec_error("bytes after the pickle", head + b"xx", body)
    in_band, _ = _partita._encode_value(7)
    codec_error("a body without out-of-band buffers", in_band, bytes(8))
    # Lengths that cannot be: a huge buffer count with nothing behind it, lengths that
    # overflow when padded.
    codec_error("buffer lengths cut short", PREFIX + b"\x01" + struct.pack("<I", 2**32 - 1))
    codec_error("a body of", oob_head([2**64 - 1, 8], b"."), bytes(8))
    # A pickle whose buffers do not match the head's.
    trailer = pickle.dumps(np.arange(4.0), protocol=5, buffer_callback=lambda b: None)
    codec_error("cannot unpickle", oob_head([], trailer), None)
    # The codec goes on working afterwards.
    assert_sample(_partita._decode_value(head, body))
