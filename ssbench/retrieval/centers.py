"""Hash centers for CSQ: rows of a Sylvester Hadamard matrix, or seeded random +-1 codes."""
from __future__ import annotations

import torch
from torch import Tensor


def is_power_of_two(n: int) -> bool:
    return n >= 1 and n & (n - 1) == 0


def hadamard(n: int) -> Tensor:
    """Sylvester construction H_{2m} = [[H, H], [H, -H]], H_1 = [1]; rows are pairwise orthogonal."""
    if not is_power_of_two(n):
        raise ValueError(f"Sylvester Hadamard matrices exist for powers of two, not {n}")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hamming_matrix(codes: Tensor) -> Tensor:
    """Pairwise Hamming distances of +-1 codes (N x K) -> N x N."""
    k = codes.shape[1]
    return 0.5 * (k - codes @ codes.T)


def random_centers(num: int, bits: int, *, min_distance: int | None = None, seed: int = 0, tries: int = 10_000) -> Tensor:
    """``num`` random +-1 codes whose pairwise Hamming distance is at least ``min_distance``.

    Greedy rejection sampling from a generator seeded by ``seed``. Default ``min_distance`` is
    ``bits // 4`` (the expected distance of random codes is ``bits / 2``).
    """
    d_min = bits // 4 if min_distance is None else int(min_distance)
    if d_min > bits:
        raise ValueError(f"min_distance {d_min} exceeds the code length {bits}")
    g = torch.Generator().manual_seed(seed)
    out: list[Tensor] = []
    attempts = 0
    while len(out) < num:
        attempts += 1
        if attempts > tries:
            raise ValueError(
                f"could not draw {num} centers of {bits} bits at Hamming distance >= {d_min}; lower min_distance or add bits"
            )
        c = torch.randint(0, 2, (bits,), generator=g).float() * 2 - 1
        if all(int(0.5 * (bits - float(c @ o))) >= d_min for o in out):
            out.append(c)
    return torch.stack(out)


def hash_centers(num_classes: int, bits: int, *, seed: int = 0) -> Tensor:
    """CSQ centers (num_classes x bits, +-1).

    bits a power of two and num_classes <= 2*bits: rows of [H; -H] (H Sylvester Hadamard), in a
    seeded random order of the rows of H first (pairwise distance exactly bits/2 while
    num_classes <= bits; a center and its negation are bits apart). Otherwise: random centers at
    Hamming distance >= bits/4.
    """
    if is_power_of_two(bits) and num_classes <= 2 * bits:
        h = hadamard(bits)
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(bits, generator=g)
        rows = torch.cat([h[perm], -h[perm]], 0)
        return rows[:num_classes].clone()
    return random_centers(num_classes, bits, seed=seed)
