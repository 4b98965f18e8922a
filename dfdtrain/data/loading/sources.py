"""Mixed training sets (``data.train_sources``): several shard sets drawn by weight into one training stream, and
the count of what each source gave an epoch.

Each source is its own stream in every DataLoader worker of every rank: its shards are split over the
(rank, worker) slots (slot ``rank x workers + worker`` reads shards ``slot::slots``, so ranks and workers read
disjoint shards; a source with fewer shards than slots is resampled at random, as ``data.train_shards`` always
is), cycled pass after pass in a new order each pass (a source never runs out: a small source is re-read, with
a fresh shuffle, so the weights hold over the whole epoch), through its own shuffle buffer, metadata check and
optional class balance (per source, so balancing never shifts the shares). ``MixSources`` interleaves the
streams in a random order that keeps every prefix of the epoch within about one draw of the weights
(``weighted_draws``: jittered systematic sampling). Every random choice is seeded by (seed, epoch, rank,
worker, source), so a resumed epoch draws the same sequence. Each sample carries ``source`` (its index) and
``synthesis`` (the source's, for a synthesis stage), and so does its batch meta.

An epoch is ``data.epoch_samples``, else the sum of the sources' sample counts (as with one source: the weights
decide the mix, not the epoch's length). The loader counts the samples each source gave this rank
(``SourceTally``), and of a synthesis source how many it made fake and how many it kept real for want of
landmarks (``synthetic``); ``epoch_sources`` adds the ranks' counts up on rank 0, for the epoch's log line and
``report.json`` (per source, and all sources' ``synthetic`` total).
"""

import dataclasses
import heapq
import random

from dfdtrain.core.distributed import gather_to_rank0
from dfdtrain.core.errors import DfdError
from dfdtrain.data.loading.stages import BalanceClasses, ParseMeta, ReadTars, Shuffle, passes_through, stable_seed
from dfdtrain.data.loading.stages import worker_slot
from dfdtrain.data.shards.catalog import count_samples, label_counts, positive_class_weight
from dfdtrain.data.storage import expand_shards, redact

@dataclasses.dataclass
class Source:
    """One training source, resolved: its shard urls and its share of the draws (weight / sum of weights)."""

    index: int
    shards: str
    weight: float
    share: float
    synthesis: str
    urls: list
    keep_probability: dict = None  # data.class_balance: each label's keep probability within this source

    @property
    def key(self):
        return f"data.train_sources[{self.index}]"


def training_sources(data):
    """The Sources of ``data.train_sources`` (a DataConfig), shard patterns expanded (one line for a pattern that
    matches nothing, naming the entry)."""
    total = sum(entry.weight for entry in data.train_sources)
    sources = []
    for index, entry in enumerate(data.train_sources):
        try:
            urls = expand_shards(entry.shards)
        except DfdError as error:
            raise DfdError(f"data.train_sources[{index}].shards: {error}") from None
        sources.append(Source(index, entry.shards, entry.weight, entry.weight / total, entry.synthesis, urls))
    return sources


def training_urls(data):
    """Every training shard of ``data``: ``train_shards``' or, with ``train_sources``, each source's (once)."""
    if not data.train_sources:
        return expand_shards(data.train_shards)
    return list(dict.fromkeys(url for source in training_sources(data) for url in source.urls))


def keep_probabilities(urls):
    """``data.class_balance``: each label's keep probability over ``urls`` (the smaller class is kept whole)."""
    counts = label_counts(urls)
    smallest = min(count for count in counts.values() if count) or 1
    return {label: (smallest / count if count else 0.0) for label, count in counts.items()}


def positive_weight(data):
    """BCE pos_weight (real / fake) of the training data: the shard counts of ``train_shards``; with sources, each
    source's real and fake fractions weighted by its share (what the mixed stream holds)."""
    if not data.train_sources:
        return positive_class_weight(expand_shards(data.train_shards))
    fake = 0.0
    for source in training_sources(data):
        counts = label_counts(source.urls)
        fake += source.share * counts[1] / max(1, counts[0] + counts[1])
    if not fake:
        raise DfdError("no fake samples in data.train_sources' shards: cannot weight the classes")
    return (1 - fake) / fake


