"""S3-compatible object storage (AWS S3, SeaweedFS, MinIO, R2 ...) through boto3.

Keys map to ``<s3_prefix><key>`` in one bucket. Every write is one PutObject (or a multipart
upload, which S3 makes visible only once complete), so a reader never sees half a file, as with
the local storage. Content is served either by a 302 to a presigned link (``content_serving =
"redirect"``, the default: the bytes never pass through the API) or streamed through the API
with Range (``"proxy"``: for buckets that clients cannot reach).

boto3 errors are turned into ``OSError`` (``FileNotFoundError`` for a missing key) so callers
handle both storages the same way.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from .base import Redirect, Storage, Stream

log = logging.getLogger("opendance.storage.s3")

CHUNK = 1024 * 1024


@contextmanager
def _os_errors(op: str, key: str) -> Iterator[None]:
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        yield
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code in ("404", "NoSuchKey", "NotFound"):
            raise FileNotFoundError(key) from None
        raise OSError(f"S3 {op} {key}: {code or exc}") from exc
    except BotoCoreError as exc:
        raise OSError(f"S3 {op} {key}: {exc}") from exc


class S3Storage(Storage):
    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str | None = None,
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        addressing_style: str = "auto",
        serving: str = "redirect",
        presign_seconds: int = 3600,
        create_bucket: bool = False,
    ) -> None:
        if serving not in ("redirect", "proxy"):
            raise ValueError(f"serving must be 'redirect' or 'proxy', not {serving!r}")
        self.bucket = bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.serving = serving
        self.presign_seconds = presign_seconds
        self.client = self._client(endpoint_url, region, access_key_id, secret_access_key, addressing_style)
        # Presigned links name the host clients use, which may differ from the servers' one.
        self.presigner = (
            self._client(public_endpoint_url, region, access_key_id, secret_access_key, addressing_style)
            if public_endpoint_url
            else self.client
        )
        if create_bucket:
            self._ensure_bucket(region)

    @classmethod
    def from_settings(cls, settings: Any) -> S3Storage:
        if not settings.s3_bucket:
            raise ValueError("storage = s3 needs OPENDANCE_S3_BUCKET")
        secret = settings.s3_secret_access_key
        return cls(
            settings.s3_bucket,
            prefix=settings.s3_prefix,
            endpoint_url=settings.s3_endpoint_url,
            public_endpoint_url=settings.s3_public_endpoint_url,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id,
            secret_access_key=secret.get_secret_value() if secret is not None else None,
            addressing_style=settings.s3_addressing_style,
            serving=settings.content_serving,
            presign_seconds=settings.s3_presign_seconds,
            create_bucket=settings.s3_create_bucket,
        )

    @staticmethod
    def _client(endpoint_url, region, access_key_id, secret_access_key, addressing_style):
        import boto3
        from botocore.config import Config

        config = Config(
            s3={"addressing_style": addressing_style},
            signature_version="s3v4",
            retries={"max_attempts": 5, "mode": "standard"},
            connect_timeout=10,
            read_timeout=60,
            max_pool_connections=32,
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            aws_access_key_id=access_key_id,
            aws_secret_access_key=secret_access_key,
            config=config,
        )

    def _ensure_bucket(self, region: str | None) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client.head_bucket(Bucket=self.bucket)
        except ClientError:
            args: dict[str, Any] = {"Bucket": self.bucket}
            if region and region != "us-east-1":
                args["CreateBucketConfiguration"] = {"LocationConstraint": region}
            with _os_errors("CreateBucket", self.bucket):
                self.client.create_bucket(**args)
            log.info("created bucket %s", self.bucket)

    def _key(self, key: str) -> str:
        parts = PurePosixPath(key).parts
        if not key or key.startswith("/") or ".." in parts:
            raise ValueError(f"bad storage key: {key!r}")
        return self.prefix + key

    # -- the interface -------------------------------------------------------------------

    def put_file(self, key: str, path: Path, content_type: str) -> None:
        with _os_errors("upload", key):
            self.client.upload_file(str(path), self.bucket, self._key(key), ExtraArgs={"ContentType": content_type})

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        with _os_errors("PutObject", key):
            self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        with _os_errors("GetObject", key):
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    @contextmanager
    def local_path(self, key: str) -> Iterator[Path]:
        with tempfile.TemporaryDirectory(prefix="opendance-s3-") as tmp:
            path = Path(tmp) / PurePosixPath(key).name
            with _os_errors("download", key):
                self.client.download_file(self.bucket, self._key(key), str(path))
            yield path

    def exists(self, key: str) -> bool:
        try:
            self._head(key)
        except FileNotFoundError:
            return False
        return True

    def _head(self, key: str) -> dict[str, Any]:
        with _os_errors("HeadObject", key):
            return self.client.head_object(Bucket=self.bucket, Key=self._key(key))

    def delete_prefix(self, prefix: str) -> None:
        """Delete the key ``prefix`` itself and everything under ``prefix/`` (never a sibling
        such as ``prefixed``: the local storage deletes a file or a folder the same way)."""
        base = self._key(prefix.rstrip("/"))
        paginator = self.client.get_paginator("list_objects_v2")
        with _os_errors("delete", prefix):
            for page in paginator.paginate(Bucket=self.bucket, Prefix=base):
                keys = [o["Key"] for o in page.get("Contents", []) if o["Key"] == base or o["Key"].startswith(base + "/")]
                if keys:  # at most 1000 per page, as DeleteObjects allows
                    self.client.delete_objects(Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True})

    def locate(self, key: str) -> Redirect | Stream | None:
        try:
            head = self._head(key)
        except FileNotFoundError:
            return None
        if self.serving == "redirect":
            url = self.presigner.generate_presigned_url(
                "get_object", Params={"Bucket": self.bucket, "Key": self._key(key)}, ExpiresIn=self.presign_seconds
            )
            return Redirect(url)
        return Stream(
            size=int(head["ContentLength"]), read=lambda first, last: self._read(key, first, last), etag=head.get("ETag")
        )

    def _read(self, key: str, first: int, last: int) -> Iterator[bytes]:
        with _os_errors("GetObject", key):
            body = self.client.get_object(Bucket=self.bucket, Key=self._key(key), Range=f"bytes={first}-{last}")["Body"]
        with contextlib.closing(body):
            yield from body.iter_chunks(CHUNK)

    def check_writable(self) -> None:
        self.put_bytes(".readyz", b"ok", "text/plain")
