"""The S3 backend: ``s3://bucket/prefix`` on AWS S3 or any S3-compatible service.

Options (``-o key=value``): ``endpoint_url``, ``region``, ``profile``, ``path_style``
(true/false), ``storage_class``, ``sse`` (AES256 | aws:kms), ``sse_kms_key_id``,
``checksums`` (when_supported | when_required; MinIO, R2 and B2 reject boto3's default
flexible checksums and need ``when_required``), ``part_size`` (first part size, bytes or
with a KiB/MiB/GiB suffix, default 8 MiB, at least 5 MiB), ``concurrency`` (parts
uploaded at once, default 4), ``connect_timeout`` and ``read_timeout`` (seconds, default
10 and 30) and ``retries`` (retries after a failed request, default 2, or
AWS_MAX_ATTEMPTS - 1 when that is set). Everything else comes from the standard AWS
chain: AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL,
AWS_REGION, AWS_RETRY_MODE, ~/.aws/config, instance roles, ...

Timeouts. botocore's defaults (60 s timeouts, up to 5 attempts, and an abort tried three
times on top) made a frozen server hold a backup for about 15 minutes, silently. Here
every request takes at most ``retries + 1`` attempts of at most ``connect_timeout +
read_timeout`` each (``read_timeout`` is the longest silence while waiting for a response
or for a body's next bytes; a blocked upload gives up after ``connect_timeout``), plus
botocore's backoff of a few seconds; so a frozen endpoint fails a request within about
``(retries + 1) x (connect_timeout + read_timeout)``, 2 minutes with the defaults, with a
one-line BackendError that names the endpoint and these options. The abort of a failed
multipart upload is one request with at most 2 attempts on the same timeouts.

Writing. A stream of unknown length is buffered one part at a time. If it fits in the
first part it is stored with a single PutObject. Otherwise a multipart
upload is created and full parts are handed to a pool of ``concurrency`` threads; the
writer blocks while ``concurrency`` parts are in flight, so at most ``concurrency``
parts are being uploaded and one more is being filled:

    memory <= part size x (concurrency + 1)    (default: 8 MiB x 5 = 40 MiB)

where "part size" is the current one, which grows with the part count (schedule below).
``commit()`` uploads the last part and completes the upload, so the object appears only
then, atomically replacing any object of that name. ``abort()``, leaving the writer's
``with`` block without commit, and any failure first wait for the parts in flight and
then abort the multipart upload, so no part is left (and billed) behind. If even the
abort request cannot get through (the network is gone), the upload ID is logged;
``remove_incomplete`` (volbak's cleanup) aborts it later, and a bucket lifecycle rule
``AbortIncompleteMultipartUpload`` is the server-side safety net.

Part-size schedule. S3 allows 10,000 parts of 5 MiB to 5 GiB (the last may be smaller)
and parts of one upload may differ in size. Part n (1-based) is
``min(5 GiB, part_size * 2 ** ((n - 1) // 900))``: the size doubles every 900 parts.
With the default 8 MiB that is 8 MiB for the first 7 GiB, 16 MiB up to 21 GiB, 32 MiB up
to 49 GiB, 64 MiB up to 105 GiB, ... so ordinary backups keep small buffers, while the
largest object 10,000 parts can hold (``max_object_size``) is 11.9 TiB at 8 MiB and
9.3 TiB at the 5 MiB minimum: always more than S3's own 5 TiB object limit. The price
of small early parts is large late ones. With the defaults:

    stream    parts   last part   memory bound (concurrency 4)
    1 GiB       128      8 MiB      40 MiB
    10 GiB     1090     16 MiB      80 MiB
    100 GiB    3513     64 MiB     320 MiB
    1 TiB      6432      1 GiB       5 GiB
    5 TiB      8482      4 GiB      20 GiB

Long streams need large parts whatever the schedule (5 TiB in 10,000 parts averages
512 MiB a part); a linear one would end near 1.2 GiB at 5 TiB but use 2-3x larger parts
for the common 10-100 GiB backups, which this one favours. For multi-TiB streams lower
``-o concurrency`` (memory = part size x (concurrency + 1)).

Unfinished uploads. ``list_incomplete(age)``/``remove_incomplete(age)`` find the
multipart uploads under the repository's prefix (a writer killed before commit or abort
leaves one, billed, invisible to ``list``) whose start (``Initiated``) and newest part
are both more than ``age`` seconds old, measured on the server's clock (the ``Date`` of
the listing) with one second of slack for S3's whole-second timestamps: an upload that a
live writer elsewhere still feeds keeps getting new parts, so it is never taken.

Object ages. ``list`` and ``stat`` report ``LastModified`` (the server's clock, whole
seconds) as ``ObjectInfo.mtime``: the PutObject's time, or for a multipart upload its
start on AWS (its completion on some other servers); cleanup ages orphan archives by it.

Reading streams the GetObject body (``read(n)``). ``delete`` of a missing object raises
ObjectNotFound, as the contract demands, which costs a HeadObject first (S3's own
DeleteObject succeeds on missing keys). Every boto3/botocore exception is translated into
``volbak.errors``.
"""

