"""volbak's S3 storage backend (the ``s3://`` scheme); see ``volbak_s3.s3``."""

from .s3 import S3Backend, max_object_size, part_size_for

__all__ = ["S3Backend", "max_object_size", "part_size_for"]
