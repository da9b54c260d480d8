"""Small-cell suppression: which counts of a breakdown may leave the partner.

One rule for every exported breakdown (quality summaries, analytics partitions): a cell over
fewer than ``min_count`` customers is withheld; and while the withheld cells could be worked
out from the published ones (a single withheld cell, or withheld cells adding up to fewer than
``min_count``, next to a published total), the next-smallest published cell is withheld too
(complementary suppression). Pure: callers log the withheld names in their own words.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping


def suppress(counts: Mapping[str, int], *, min_count: int, protected: Collection[str] = ()) -> tuple[list[str], list[str]]:
    """Split cell names into (published, withheld), each in the order of ``counts``.

    Empty cells (0 customers) are published as zeros: they reveal no one. ``protected`` cells
    (e.g. a total) are never chosen for complementary suppression.
    """
    withheld = [k for k, v in counts.items() if 0 < v < min_count]
    complementary: list[str] = []
    candidates = [k for k, v in counts.items() if v >= min_count and k not in protected]
    while withheld and candidates and (
        len(withheld) + len(complementary) == 1 or sum(counts[k] for k in [*withheld, *complementary]) < min_count
    ):
        extra = min(candidates, key=lambda k: (counts[k], k))
        candidates.remove(extra)
        complementary.append(extra)
    hidden = set(withheld) | set(complementary)
    return [k for k in counts if k not in hidden], withheld + complementary
