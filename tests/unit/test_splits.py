"""Group splits: never leaking a group across splits, stratified, deterministic by seed, official rows kept."""

import collections
import random

import pytest

from dfdtrain.data.ingest.splits import assign_splits, enforce_no_leakage, leaking_groups
from dfdtrain.core.errors import DfdError


def assert_no_leakage(rows):
    splits_of = collections.defaultdict(set)
    for row in rows:
        splits_of[row["group"]].add(row["split"])
    assert all(len(splits) == 1 for splits in splits_of.values()), leaking_groups(rows)


# ---------------------------------------------------------------------------------------------- splits
def test_group_splits_never_leak_and_stay_stratified():
    for seed in range(30):
        rng = random.Random(seed)
        rows = []
        for group in range(rng.randint(5, 120)):
            for _ in range(rng.randint(1, 6)):
                rows.append({"group": f"g{group}", "label": int(rng.random() < 0.7), "split": None})
        assign_splits(rows, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=seed)
        assert_no_leakage(rows)
        assert {row["split"] for row in rows} == {"train", "val", "test"}  # >= 3 groups: none left empty
    # with many small groups, each split gets close to its share of each label
    rows = [{"group": f"g{i // 2}", "label": int(i % 10 < 3), "split": None} for i in range(2000)]
    assign_splits(rows, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=1)
    for split, share in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        for label, total in ((0, 1400), (1, 600)):
            count = sum(row["split"] == split and row["label"] == label for row in rows)
            assert abs(count - share * total) <= 0.02 * total, (split, label, count)


def test_official_rows_stay_and_only_an_empty_split_takes_a_group():
    # FF++-like: official train and val, no official test; two unlisted groups: test gets the smaller one
    rows = [{"group": "pair", "label": label, "split": split} for label, split in ((0, "train"), (1, "train"))]
    rows += [{"group": "listed-val", "label": 0, "split": "val"}]
    rows += [{"group": "big", "label": label, "split": None} for label in (0, 0, 1)]
    rows += [{"group": "small", "label": 0, "split": None}]
    assign_splits(rows, {"train": 0.8, "val": 0.1, "test": 0.1}, seed=0)
    assert [row["split"] for row in rows[:3]] == ["train", "train", "val"]
    assert {row["split"] for row in rows if row["group"] == "small"} == {"test"}
    assert_no_leakage(rows)
    lonely = [{"group": "only", "label": 0, "split": None}]  # one group: nothing to spare
    assert [row["split"] for row in assign_splits(lonely, {"train": 0.8, "val": 0.2})] == ["train"]


def test_split_is_deterministic_by_seed():
    def split(seed):
        rows = [{"group": f"g{i // 3}", "label": i % 2, "split": None} for i in range(300)]
        return [row["split"] for row in assign_splits(rows, {"train": 0.6, "val": 0.2, "test": 0.2}, seed)]

    assert split(3) == split(3) and split(3) != split(4)


def test_leakage_policy_error_names_groups():
    rows = [{"group": "g1", "label": 0, "split": "train"}, {"group": "g1", "label": 1, "split": "test"}]
    with pytest.raises(DfdError, match=r"g1 \(test/train\)"):
        enforce_no_leakage(rows, "error")
    kept, excluded, _ = enforce_no_leakage([dict(row) for row in rows], "exclude")
    assert [row["split"] for row in kept] == ["test"] and len(excluded) == 1