from __future__ import annotations

import concurrent.futures as cf
import contextlib
import datetime
import email.utils
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from typing import Any, BinaryIO, cast

from volbak.backend import Backend, ObjectInfo, ObjectWriter, check_name
from volbak.errors import (
    BackendError,
    BackendFullError,
    BackendMissing,
    BackendPermissionError,
    ObjectNotFound,
    UsageError,
)

try:
    import boto3
    import botocore.config
    import botocore.exceptions as bce
    import botocore.session
except ImportError:  # pragma: no cover - exercised by a test that hides boto3
    boto3 = None

log = logging.getLogger("volbak.s3")

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
TiB = 1024 * GiB

MIN_PART = 5 * MiB
MAX_PART = 5 * GiB
MAX_PARTS = 10_000
DOUBLE_EVERY = 900
DEFAULT_PART = 8 * MiB
DEFAULT_CONCURRENCY = 4
DEFAULT_CONNECT_TIMEOUT = 10.0
DEFAULT_READ_TIMEOUT = 30.0
DEFAULT_RETRIES = 2
ABORT_ATTEMPTS = 2

OPTIONS = (
    "endpoint_url",
    "region",
    "profile",
    "path_style",
    "storage_class",
    "sse",
    "sse_kms_key_id",
    "checksums",
    "part_size",
    "concurrency",
    "connect_timeout",
    "read_timeout",
    "retries",
)

INSTALL_HINT = "install the S3 plugin and its boto3 dependency: pip install volbak-s3"
CRED_HINT = (
    "check the credentials: set AWS_PROFILE (or -o profile=NAME), or "
    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY"
)
ENDPOINT_HINT = (
    "check the network and the endpoint; for a non-AWS service pass "
    "-o endpoint_url=URL (or set AWS_ENDPOINT_URL)"
)

_PERMISSION_CODES = {
    "AccessDenied",
    "AllAccessDisabled",
    "InvalidAccessKeyId",
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "InvalidToken",
    "ExpiredToken",
    "TokenRefreshRequired",
    "AccountProblem",
    "403",
    "Forbidden",
}
_NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}
_FULL_CODES = {"QuotaExceeded", "XMinioStorageFull", "StorageFull"}


