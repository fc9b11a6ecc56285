"""The frame window: which 2k+1 frames a network sees for the frame it upscales.

Frame n reads n-k .. n+k. Where that reaches past the clip's ends or across a shot cut, the nearest frame
on the centre's side repeats instead: a window never mixes two shots. Pass two (both integrations),
training and the benchmarks all choose windows here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np


def window_numbers(centre: int, k: int, exists: Callable[[int], bool], cut_after: Callable[[int], bool]) -> list[int]:
    """The frame numbers of the window around `centre`, in order. exists(m): frame m is part of the clip
    (streams learn their length only at the end); cut_after(m): a new shot starts at frame m + 1."""
    numbers = [centre]
    for _ in range(k):  # backwards from the centre
        m = numbers[0] - 1
        numbers.insert(0, m if m >= 0 and exists(m) and not cut_after(m) else numbers[0])
    for _ in range(k):
        m = numbers[-1] + 1
        numbers.append(m if exists(m) and not cut_after(numbers[-1]) else numbers[-1])
    return numbers


def window_indices(centres: Iterable[int], length: int, window: int, cuts: Iterable[int] = ()) -> np.ndarray:
    """[len(centres), window] frame numbers for frames of a clip of `length` frames whose shots start at
    `cuts` (frame numbers; 0 is implied)."""
    starts = set(cuts)
    return np.array([window_numbers(c, window // 2, lambda m: m < length, lambda m: m + 1 in starts) for c in centres],
                    dtype=np.int64).reshape(-1, window)
