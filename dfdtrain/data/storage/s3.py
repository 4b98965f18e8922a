"""S3 (any S3-compatible store): botocore's exceptions sorted into transient faults (asked again) and permanent
ones (``RemoteError``), and the object operations the rest of the package builds on: an object's size,
listing a prefix, uploading a file (``dfdtrain shard --out s3://...``), deleting an object and checking a
bucket before any work. Every call goes through ``retrying``.
"""

import os

from dfdtrain.core.errors import DfdError, one_line
from dfdtrain.data.storage.clients import s3_client
from dfdtrain.data.storage.faults import RemoteError, TransientFault, io_timeout, retrying
from dfdtrain.data.storage.urls import redact, s3_parts

TRANSIENT_S3_CODES = {"InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
                      "Throttling", "ThrottlingException", "500", "502", "503", "504"}
NOT_FOUND_CODES = {"NoSuchKey", "404", "NotFound"}


def s3_fault(url, error):
    """A botocore/urllib3 exception as TransientFault (raised) or RemoteError (returned, for the caller to raise)."""
    from botocore.exceptions import (ClientError, ConnectionError as BotoConnectionError, HTTPClientError,
                                     NoCredentialsError, ReadTimeoutError, ResponseStreamingError)

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code"))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in TRANSIENT_S3_CODES or (status or 0) >= 500:
            raise TransientFault(f"s3 {code}", f"S3 answered {code}")
        message = error.response.get("Error", {}).get("Message") or code
        return RemoteError(f"{redact(url)}: {code}: {one_line(message)}")
    if isinstance(error, NoCredentialsError):
        return RemoteError(f"{redact(url)}: no S3 credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                           "or AWS_PROFILE)")
    if isinstance(error, ReadTimeoutError):
        raise TransientFault("timeout", f"no data for {io_timeout():.0f} s")
    # HTTPClientError: a connection closed or reset before a whole answer, a proxy or TLS failure on the way
    if isinstance(error, (BotoConnectionError, HTTPClientError, ResponseStreamingError, ConnectionError,
                          TimeoutError)):
        raise TransientFault("connection", f"connection failed ({type(error).__name__})")
    return RemoteError(f"{redact(url)}: {type(error).__name__}: {one_line(error)}")


def s3_object_size(url):
    """Bytes of an s3:// object, or None when it does not exist (a permanent fault other than 'not found' raises)."""
    bucket, key = s3_parts(url)

    def head():
        try:
            return int(s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"])
        except Exception as error:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in NOT_FOUND_CODES:
                return None
            raise s3_fault(url, error) from None
    return retrying(url, head)


def s3_list(url, shown=None):
    """{key: size} of every object under the prefix of ``url`` (s3://bucket/prefix); errors name ``shown``."""
    bucket, prefix = s3_parts(url)
    shown = shown or url

    def listing():
        found = {}
        try:
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    found[item["Key"]] = int(item["Size"])
        except Exception as error:  # noqa: BLE001
            raise s3_fault(shown, error) from None
        return found
    return retrying(shown, listing)


def _writable(url):
    if not str(url).startswith("s3://"):
        raise DfdError(f"{redact(url)}: only a local folder or s3://bucket/prefix can be written")


def upload(local_path, url, metadata=None):
    """Put a local file at ``url`` (s3). A reader never sees part of it: S3 shows an object only once its upload
    (a single PUT, or a multipart upload completed at the end) is whole."""
    _writable(url)
    from boto3.s3.transfer import TransferConfig

    bucket, key = s3_parts(url)
    config = TransferConfig(multipart_threshold=64 << 20, multipart_chunksize=64 << 20, use_threads=False)

    def put():
        try:
            s3_client().upload_file(os.fspath(local_path), bucket, key, Config=config,
                                    ExtraArgs={"Metadata": metadata or {}})
        except Exception as error:  # noqa: BLE001
            from boto3.exceptions import S3UploadFailedError

            # boto3 wraps the client's error in its own: sort the cause into transient or permanent
            cause = error.__context__ if isinstance(error, S3UploadFailedError) and error.__context__ else error
            raise s3_fault(url, cause) from None
    retrying(url, put)


def delete(url):
    _writable(url)
    bucket, key = s3_parts(url)

    def remove():
        try:
            s3_client().delete_object(Bucket=bucket, Key=key)
        except Exception as error:  # noqa: BLE001
            raise s3_fault(url, error) from None
    retrying(url, remove)


def check_bucket(url):
    """One line now, rather than after an hour of sharding, when the bucket is wrong or not ours."""
    bucket, _ = s3_parts(url)

    def head():
        try:
            s3_client().head_bucket(Bucket=bucket)
        except Exception as error:  # noqa: BLE001
            from botocore.exceptions import ClientError

            if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                return RemoteError(f"{redact(url)}: no such bucket {bucket!r}")
            if isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) == "403":
                return RemoteError(f"{redact(url)}: access denied to bucket {bucket!r}")
            raise s3_fault(url, error) from None
        return None
    problem = retrying(url, head)
    if problem:
        raise problem