def part_size_for(part_number: int, first: int) -> int:
    """Size of part ``part_number`` (1-based) when the first part is ``first`` bytes."""
    return min(MAX_PART, first << ((part_number - 1) // DOUBLE_EVERY))


def max_object_size(first: int) -> int:
    """The largest object 10,000 parts of the schedule can hold."""
    total = 0
    n = 1
    while n <= MAX_PARTS:
        size = part_size_for(n, first)
        count = min(MAX_PARTS, (n - 1) // DOUBLE_EVERY * DOUBLE_EVERY + DOUBLE_EVERY) - n + 1
        total += size * count
        n += count
    return total


def _parse_size(key: str, text: str) -> int:
    m = re.fullmatch(r"\s*(\d+)\s*([KMGT]?)(i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise UsageError(
            f"-o {key}={text}: not a size", hint=f"write e.g. -o {key}=8MiB or -o {key}=8388608"
        )
    unit = {"": 1, "K": KiB, "M": MiB, "G": GiB, "T": TiB}[m.group(2).upper()]
    return int(m.group(1)) * unit


def _parse_seconds(key: str, text: str) -> float:
    try:
        value = float(text.strip().removesuffix("s"))
    except ValueError:
        value = -1.0
    if not (0 < value <= 3600):
        raise UsageError(
            f"-o {key}={text}: expected seconds between 0 and 3600", hint=f"e.g. -o {key}=30"
        )
    return value


def _parse_retries(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not (0 <= value <= 20):
        raise UsageError(f"-o retries={text}: expected a number from 0 to 20")
    return value


def _parse_bool(key: str, text: str) -> bool:
    t = text.strip().lower()
    if t in ("1", "true", "yes", "on"):
        return True
    if t in ("0", "false", "no", "off"):
        return False
    raise UsageError(f"-o {key}={text}: expected true or false")


def _timestamp(when: Any) -> float | None:
    """LastModified (botocore parses it into an aware datetime) as POSIX seconds."""
    if isinstance(when, datetime.datetime) and when.tzinfo is not None:
        return when.timestamp()
    return None


def _timed_out(exc: BaseException) -> bool:
    """A botocore error caused by a timeout, also one botocore calls a closed connection
    (a request body that could not be sent within the timeout, as to a frozen server)."""
    seen: set[int] = set()
    todo = [exc]
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, TimeoutError | bce.ReadTimeoutError | bce.ConnectTimeoutError):
            return True
        kwargs = getattr(e, "kwargs", None)  # botocore keeps the cause as kwargs["error"]
        if isinstance(kwargs, dict) and isinstance(kwargs.get("error"), BaseException):
            todo.append(kwargs["error"])
        todo += [a for a in getattr(e, "args", ()) if isinstance(a, BaseException)]
        todo += [c for c in (e.__cause__, e.__context__) if c is not None]
    return False


class S3Backend(Backend):
    scheme = "s3"
    list_page_size = 1000  # ListObjectsV2's maximum; tests lower it

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        profile: str | None = None,
        path_style: bool = False,
        storage_class: str | None = None,
        sse: str | None = None,
        sse_kms_key_id: str | None = None,
        checksums: str | None = None,
        part_size: int = DEFAULT_PART,
        concurrency: int = DEFAULT_CONCURRENCY,
        connect_timeout: float = DEFAULT_CONNECT_TIMEOUT,
        read_timeout: float = DEFAULT_READ_TIMEOUT,
        retries: int | None = None,
    ) -> None:
        if boto3 is None:
            raise BackendMissing(
                "the S3 backend needs boto3, which is not installed", hint=INSTALL_HINT
            )
        if not (MIN_PART <= part_size <= MAX_PART):
            raise UsageError(
                f"-o part_size={part_size}: must be between 5 MiB and 5 GiB",
                hint="S3 rejects parts smaller than 5 MiB (other than the last)",
            )
        if not (1 <= concurrency <= 64):
            raise UsageError(f"-o concurrency={concurrency}: must be between 1 and 64")
        if sse is not None and sse not in ("AES256", "aws:kms"):
            raise UsageError(f"-o sse={sse}: expected AES256 or aws:kms")
        if sse_kms_key_id and sse is None:
            sse = "aws:kms"
        if sse_kms_key_id and sse != "aws:kms":
            raise UsageError("-o sse_kms_key_id needs -o sse=aws:kms")
        if checksums is not None and checksums not in ("when_supported", "when_required"):
            raise UsageError(f"-o checksums={checksums}: expected when_supported or when_required")
        if storage_class is not None and not re.fullmatch(r"[A-Z_]+", storage_class):
            raise UsageError(
                f"-o storage_class={storage_class}: not a storage class",
                hint="e.g. STANDARD, STANDARD_IA, INTELLIGENT_TIERING, GLACIER_IR",
            )
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.part_size = part_size
        self.concurrency = concurrency
        extra: dict[str, str] = {}
        if storage_class:
            extra["StorageClass"] = storage_class
        if sse:
            extra["ServerSideEncryption"] = sse
        if sse_kms_key_id:
            extra["SSEKMSKeyId"] = sse_kms_key_id
        self._extra = extra

        if not (0 < connect_timeout <= 3600 and 0 < read_timeout <= 3600):
            raise UsageError("S3 timeouts must be between 0 and 3600 seconds")
        if retries is not None and not (0 <= retries <= 20):
            raise UsageError(f"-o retries={retries}: expected a number from 0 to 20")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.retries = DEFAULT_RETRIES if retries is None else retries

        cfg: dict[str, Any] = {
            "max_pool_connections": concurrency + 2,
            "user_agent_extra": "volbak-s3",
            "connect_timeout": connect_timeout,
            "read_timeout": read_timeout,
        }
        if path_style:
            cfg["s3"] = {"addressing_style": "path"}
        if checksums:
            cfg["request_checksum_calculation"] = checksums
            cfg["response_checksum_validation"] = checksums
        try:
            core = botocore.session.Session(profile=profile)
            if retries is None:
                # AWS_MAX_ATTEMPTS / max_attempts in the profile, else ours
                chain = core.get_config_variable("max_attempts")
                self.retries = max(0, int(chain) - 1) if chain else DEFAULT_RETRIES
            mode = core.get_config_variable("retry_mode") or "standard"
            cfg["retries"] = {"total_max_attempts": self.retries + 1, "mode": mode}
            session = boto3.session.Session(botocore_session=core)
            self._client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=botocore.config.Config(**cfg),
            )
            # The abort after a failure: the same timeouts, fewer attempts (the failure
            # is often the endpoint going away, and a backup should not wait twice as long).
            abort_attempts = min(ABORT_ATTEMPTS, self.retries + 1)
            self._abort_client = session.client(
                "s3",
                endpoint_url=endpoint_url,
                region_name=region,
                config=botocore.config.Config(
                    **{**cfg, "retries": {"total_max_attempts": abort_attempts, "mode": mode}}
                ),
            )
        except bce.ProfileNotFound:
            raise UsageError(
                f"AWS profile '{profile}' is not configured",
                hint="add it to ~/.aws/config, or drop -o profile / AWS_PROFILE",
            ) from None
        except (bce.BotoCoreError, ValueError) as e:
            raise BackendError(f"cannot set up the S3 client: {e}", hint=ENDPOINT_HINT) from None
        self.endpoint = self._client.meta.endpoint_url
        # Like boto3's upload_fileobj: with flexible checksums on (botocore's default
        # "when_supported"), a multipart upload is made with CRC32 and every part's
        # checksum goes into CompleteMultipartUpload; with "when_required" neither.
        calc = self._client.meta.config.request_checksum_calculation
        self._mpu_checksum = "CRC32" if calc == "when_supported" else None

    # -- opening ------------------------------------------------------------------------

    @classmethod
    def from_url(cls, url: str, options: Mapping[str, str]) -> S3Backend:
        m = re.fullmatch(r"s3://([^/]+)(?:/(.*))?", url, re.IGNORECASE)
        if not m:
            raise UsageError(
                f"not an S3 URL: {url}", hint="write s3://BUCKET or s3://BUCKET/PREFIX"
            )
        bucket, prefix = m.group(1), (m.group(2) or "")
        if prefix.strip("/"):
            try:
                check_name(prefix.strip("/"))
            except ValueError:
                raise UsageError(f"bad prefix in {url}", hint="use s3://BUCKET/a/b") from None
        unknown = [k for k in options if k not in OPTIONS]
        if unknown:
            raise UsageError(
                f"unknown S3 option{'s' if len(unknown) > 1 else ''}: {', '.join(unknown)}",
                hint="known options: " + ", ".join(OPTIONS),
            )
        kw: dict[str, Any] = {}
        for key in (
            "endpoint_url",
            "region",
            "profile",
            "storage_class",
            "sse",
            "sse_kms_key_id",
            "checksums",
        ):
            if options.get(key):
                kw[key] = options[key]
        if "path_style" in options:
            kw["path_style"] = _parse_bool("path_style", options["path_style"])
        if "part_size" in options:
            kw["part_size"] = _parse_size("part_size", options["part_size"])
        if "concurrency" in options:
            try:
                kw["concurrency"] = int(options["concurrency"])
            except ValueError:
                raise UsageError(f"-o concurrency={options['concurrency']}: not a number") from None
        for key in ("connect_timeout", "read_timeout"):
            if key in options:
                kw[key] = _parse_seconds(key, options[key])
        if "retries" in options:
            kw["retries"] = _parse_retries(options["retries"])
        return cls(bucket, prefix, **kw)

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"

    def close(self) -> None:
        for client in (self._client, self._abort_client):
            with contextlib.suppress(Exception):
                client.close()

    # -- helpers ------------------------------------------------------------------------

    def _key(self, name: str) -> str:
        check_name(name)
        return f"{self.prefix}/{name}" if self.prefix else name

    def _translate(self, exc: BaseException, what: str) -> BackendError:
        """Map a boto3/botocore exception to volbak's error tree."""
        base = f"{self.prefix}/" if self.prefix else ""
        where = f"s3://{self.bucket}/{base}{what}" if what else self.url
        if isinstance(exc, BackendError):
            return exc
        if isinstance(exc, bce.ClientError):
            err = exc.response.get("Error", {})
            code = str(err.get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            msg = err.get("Message") or code
            if code == "NoSuchBucket":
                return self._no_bucket()
            if code in _NOT_FOUND_CODES:
                return ObjectNotFound(f"no such object: {what}")
            if code in _PERMISSION_CODES or status == 403:
                return BackendPermissionError(
                    f"S3 refused access to {where} at {self.endpoint}: {code} ({msg})",
                    hint=CRED_HINT,
                )
            if code in _FULL_CODES:
                return BackendFullError(f"S3 storage is full writing {where}: {msg}")
            return BackendError(f"S3 error on {where} at {self.endpoint}: {code} ({msg})")
        if isinstance(exc, bce.NoCredentialsError | bce.PartialCredentialsError):
            return BackendPermissionError(
                f"no usable AWS credentials for {self.url}: {exc}", hint=CRED_HINT
            )
        if _timed_out(exc):
            return BackendError(
                f"S3 endpoint {self.endpoint} did not answer in time on {where} "
                f"({self._limits()})",
                hint=self._timeout_hint(),
            )
        if isinstance(exc, bce.EndpointConnectionError):
            return BackendError(
                f"cannot reach S3 endpoint {self.endpoint}: {exc}", hint=ENDPOINT_HINT
            )
        if isinstance(
            exc,
            bce.ConnectionError
            | bce.HTTPClientError
            | bce.IncompleteReadError
            | bce.ResponseStreamingError,
        ):
            return BackendError(
                f"connection to S3 endpoint {self.endpoint} failed on {where}: {exc} "
                f"({self._limits()})",
                hint=self._timeout_hint(),
            )
        if isinstance(exc, bce.BotoCoreError):
            return BackendError(f"S3 request on {where} failed: {exc}")
        if isinstance(exc, OSError):
            return BackendError(
                f"connection to S3 endpoint {self.endpoint} failed on {where}: {exc}",
                hint=ENDPOINT_HINT,
            )
        # Anything else from the HTTP stack (urllib3, ssl, ...): still a BackendError, as
        # the contract demands, with the original kept as the cause for a traceback.
        err = BackendError(f"S3 request on {where} failed: {type(exc).__name__}: {exc}")
        err.__cause__ = exc
        return err

    def _limits(self) -> str:
        n = self.retries + 1
        return (
            f"{n} attempt{'s' if n > 1 else ''}; -o connect_timeout={self.connect_timeout:g} "
            f"-o read_timeout={self.read_timeout:g} -o retries={self.retries}"
        )

    def _timeout_hint(self) -> str:
        return (
            f"check that the server at {self.endpoint} runs and is reachable (-o endpoint_url "
            "or AWS_ENDPOINT_URL); over a slow link raise -o read_timeout=SECONDS, "
            "-o connect_timeout=SECONDS or -o retries=N"
        )

    def _no_bucket(self) -> BackendError:
        return BackendError(
            f"bucket '{self.bucket}' does not exist at {self.endpoint}",
            hint="create it (e.g. aws s3 mb s3://" + self.bucket + "), or check the bucket "
            "name, -o region and -o endpoint_url",
        )

    def _not_found(self, name: str) -> BackendError:
        """A HEAD 404 has no body: tell a missing object from a missing bucket."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except Exception as e:
            err = self._translate(e, "")
            if isinstance(err, ObjectNotFound):
                return self._no_bucket()
            return err
        return ObjectNotFound(f"no such object: {name}")

    # -- the contract -------------------------------------------------------------------

    def create_writer(self, name: str) -> ObjectWriter:
        return _S3Writer(self, name, self._key(name))

    def open_reader(self, name: str) -> BinaryIO:
        key = self._key(name)
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            raise self._translate(e, name) from None
        return cast(BinaryIO, _S3Reader(self, name, resp["Body"]))

    def read_range(self, name: str, offset: int = 0, length: int | None = None) -> bytes:
        """One ranged GET (HTTP Range), so a restore fetches only the blobs it needs."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError("negative offset or length")
        key = self._key(name)
        if length == 0:
            self.stat(name)
            return b""
        rng = f"bytes={offset}-" + ("" if length is None else str(offset + length - 1))
        try:
            resp = self._client.get_object(Bucket=self.bucket, Key=key, Range=rng)
            body = resp["Body"]
            try:
                return body.read()
            finally:
                body.close()
        except Exception as e:
            code = getattr(e, "response", {}).get("Error", {}).get("Code")
            if code == "InvalidRange":  # the range starts at or past the end
                self.stat(name)
                return b""
            raise self._translate(e, name) from None

    def stat(self, name: str) -> ObjectInfo:
        key = self._key(name)
        try:
            resp = self._client.head_object(Bucket=self.bucket, Key=key)
        except Exception as e:
            err = self._translate(e, name)
            if isinstance(err, ObjectNotFound):
                err = self._not_found(name)
            raise err from None
        return ObjectInfo(name, int(resp["ContentLength"]), _timestamp(resp.get("LastModified")))

    def list(self, prefix: str = "") -> Iterator[ObjectInfo]:
        base = f"{self.prefix}/" if self.prefix else ""
        try:
            pages = self._client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket,
                Prefix=base + prefix,
                PaginationConfig={"PageSize": self.list_page_size},
            )
            for page in pages:
                for obj in page.get("Contents", ()):
                    name = obj["Key"][len(base) :]
                    try:
                        check_name(name)
                    except ValueError:
                        continue  # "folder/" markers from consoles, "a//b": not ours
                    yield ObjectInfo(name, int(obj["Size"]), _timestamp(obj.get("LastModified")))
        except Exception as e:
            raise self._translate(e, prefix) from None

    # -- unfinished multipart uploads (optional part of the contract) -------------------

    def _server_now(self, response: Mapping[str, Any]) -> datetime.datetime:
        """The server's clock from a response's Date header (else ours): S3's timestamps
        are the server's, and a skewed client clock must not age uploads."""
        date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
        with contextlib.suppress(TypeError, ValueError):
            if date:
                now = email.utils.parsedate_to_datetime(date)
                if now.tzinfo is not None:
                    return now
        return datetime.datetime.now(datetime.UTC)

    def _newest_part(self, key: str, upload_id: str) -> datetime.datetime | None:
        """When the upload last got a part (None: no part, or the server cannot say)."""
        newest = None
        pages = self._client.get_paginator("list_parts").paginate(
            Bucket=self.bucket, Key=key, UploadId=upload_id
        )
        for page in pages:
            for part in page.get("Parts", ()):
                when = part.get("LastModified")
                if isinstance(when, datetime.datetime) and (newest is None or when > newest):
                    newest = when
        return newest

    def _incomplete(self, older_than_seconds: float) -> Iterator[tuple[str, str, str, str]]:
        """(key, upload id, name, description) of old enough uploads under our prefix."""
        base = f"{self.prefix}/" if self.prefix else ""
        slack = datetime.timedelta(seconds=older_than_seconds + 1)
        try:
            pages = self._client.get_paginator("list_multipart_uploads").paginate(
                Bucket=self.bucket, Prefix=base
            )
            for page in pages:
                cutoff = self._server_now(page) - slack
                for up in page.get("Uploads", ()):
                    key, upload_id = up.get("Key", ""), up.get("UploadId", "")
                    started = up.get("Initiated")
                    if not key.startswith(base) or not upload_id:
                        continue  # a server that ignores Prefix: not ours
                    name = key[len(base) :]
                    try:
                        check_name(name)
                    except ValueError:
                        continue
                    if not isinstance(started, datetime.datetime) or started >= cutoff:
                        continue
                    try:
                        newest = self._newest_part(key, upload_id)
                    except bce.ClientError as e:
                        if e.response.get("Error", {}).get("Code") == "NoSuchUpload":
                            continue  # finished meanwhile
                        raise
                    if newest is not None and newest >= cutoff:
                        continue  # still being fed
                    when = f"{started.astimezone(datetime.UTC):%Y-%m-%dT%H:%M:%SZ}"
                    yield key, upload_id, name, (
                        f"{name} (multipart upload {upload_id}, started {when})"
                    )
        except Exception as e:
            raise self._translate(e, "") from None

    def list_incomplete(self, older_than_seconds: float) -> list[str]:
        return [what for *_, what in self._incomplete(older_than_seconds)]

    def remove_incomplete(self, older_than_seconds: float) -> list[str]:
        removed = []
        for key, upload_id, name, what in list(self._incomplete(older_than_seconds)):
            try:
                self._client.abort_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id
                )
            except Exception as e:
                if isinstance(e, bce.ClientError) and (
                    e.response.get("Error", {}).get("Code") == "NoSuchUpload"
                ):
                    continue  # finished or aborted meanwhile
                raise self._translate(e, name) from None
            removed.append(what)
        return removed

    def delete(self, name: str) -> None:
        self.stat(name)  # S3 deletes missing keys happily; the contract wants ObjectNotFound
        try:
            self._client.delete_object(Bucket=self.bucket, Key=self._key(name))
        except Exception as e:
            raise self._translate(e, name) from None


