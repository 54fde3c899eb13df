"""data: URIs: strict base64, the cap checked from the encoded length before decoding."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from opendance.errors import MediaError
from opendance.media.datauri import decode_data_uri, format_size
from opendance.testing.media import data_uri, image_bytes


def error(uri: str, param: str = "image", max_bytes: int = 1 << 20) -> MediaError:
    with pytest.raises(MediaError) as info:
        decode_data_uri(uri, param=param, max_bytes=max_bytes)
    assert info.value.param == param
    return info.value


def test_decodes_an_image():
    png = image_bytes(80, 80)
    assert decode_data_uri(data_uri(png, "image/png"), param="image", max_bytes=len(png)) == ("image/png", png)


def test_mime_parameters_and_case():
    mime, data = decode_data_uri("DATA:Image/PNG;name=a.png;BASE64,aGk=", param="image", max_bytes=10)
    assert (mime, data) == ("image/png", b"hi")
    assert decode_data_uri("data:;base64,aGk=", param="image", max_bytes=10) == ("text/plain", b"hi")


@pytest.mark.parametrize("uri", ["data:image/png,rawbytes", "data:image/png;charset=utf-8,abc", "data:image/png;base64"])
def test_base64_is_required(uri):
    assert error(uri).code == "invalid_data_uri"


@pytest.mark.parametrize("payload", ["aGk", "aG k=", "aGk=\n", "a-_k", "aGk=aGk=", "%2Bhi="])
def test_strict_base64(payload):
    err = error(f"data:image/png;base64,{payload}", param="images[3]")
    assert err.code == "invalid_data_uri" and "not valid base64" in err.message
    assert payload not in err.message


def test_size_is_refused_before_decoding():
    # Not even valid base64: refused for its size, which is known without decoding it.
    err = error("data:video/mp4;base64," + "!" * 4000, param="videos[0]", max_bytes=1024)
    assert err.code == "media_too_large" and err.message == "videos[0] is larger than 1 KiB"


def test_cap_boundary():
    exact = base64.b64encode(b"x" * 1000).decode()
    assert len(decode_data_uri(f"data:a/b;base64,{exact}", param="image", max_bytes=1000)[1]) == 1000
    assert error(f"data:a/b;base64,{exact}", max_bytes=999).code == "media_too_large"


def test_messages_do_not_repeat_the_uri():
    uri = data_uri(b"secret-bytes" * 50, "image/png")
    assert uri[22:60] not in error(uri, max_bytes=10).message
    assert "plain-secret" not in error("data:image/png,plain-secret").message


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=300))
def test_round_trip_and_exact_cap(data, cap):
    uri = data_uri(data, "application/octet-stream")
    if len(data) <= cap:
        assert decode_data_uri(uri, param="audios[1]", max_bytes=cap)[1] == data
    else:
        assert error(uri, param="audios[1]", max_bytes=cap).code == "media_too_large"


@pytest.mark.parametrize(
    "n, text", [(30 * 1024 * 1024, "30 MiB"), (1536, "1536 bytes"), (3 * 1024, "3 KiB"), (100, "100 bytes"), (0, "0 bytes")]
)
def test_format_size(n, text):
    assert format_size(n) == text
