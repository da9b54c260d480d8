"""Named vectors of statistics encoded so that SecAgg+ sums them exactly (both sides use this codec).

Flower's SecAgg+ (``secaggplus_mod``) multiplies every value by ``num_examples / max_weight``,
clips it into ``[-clipping_range, clipping_range]`` and quantises it with *stochastic*
rounding onto ``quantization_range`` levels; the coordinator gets the weighted mean. That
suits model parameters, not counts of a million customers or sums of squares of ``1e11``.
No library offers exact secure sums on top of Flower's SecAgg+, so this module
(hand-written, pure integer arithmetic) makes the quantiser an identity:

- every partner sends ``num_examples = 1`` and the workflow's ``max_weight = 1``, so the
  ratio is exactly 1;
- ``clipping_range = quantization_range / 2``, so one quantisation step is exactly 1.0 and
  a value that is already an integer in range is quantised without rounding (stochastic
  rounding only moves non-integers);
- each statistic ``s`` becomes the fixed-point integer ``V = round(s · 2**fraction_bits)``,
  written as ``limbs`` balanced digits in base ``B = quantization_range / 2`` (each digit in
  ``[-B/2, B/2)``, inside the clipping range).

The coordinator gets the mean of the digit vectors; times the number of contributors it is
the digit-wise sum (integers below ``n · B``, exact in float64), which recomposes with Python
integers into ``Σ V`` exactly. The only error is the fixed-point rounding at each partner:
``|decoded − Σ s_i| ≤ n · 2**-(fraction_bits + 1)`` (3.0e-8 for 1 partner at the default 24
bits), plus float64's relative 2**-53 when the exact rational ``Σ V / 2**fraction_bits``
is turned into a float. Integer cells (counts) are exact. The digit sums must not wrap the
SecAgg+ modulus: ``n · quantization_range < modulus_range`` (1,023 partners at the defaults).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from fedcrm.errors import ProtocolError

#: Defaults: Flower's own quantisation and modulus ranges; 24 fraction bits, 5 limbs of 21 bits (±2**104).
DEFAULT_QUANTIZATION_RANGE = 2**22
DEFAULT_MODULUS_RANGE = 2**32
DEFAULT_FRACTION_BITS = 24
DEFAULT_LIMBS = 5


@dataclass(frozen=True)
class SecureVectorCodec:
    """The fixed-point limb encoding of one secure sum (the same on every partner and the coordinator)."""

    quantization_range: int = DEFAULT_QUANTIZATION_RANGE
    modulus_range: int = DEFAULT_MODULUS_RANGE
    fraction_bits: int = DEFAULT_FRACTION_BITS
    limbs: int = DEFAULT_LIMBS

    def __post_init__(self) -> None:
        q = self.quantization_range
        if q < 4 or q & (q - 1):
            raise ValueError(f"quantization_range must be a power of 2 of at least 4, got {q}")
        if self.modulus_range <= q:
            raise ValueError("modulus_range must exceed quantization_range")
        if not 0 <= self.fraction_bits <= 64 or self.limbs < 1:
            raise ValueError("fraction_bits must be in [0, 64] and limbs at least 1")

    @property
    def clipping_range(self) -> float:
        """The SecAgg+ clipping range that makes one quantisation step exactly 1."""
        return float(self.quantization_range // 2)

    @property
    def base(self) -> int:
        """Base of the balanced digits."""
        return self.quantization_range // 2

    @property
    def max_abs(self) -> float:
        """Largest |statistic| one partner can encode."""
        return (self.base ** self.limbs // 4) / 2**self.fraction_bits

    def max_partners(self) -> int:
        """Most contributors whose digit sums stay below the SecAgg+ modulus."""
        return (self.modulus_range - 1) // self.quantization_range

    def error_bound(self, partners: int) -> float:
        """Worst-case absolute error of a decoded sum over ``partners`` (fixed-point rounding only)."""
        return partners * 2.0 ** -(self.fraction_bits + 1)

    # -- partner side ----------------------------------------------------------------------
    def encode(self, names: Sequence[str], values: Mapping[str, float]) -> np.ndarray:
        """Digits of ``values`` in the order of ``names`` (a name absent from ``values`` contributes 0).

        Returns a float64 array of shape ``(len(names), limbs)`` holding integers; a value
        the encoding cannot hold raises ``ProtocolError`` naming it.
        """
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise ProtocolError(f"secure sum: cells {unknown[:5]} are not in the order's list of cells")
        out = np.zeros((len(names), self.limbs), dtype=np.float64)
        scale = 2**self.fraction_bits
        half = self.base // 2
        for row, name in enumerate(names):
            value = values.get(name)
            if value is None:
                continue
            value = float(value)
            if not math.isfinite(value) or abs(value) > self.max_abs:
                raise ProtocolError(f"secure sum: cell '{name}' = {value!r} is outside what the encoding holds "
                                    f"(|value| ≤ {self.max_abs:.3g})")
            rest = round(value * scale)  # Python int: exact for any float64
            for limb in range(self.limbs):
                digit = rest % self.base
                if digit >= half:
                    digit -= self.base
                out[row, limb] = digit
                rest = (rest - digit) // self.base
            if rest != 0:  # unreachable given max_abs; kept as a guard against silent wrap-around
                raise ProtocolError(f"secure sum: cell '{name}' overflows {self.limbs} limbs")
        return out

    # -- coordinator side ------------------------------------------------------------------
    def decode(self, names: Sequence[str], mean_digits: np.ndarray, contributors: int) -> dict[str, float]:
        """Sum over ``contributors`` from the SecAgg+ aggregate (the mean of their digit arrays)."""
        if contributors < 1:
            raise ProtocolError("secure sum: no contributor")
        if contributors > self.max_partners():
            raise ProtocolError(f"secure sum: {contributors} contributors exceed the {self.max_partners()} "
                                "the modulus range allows")
        digits = np.asarray(mean_digits, dtype=np.float64).reshape(len(names), self.limbs) * contributors
        sums = np.rint(digits)
        if np.max(np.abs(sums - digits), initial=0.0) > 0.25:
            raise ProtocolError("secure sum: the aggregate is not integral: the SecAgg+ settings do not "
                                "match the codec (clipping range, max_weight or num_examples)")
        scale = 2**self.fraction_bits
        out: dict[str, float] = {}
        for row, name in enumerate(names):
            total = 0
            for limb in reversed(range(self.limbs)):
                total = total * self.base + int(sums[row, limb])
            out[name] = total / scale  # exact rational → nearest float64
        return out