class _S3Reader:
    """A GetObject body as a BinaryIO, with errors mapped."""

    def __init__(self, backend: S3Backend, name: str, body: Any) -> None:
        self._backend = backend
        self._name = name
        self._body = body
        self.closed = False

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        data = self.read(len(memoryview(b).cast("B")))
        memoryview(b).cast("B")[: len(data)] = data
        return len(data)

    def read(self, n: int | None = -1) -> bytes:
        try:
            return self._body.read(None if n is None or n < 0 else n)
        except Exception as e:
            raise self._backend._translate(e, self._name) from None

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            with contextlib.suppress(Exception):
                self._body.close()

    def __enter__(self) -> _S3Reader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _S3Writer(ObjectWriter):
    def __init__(self, backend: S3Backend, name: str, key: str) -> None:
        self._b = backend
        self._c = backend._client
        self._name = name
        self._key = key
        self._size = 0
        self._part_no = 1  # number of the part being filled
        self._buf: bytearray | None = None  # the part being filled, allocated whole
        self._fill = 0
        self._upload_id: str | None = None
        self._pool: cf.ThreadPoolExecutor | None = None
        self._inflight: dict[cf.Future[dict[str, Any]], int] = {}
        self._parts: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        # For tests and the memory bound: bytes held in part buffers, and the peak.
        self.buffered = 0
        self.peak_buffered = 0

    # -- buffering ------------------------------------------------------------------

    def _target(self) -> int:
        return part_size_for(self._part_no, self._b.part_size)

    def _account(self, delta: int) -> None:
        with self._lock:
            self.buffered += delta
            self.peak_buffered = max(self.peak_buffered, self.buffered)

    def write(self, data: bytes | memoryview) -> None:
        if self._done:
            raise RuntimeError("writer already finished")
        view = memoryview(data).cast("B")
        try:
            while view:
                if self._buf is None:
                    # Allocated whole, so the buffer never grows by copying.
                    self._buf = bytearray(self._target())
                    self._fill = 0
                    self._account(len(self._buf))
                room = len(self._buf) - self._fill
                if room == 0:
                    # Full, and more data follows: this is not the last part.
                    self._flush_part()
                    continue
                n = min(room, len(view))
                self._buf[self._fill : self._fill + n] = view[:n]
                self._fill += n
                self._size += n
                view = view[n:]
        except BaseException as e:
            self.abort()
            if isinstance(e, Exception) and not isinstance(e, BackendError):
                raise self._b._translate(e, self._name) from None
            raise

    def _take_buffer(self) -> bytearray:
        """The filled part of the buffer (trimmed in place, no copy); a new one follows."""
        buf, self._buf = self._buf, None
        if buf is None:
            return bytearray()
        if self._fill < len(buf):
            self._account(self._fill - len(buf))
            del buf[self._fill :]
        self._fill = 0
        return buf

    def _flush_part(self) -> None:
        """Hand the buffer to the pool, first starting the upload if need be."""
        if self._part_no > MAX_PARTS:
            raise BackendError(
                f"object {self._name} is larger than S3's 10,000-part limit allows",
                hint="pass a larger -o part_size",
            )
        self._check_done(block=len(self._inflight) >= self._b.concurrency)
        if self._upload_id is None:
            extra = dict(self._b._extra)
            if self._b._mpu_checksum:
                extra["ChecksumAlgorithm"] = self._b._mpu_checksum
            resp = self._c.create_multipart_upload(Bucket=self._b.bucket, Key=self._key, **extra)
            self._upload_id = resp["UploadId"]
            self._pool = cf.ThreadPoolExecutor(
                max_workers=self._b.concurrency, thread_name_prefix="volbak-s3-part"
            )
        assert self._pool is not None
        fut = self._pool.submit(self._upload_part, self._part_no, self._take_buffer())
        self._inflight[fut] = self._part_no
        self._part_no += 1

    def _upload_part(self, number: int, buf: bytearray) -> dict[str, Any]:
        try:
            resp = self._c.upload_part(
                Bucket=self._b.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=buf,
            )
        finally:
            self._account(-len(buf))
        part = {"PartNumber": number, "ETag": resp["ETag"]}
        member = f"Checksum{self._b._mpu_checksum}" if self._b._mpu_checksum else None
        if member and member in resp:
            part[member] = resp[member]
        return part

    def _check_done(self, *, block: bool, all_: bool = False) -> None:
        """Collect finished parts; wait for one (block) or all; raise the first failure."""
        if not self._inflight:
            return
        if all_:
            done, _ = cf.wait(self._inflight, return_when=cf.FIRST_EXCEPTION)
            if not any(f.exception() for f in done):
                done, _ = cf.wait(self._inflight)
        elif block:
            done, _ = cf.wait(self._inflight, return_when=cf.FIRST_COMPLETED)
        else:
            done = {f for f in self._inflight if f.done()}
        for f in done:
            del self._inflight[f]
            exc = f.exception()
            if exc is not None:
                raise self._b._translate(exc, self._name)
            self._parts.append(f.result())

    # -- finishing ----------------------------------------------------------------------

    def _commit(self) -> ObjectInfo:
        try:
            if self._upload_id is None:
                body = self._take_buffer()
                self._c.put_object(
                    Bucket=self._b.bucket, Key=self._key, Body=body, **self._b._extra
                )
                self._account(-len(body))
            else:
                if self._fill:
                    self._flush_part()
                self._check_done(block=True, all_=True)
                self._parts.sort(key=lambda p: p["PartNumber"])
                self._c.complete_multipart_upload(
                    Bucket=self._b.bucket,
                    Key=self._key,
                    UploadId=self._upload_id,
                    MultipartUpload={"Parts": self._parts},
                )
                self._upload_id = None
                self._shutdown()
        except BackendError:
            raise
        except Exception as e:
            raise self._b._translate(e, self._name) from None
        return ObjectInfo(self._name, self._size)

    def _shutdown(self) -> None:
        if self._pool is not None:
            for f in self._inflight:
                f.cancel()
            self._pool.shutdown(wait=True)  # let running part uploads end before aborting
            self._pool = None
        self._inflight.clear()

    def _abort(self) -> None:
        self._shutdown()
        self._account(-len(self._take_buffer()))
        if self._upload_id is None:
            return
        upload_id, self._upload_id = self._upload_id, None
        try:
            # one request; its attempts and timeouts are bounded by the abort client
            self._b._abort_client.abort_multipart_upload(
                Bucket=self._b.bucket, Key=self._key, UploadId=upload_id
            )
            return
        except bce.ClientError as e:
            if e.response.get("Error", {}).get("Code") == "NoSuchUpload":
                return
            last: Exception = e
        except Exception as e:
            last = e
        log.warning(
            "could not abort multipart upload %s of s3://%s/%s: %s; its parts stay billed "
            "until volbak's cleanup of incomplete uploads, a lifecycle rule "
            "(AbortIncompleteMultipartUpload) or `aws s3api abort-multipart-upload` "
            "removes them",
            upload_id,
            self._b.bucket,
            self._key,
            last,
        )
