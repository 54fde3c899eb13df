"""S3 storage against a real SeaweedFS S3 gateway, and the API serving its content both ways:
a 302 to a presigned link, or proxied through the API with Range."""

from __future__ import annotations

import os
import secrets

import httpx
import pytest

from opendance.storage import Redirect, Stream
from opendance.storage.s3 import S3Storage
from opendance.testing.cluster import wait_until
from opendance.testing.server import LiveServer


def make(s3, prefix: str | None = None, **kw) -> S3Storage:
    return S3Storage(
        s3.bucket,
        prefix=prefix or f"unit-{secrets.token_hex(3)}/",
        endpoint_url=s3.endpoint,
        region="us-east-1",
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        addressing_style="path",
        **kw,
    )


def test_objects_round_trip(s3, tmp_path):
    st = make(s3)
    st.put_bytes("tasks/t1/inputs/a.png", b"png bytes", "image/png")
    assert st.get_bytes("tasks/t1/inputs/a.png") == b"png bytes"
    assert st.exists("tasks/t1/inputs/a.png") and not st.exists("tasks/t1/inputs/b.png")
    big = tmp_path / "big.mp4"
    big.write_bytes(os.urandom(9 * 1024 * 1024))  # over boto3's multipart threshold
    st.put_file("tasks/t1/video.mp4", big, "video/mp4")
    with st.local_path("tasks/t1/video.mp4") as local:
        assert local.read_bytes() == big.read_bytes() and local.name == "video.mp4"
    assert not local.exists()  # the downloaded copy goes with the context
    with pytest.raises(FileNotFoundError):
        st.get_bytes("tasks/t1/none")
    with pytest.raises(FileNotFoundError):
        with st.local_path("tasks/t1/none"):
            pass
    for bad in ("", "/abs", "tasks/../x"):
        with pytest.raises(ValueError):
            st.put_bytes(bad, b"x", "text/plain")
    st.check_writable()


def test_delete_prefix_spares_siblings_and_other_prefixes(s3):
    st, neighbour = make(s3), make(s3)
    for key in ("tasks/t1/video.mp4", "tasks/t1/checkpoints/state", "tasks/t10/video.mp4"):
        st.put_bytes(key, b"x", "application/octet-stream")
    neighbour.put_bytes("tasks/t1/video.mp4", b"theirs", "video/mp4")
    st.delete_prefix("tasks/t1/")
    assert not st.exists("tasks/t1/video.mp4") and not st.exists("tasks/t1/checkpoints/state")
    assert st.exists("tasks/t10/video.mp4")  # "tasks/t1" is not a prefix of it as a folder
    assert neighbour.get_bytes("tasks/t1/video.mp4") == b"theirs"  # another deployment's prefix
    st.delete_prefix("tasks/t10/video.mp4")  # a single key, as a local file
    assert not st.exists("tasks/t10/video.mp4")


def test_locate_redirect_and_stream(s3):
    data = os.urandom(200_000)
    st = make(s3)
    st.put_bytes("tasks/t2/video.mp4", data, "video/mp4")
    where = st.locate("tasks/t2/video.mp4")
    assert isinstance(where, Redirect)
    r = httpx.get(where.url, headers={"Range": "bytes=100-199"})
    assert r.status_code == 206 and r.content == data[100:200]
    assert httpx.get(where.url).content == data
    proxied = make(s3, prefix=st.prefix, serving="proxy").locate("tasks/t2/video.mp4")
    assert isinstance(proxied, Stream) and proxied.size == len(data)
    assert b"".join(proxied.read(1000, 1999)) == data[1000:2000]
    assert st.locate("tasks/t2/none.mp4") is None


def test_bucket_created_when_asked(s3):
    bucket = f"made-{secrets.token_hex(3)}"
    st = S3Storage(
        bucket,
        endpoint_url=s3.endpoint,
        region="us-east-1",
        access_key_id=s3.access_key,
        secret_access_key=s3.secret_key,
        addressing_style="path",
        create_bucket=True,
    )
    st.put_bytes("k", b"v", "text/plain")
    assert st.get_bytes("k") == b"v"


@pytest.fixture(scope="module")
def s3_server(s3, tmp_path_factory):
    """The embedded runner with S3 storage and proxied content: the API streams from S3."""
    env = {
        "OPENDANCE_STORAGE": "s3",
        "OPENDANCE_S3_BUCKET": s3.bucket,
        "OPENDANCE_S3_ENDPOINT_URL": s3.endpoint,
        "OPENDANCE_S3_PREFIX": f"api-{secrets.token_hex(3)}",
        "OPENDANCE_S3_REGION": "us-east-1",
        "OPENDANCE_S3_ACCESS_KEY_ID": s3.access_key,
        "OPENDANCE_S3_SECRET_ACCESS_KEY": s3.secret_key,
        "OPENDANCE_S3_ADDRESSING_STYLE": "path",
        "OPENDANCE_CONTENT_SERVING": "proxy",
    }
    with LiveServer(tmp_path_factory.mktemp("s3-api"), env=env) as server:
        yield server


def test_api_proxies_content_with_range(s3_server, s3):
    with s3_server.client() as c:
        tid = c.post("/v1/video/generations", json={"model": "jisudance2.0-fast-480p", "prompt": "from S3"}).json()["id"]
        wait_until(lambda: c.get(f"/v1/video/generations/{tid}").json()["status"] == "completed", 120, "completed")
        url = f"/v1/video/generations/{tid}/content"
        whole = c.get(url)
        assert whole.status_code == 200 and whole.headers["content-type"] == "video/mp4"
        assert whole.headers["accept-ranges"] == "bytes" and int(whole.headers["content-length"]) == len(whole.content)
        assert whole.content[4:8] == b"ftyp"
        size = len(whole.content)
        part = c.get(url, headers={"Range": "bytes=10-109"})
        assert part.status_code == 206 and part.content == whole.content[10:110]
        assert part.headers["content-range"] == f"bytes 10-109/{size}"
        tail = c.get(url, headers={"Range": "bytes=-50"})
        assert tail.status_code == 206 and tail.content == whole.content[-50:]
        open_end = c.get(url, headers={"Range": f"bytes={size - 10}-"})
        assert open_end.content == whole.content[-10:]
        past = c.get(url, headers={"Range": f"bytes={size}-"})
        assert past.status_code == 416 and past.headers["content-range"] == f"bytes */{size}"
        several = c.get(url, headers={"Range": "bytes=0-1,5-6"})
        assert several.status_code == 200 and several.content == whole.content  # allowed: the whole file
        stale = c.get(url, headers={"Range": "bytes=0-9", "If-Range": '"not-the-etag"'})
        assert stale.status_code == 200 and stale.content == whole.content
        # The bytes are S3's: the object under the configured prefix.
        prefix = s3_server.env["OPENDANCE_S3_PREFIX"]
        obj = s3.client().get_object(Bucket=s3.bucket, Key=f"{prefix}/tasks/{tid}/video.mp4")["Body"].read()
        assert obj == whole.content
