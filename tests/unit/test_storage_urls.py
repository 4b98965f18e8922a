"""Shard URLs (s3://, http(s)://): credentials are redacted in every message and passwords in URLs refused."""

import pytest

from dfdtrain.core.errors import DfdError
from dfdtrain.data import storage
from dfdtrain.data.loading.loader import expand_shards


def test_urls_are_masked_and_passwords_refused():
    assert storage.redact("https://user:pw@host/p/x.tar?X-Amz-Signature=abc&t=1") == \
        "https://user:***@host/p/x.tar?X-Amz-Signature=***&t=***"
    assert storage.redact("s3://bucket/key.tar") == "s3://bucket/key.tar"
    with pytest.raises(DfdError, match=r"https://user:\*\*\*@host/x.tar: a password in a URL"):
        expand_shards("https://user:pw@host/x.tar")
    assert storage.split("s3://b/p/train-000001.tar") == ("s3://b/p", "train-000001.tar")
    assert storage.split("pipe:cat x.tar") == (None, "pipe:cat x.tar")


def test_remote_local_and_pipe_sources_are_told_apart():
    for url in ("s3://b/k.tar", "http://h/x.tar", "https://h/x.tar"):
        assert storage.is_remote(url) and storage.is_url(url)
    assert storage.is_url("pipe:cat x.tar") and not storage.is_remote("pipe:cat x.tar")
    for path in ("shards/train-000000.tar", "/data/s3:/x.tar", "file.tar"):
        assert not storage.is_url(path)


def test_join_and_split_undo_each_other_for_urls_and_paths(tmp_path):
    for folder in ("s3://bucket/dfdc/part0", "https://host/shards", str(tmp_path / "shards")):
        joined = storage.join(folder, "index.json")
        assert storage.split(joined) == (folder, "index.json")
    assert storage.join("s3://bucket/dfdc/", "a.tar") == "s3://bucket/dfdc/a.tar"  # one slash, not two
    assert storage.split("train-000000.tar") == (".", "train-000000.tar")


def test_s3_urls_name_a_bucket_and_a_key():
    assert storage.s3_parts("s3://bucket/dfdc/train-000001.tar") == ("bucket", "dfdc/train-000001.tar")
    assert storage.s3_parts("s3://bucket") == ("bucket", "")
    with pytest.raises(DfdError, match=r"s3:///key: an s3 URL is s3://BUCKET/KEY"):
        storage.s3_parts("s3:///key")


def test_a_url_without_a_password_passes_and_local_paths_are_left_alone():
    assert storage.check_url("https://user@host/x.tar") == "https://user@host/x.tar"
    assert storage.check_url("s3://bucket/x.tar") == "s3://bucket/x.tar"
    assert storage.redact("/data/shards/x.tar?raw") == "/data/shards/x.tar?raw"  # a path is no URL: nothing to hide
