"""Where videos, last frames and stored inputs live: a local directory or an S3 bucket."""

from .base import LocalFile, Redirect, Storage, Stream
from .local import LocalStorage

__all__ = ["LocalFile", "LocalStorage", "Redirect", "Storage", "Stream", "make_storage"]


def make_storage(settings) -> Storage:
    if settings.storage == "s3":
        from .s3 import S3Storage

        return S3Storage.from_settings(settings)
    return LocalStorage(settings.data_dir / "files")