def epoch_length(sources, data):
    """Samples in an epoch over all ranks: ``data.epoch_samples``, else the sum of the sources' sample counts;
    a source without a sample is one line (it could never be drawn)."""
    if data.epoch_samples:
        return data.epoch_samples
    total = 0
    for source in sources:
        count = count_samples(source.urls)
        if not count:
            raise DfdError(f"{source.key}.shards ({source.shards}): its shards hold no sample")
        total += count
    return total


def weighted_draws(shares, rng):
    """Source indices forever, by jittered systematic sampling: source i's k-th draw falls at a random time in
    [k, k + 1) / share_i (``rng``) and the draws come in time order. The order is random, yet over any first n
    draws a source's count is within about one of n x share: a short epoch holds the weights as well as a long one."""
    heap = [((rng.random()) / share, index, 0) for index, share in enumerate(shares)]
    heapq.heapify(heap)
    while True:
        _, index, number = heapq.heappop(heap)
        yield index
        heapq.heappush(heap, ((number + 1 + rng.random()) / shares[index], index, number + 1))


class MixSources:
    """Training source stage: the sources' streams for this (rank, worker), interleaved by weight (the module's
    docstring). Yields parsed samples (``meta``, ``source``, ``synthesis``) and the streams' skip records; a
    source stream's error record ends the stream."""

    def __init__(self, sources, seed, epoch, rank, world_size, shuffle_buffer):
        self.sources, self.seed, self.epoch, self.rank, self.world_size = sources, seed, epoch, rank, world_size
        self.shuffle_buffer = shuffle_buffer

    def __call__(self):
        worker, slot, slots = worker_slot(self.rank, self.world_size)
        seed = f"{self.seed}:{self.epoch}:{self.rank}"
        streams = [self._stream(source, seed, worker, slot, slots) for source in self.sources]
        rng = random.Random(stable_seed(seed, worker, "mix"))
        for index in weighted_draws([source.share for source in self.sources], rng):
            for sample in streams[index]:  # skip records ride along until the source gives a sample
                yield sample
                if "error" in sample:
                    return
                if not passes_through(sample):
                    break
            else:
                return

    def _stream(self, source, seed, worker, slot, slots):
        seed = f"{seed}:source{source.index}"
        samples = self._read(source, self._shard_order(source, seed, worker, slot, slots), worker, slot, slots)
        samples = ParseMeta()(Shuffle(self.shuffle_buffer, seed)(samples))
        if source.keep_probability:
            samples = BalanceClasses(source.keep_probability, seed)(samples)
        return iter(samples)

    @staticmethod
    def _shard_order(source, seed, worker, slot, slots):
        rng = random.Random(stable_seed(seed, worker, "shards"))
        if len(source.urls) < slots:  # too few to split: every slot resamples them all
            while True:
                yield rng.choice(source.urls)
        mine = source.urls[slot::slots]
        while True:  # pass after pass, each in a new order
            order = list(mine)
            rng.shuffle(order)
            yield from order

    def _read(self, source, urls, worker, slot, slots):
        """The shards' samples tagged with the source; an error record when the shards hold none (the stream
        would otherwise spin for ever)."""
        split = len(source.urls) >= slots
        limit = 2 * len(source.urls[slot::slots]) if split else 64 * len(source.urls)  # every shard read, twice
        empty = 0
        for url in urls:
            found = False
            for sample in ReadTars.read(url):
                found = True
                if not passes_through(sample):
                    sample["source"], sample["synthesis"] = source.index, source.synthesis
                yield sample
                if "error" in sample:
                    return
            empty = 0 if found else empty + 1
            if empty >= limit:
                which = f"shards for rank {self.rank}, worker {worker}" if split else "shards"
                yield {"error": {"stage": "sources", "key": None, "shard": redact(url),
                                 "cause": f"{source.key} ({source.shards}): its {which} hold no sample"}}
                return


