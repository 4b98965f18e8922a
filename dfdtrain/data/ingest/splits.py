"""Leakage-free splits: whole groups go to one split, stratified by label, seeded.

The reference projects split frames (or videos of the same person) across train and test and reported
inflated scores; here a group (DFDC original cluster, FF++ pair, Celeb-DF identity, a folder's person)
never lands in two splits unless the user explicitly asks for a report instead of a refusal.
"""

import collections
import random

from dfdtrain.core.errors import DfdError

SPLITS = ("train", "val", "test")
LEAKAGE_POLICIES = ("error", "exclude", "report")


def assign_splits(rows, fractions, seed=0):
    """Give every row whose split is None a split, keeping each group whole and labels balanced.

    ``fractions``: {"train": 0.8, "val": 0.1, "test": 0.1} (normalised). Rows that already hold a split
    (a dataset's official split files) keep it. The unassigned rows of each group are dealt as one unit,
    largest units first (ties in seeded random order), each to the split whose per-label counts are
    furthest below target. A group that is partly official and partly not is dealt like any other unit,
    so a conflict with its official split shows up in the leakage check instead of silently growing an
    official test set. A split asked for that would get no group gets one from a split that can spare it.
    """
    total = sum(fractions.values())
    if total <= 0 or any(value < 0 for value in fractions.values()):
        raise DfdError(f"split fractions must be non-negative and not all zero: {fractions}")
    fractions = {split: value / total for split, value in fractions.items() if value > 0}
    units = collections.defaultdict(list)
    for row in rows:
        if row["split"] is None:
            units[row["group"]].append(row)
    units = [units[group] for group in sorted(units)]

    labels = sorted({row["label"] for unit in units for row in unit})
    wanted = {split: {label: fraction * sum(row["label"] == label for unit in units for row in unit)
                      for label in labels} for split, fraction in fractions.items()}
    have = {split: dict.fromkeys(labels, 0) for split in fractions}

    preset = {row["group"] for row in rows if row["split"] is not None}
    random.Random(seed).shuffle(units)
    units.sort(key=len, reverse=True)  # stable: units of equal size stay in shuffled order
    for unit in units:
        counts = collections.Counter(row["label"] for row in unit)

        def shortfall(split):
            # how far below target the split is, in the labels this unit would add
            return sum((wanted[split][label] - have[split][label]) * count for label, count in counts.items())

        split = max(fractions, key=shortfall)
        for label, count in counts.items():
            have[split][label] += count
        for row in unit:
            row["split"] = split
    fill_empty_splits(rows, [unit for unit in units if unit[0]["group"] not in preset], fractions)
    return rows


def fill_empty_splits(rows, movable, splits):
    """Give every split in ``splits`` that has no group one, when another split can spare one.

    On a small dataset a 10% share can round to no group at all, leaving no val or test set without a word.
    ``movable``: the dealt units (lists of rows of one group, no official rows) largest first. A donor is the
    split with the most groups that keeps at least one; it gives its smallest movable unit.
    """
    groups_in = collections.defaultdict(set)
    for row in rows:
        groups_in[row["split"]].add(row["group"])
    for split in splits:
        if groups_in[split]:
            continue
        donors = [donor for donor in splits if len(groups_in[donor]) >= 2
                  and any(unit[0]["split"] == donor for unit in movable)]
        if not donors:
            continue  # too few groups: the caller warns about the splits still empty
        donor = max(donors, key=lambda name: len(groups_in[name]))
        unit = next(unit for unit in reversed(movable) if unit[0]["split"] == donor)
        for row in unit:
            row["split"] = split
        groups_in[donor].discard(unit[0]["group"])
        groups_in[split].add(unit[0]["group"])
    return rows


def empty_splits(rows, fractions):
    """The splits asked for (fraction > 0) that hold no row."""
    present = {row["split"] for row in rows}
    return [split for split, fraction in fractions.items() if fraction > 0 and split not in present]


def leaking_groups(rows):
    """{group: sorted splits} for every group that appears in more than one split."""
    splits_of = collections.defaultdict(set)
    for row in rows:
        splits_of[row["group"]].add(row["split"])
    return {group: sorted(splits) for group, splits in splits_of.items() if len(splits) > 1}


def enforce_no_leakage(rows, policy="error", protected_split="test", source="manifest"):
    """Apply the leakage policy. Returns (kept rows, excluded rows, leaking groups).

    error: refuse with one line naming the groups; exclude: drop the rows of a leaking group that are not
    in ``protected_split`` (an official test set stays whole); report: keep everything and mark rows.
    """
    if policy not in LEAKAGE_POLICIES:
        raise DfdError(f"leakage policy must be one of {', '.join(LEAKAGE_POLICIES)}, not {policy!r}")
    leaks = leaking_groups(rows)
    if not leaks:
        return rows, [], leaks
    if policy == "error":
        examples = ", ".join(f"{group} ({'/'.join(splits)})" for group, splits in list(leaks.items())[:3])
        raise DfdError(f"{source}: {len(leaks)} group(s) would be in two splits, e.g. {examples}; "
                       "use --leakage exclude to drop their non-test videos, --leakage report to keep and "
                       "mark them, or --no-official-splits to split by group")
    if policy == "exclude":
        kept, excluded = [], []
        for row in rows:
            if row["group"] in leaks and row["split"] != protected_split:
                excluded.append(row)
            else:
                kept.append(row)
        return kept, excluded, leaks
    for row in rows:
        if row["group"] in leaks:
            row["leak"] = True
    return rows, [], leaks
