"""Shards written to ``s3://bucket/prefix`` (``RemoteShardFolder``): the run works in a local staging folder,
uploads each shard as soon as it is written, and index.json last; a rerun resumes from the bucket's records."""

from pathlib import Path

from dfdtrain.data import storage
from dfdtrain.data.decode.dali_tar_index import dali_index_path
from dfdtrain.data.shards.folder import RECORDS_FOLDER, SHARD_FILE, name_some
from dfdtrain.core.errors import DfdError
from dfdtrain.core.fileio import atomic_open, read_json


class RemoteShardFolder:
    """``shard --out s3://bucket/prefix``: the run works in a local staging folder (its lock, temp files and
    shard records, as for a local folder) and uploads each shard as soon as it is written: the tar, its DALI
    index, then its record to ``prefix/.parts/`` (so a record in the bucket means its shard is whole there), and
    deletes the local copies (the staging folder holds a few shards at a time, not the data set). index.json
    goes up last. S3 shows an object only once its upload is complete, so a reader never sees part of a shard.

    Resume: a rerun (on this machine or another) takes the bucket's index.json and records as the earlier
    records, and keeps every shard whose record matches and whose object has the recorded size. The staging
    folder is locked against a second run on this machine; two machines writing one prefix are not detected.
    """

    def __init__(self, url, staging=None):
        if not url.startswith("s3://"):
            raise DfdError(f"{storage.redact(url)}: shards can be written to a local folder or s3://bucket/prefix")
        self.url = url.rstrip("/")
        bucket, prefix = storage.s3_parts(self.url)
        if not prefix:
            raise DfdError(f"{self.url}: give a prefix inside the bucket (s3://{bucket}/PREFIX), not the bucket root")
        storage.check_bucket(self.url)  # a wrong bucket is one line now, not after the first shard's hour
        self.staging = Path(staging or Path(storage.cache_root()) / "staging" / bucket / prefix)

    def sizes(self):
        return storage.list_sizes(self.url)

    def fetch_records(self):
        """The bucket's index.json and shard records into the staging folder, where the run looks for the
        records of earlier runs (the bucket's are newer than any left in staging by a run elsewhere)."""
        remote_records = {name for name in storage.list_sizes(f"{self.url}/{RECORDS_FOLDER}") if name.endswith(".tar.json")}
        for name, local in [("index.json", self.staging / "index.json"),
                            *((f"{RECORDS_FOLDER}/{name}", self.staging / RECORDS_FOLDER / name)
                              for name in sorted(remote_records))]:
            data = storage.read_bytes(f"{self.url}/{name}")
            if data is not None:
                local.parent.mkdir(parents=True, exist_ok=True)
                with atomic_open(local, "wb") as handle:
                    handle.write(data)

    def upload_shard(self, tar_path):
        """Upload a finished shard, its DALI index and its record; then drop the local shard and index."""
        index_path = Path(dali_index_path(tar_path))
        record_path = tar_path.parent / RECORDS_FOLDER / f"{tar_path.name}.json"
        storage.upload(tar_path, f"{self.url}/{tar_path.name}", metadata={"sha256": read_json(record_path)["sha256"]})
        if index_path.is_file():
            storage.upload(index_path, f"{self.url}/{index_path.name}")
        storage.upload(record_path, f"{self.url}/{RECORDS_FOLDER}/{record_path.name}")
        tar_path.unlink()
        index_path.unlink(missing_ok=True)

    def remove_stale_shards(self, planned):
        """Delete the bucket's shards named like ours (and their indexes and records) that the plan does not
        list; [one line] or []."""
        stale = set()
        for name in self.sizes():
            tar_name = name[:-len(".idx")] + ".tar" if name.endswith(".idx") else name
            if SHARD_FILE.match(name) and tar_name not in planned:
                stale.add(tar_name)
                storage.delete(f"{self.url}/{name}")
        for name in storage.list_sizes(f"{self.url}/{RECORDS_FOLDER}"):
            if name.endswith(".tar.json") and name[:-len(".json")] not in planned:
                stale.add(name[:-len(".json")])
                storage.delete(f"{self.url}/{RECORDS_FOLDER}/{name}")
        if not stale:
            return []
        return [f"removed {len(stale)} shard(s) of an earlier run from {self.url} that this plan does not list: "
                f"{name_some(sorted(stale))}"]

    def publish_index(self, index_path, planned):
        """index.json up last, and its local copy goes (staging is a work area; a rerun fetches the bucket's);
        then the shard records go (index.json holds them)."""
        storage.upload(index_path, f"{self.url}/index.json")
        Path(index_path).unlink(missing_ok=True)
        for name in storage.list_sizes(f"{self.url}/{RECORDS_FOLDER}"):
            if name.endswith(".tar.json") and name[:-len(".json")] in planned:
                storage.delete(f"{self.url}/{RECORDS_FOLDER}/{name}")
