"""8-byte digests of strings, for the stages that compare keys, paths or groups of a whole dataset (index, shard):
an array of digests costs 8 bytes a string where a set of the strings costs ~100, and numpy sorts it. Two strings
can share a digest, so a match is confirmed on the strings themselves."""

import hashlib


def digest64(text):
    """The first 8 bytes of ``text``'s BLAKE2b digest (its UTF-8, lone surrogates kept), as an unsigned int."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8).digest(), "little")