class SourceTally:
    """What each source gave this rank this epoch: the loader counts the samples of the batches it yields."""

    def __init__(self, sources):
        self.sources = sources
        self.last = None  # epoch_sources' last answer (rank 0), for report.json
        self.reset()

    def reset(self):
        self.counts = [0] * len(self.sources)
        self.synthetic = [0] * len(self.sources)  # made fake by the source's synthesis (synthetic.py)
        self.kept_real = [0] * len(self.sources)  # chosen for synthesis, kept real: no frame had landmarks

    def add(self, metas):
        for meta in metas:
            self.counts[meta["source"]] += 1
            self.synthetic[meta["source"]] += bool(meta.get("synthetic"))
            self.kept_real[meta["source"]] += bool(meta.get("synthesis_kept_real"))


def epoch_sources(loader):
    """The epoch's per-source counts over every rank, on rank 0 (other ranks: None): a list of {source, shards,
    weight, synthesis, samples, share}; None (and no collective) for a loader without sources. Every rank must
    call it (one gather)."""
    tally = getattr(loader, "source_tally", None)
    if tally is None:
        return None
    gathered = gather_to_rank0([tally.counts + tally.synthetic + tally.kept_real])
    if gathered is None:
        return None
    size = len(tally.sources)
    summed = [sum(column) for column in zip(*gathered)]
    counts, synthetic, kept_real = summed[:size], summed[size:2 * size], summed[2 * size:]
    total = max(1, sum(counts))
    tally.last = [{"source": source.index, "shards": source.shards, "weight": source.weight,
                   "synthesis": source.synthesis, "samples": count, "share": count / total,
                   **({"synthetic": made, "synthetic_share": made / max(1, count), "kept_real": kept}
                      if source.synthesis else {})}
                  for source, count, made, kept in zip(tally.sources, counts, synthetic, kept_real)]
    return tally.last


def source_report(loader):
    """The last epoch's per-source counts (``epoch_sources``) for ``report.json``, or None."""
    return getattr(getattr(loader, "source_tally", None), "last", None)


def synthetic_summary(entries):
    """The epoch's synthetic samples over every source: {samples, share (of all samples), kept_real}, or None
    when no source has a synthesis."""
    made = [entry for entry in entries or [] if "synthetic" in entry]
    if not made:
        return None
    synthetic = sum(entry["synthetic"] for entry in made)
    return {"samples": synthetic, "share": synthetic / max(1, sum(entry["samples"] for entry in entries)),
            "kept_real": sum(entry["kept_real"] for entry in made)}


def synthetic_report(loader):
    """``{"synthetic": synthetic_summary}`` of the last epoch for ``report.json``, or {}."""
    summary = synthetic_summary(source_report(loader))
    return {"synthetic": summary} if summary else {}


def source_values(entries):
    """``{"train_sources": {index: {samples, share[, synthetic, kept_real]}}[, "synthetic": {...}]}`` for
    metrics.jsonl and W&B, or {} without sources."""
    if not entries:
        return {}
    fields = ("samples", "share", "synthetic", "kept_real")
    values = {"train_sources": {str(entry["source"]): {name: entry[name] for name in fields if name in entry}
                                for entry in entries}}
    return {**values, **({"synthetic": synthetic_summary(entries)} if synthetic_summary(entries) else {})}


def describe_sources(entries):
    """One line: each source's samples and share of the epoch against its weight's share, or "" without."""
    if not entries:
        return ""
    total_weight = sum(entry["weight"] for entry in entries)
    parts = [f"[{entry['source']}] {entry['shards']}" + (f" ({entry['synthesis']})" if entry["synthesis"] else "")
             + f" {entry['samples']} = {entry['share']:.1%} (weight {entry['weight'] / total_weight:.1%})"
             + (f", {entry['synthetic']} synthetic = {entry['synthetic_share']:.1%} of its samples"
                + (f", {entry['kept_real']} kept real (no landmarks)" if entry["kept_real"] else "")
                if "synthetic" in entry else "")
             for entry in entries]
    summary = synthetic_summary(entries)
    synthetic = (f"; synthetic fakes: {summary['samples']} = {summary['share']:.1%} of the epoch"
                 if summary else "")
    return f"train sources this epoch, all ranks: {'; '.join(parts)}{synthetic}"
