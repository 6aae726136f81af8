"""A speedup from paired rounds: the ratio round by round, its two-level (copies, then blocks of rounds)
bootstrap interval, what varies between runs added to it, and how far the machine moved while the rounds were
taken."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Sequence

from .measure import Measurement


@dataclass(frozen=True)
class Ratio:
    """A ratio of two timings from paired samples, with a bootstrap confidence interval."""

    value: float  # the median, over rounds (and replicates), of (numerator sample / denominator sample)
    lo: float
    hi: float

    @property
    def clear(self) -> bool:
        """False when the interval holds 1.0: no clear difference between the two."""
        return not self.lo <= 1.0 <= self.hi


def _replicates(m: "Measurement | Sequence[Measurement]") -> list[Measurement]:
    return [m] if isinstance(m, Measurement) else list(m)


def per_round(copies: "Measurement | Sequence[Measurement]") -> Measurement:
    """Copies of one function timed in the same rounds, as one: round by round, the median over the copies
    (one copy that landed on unlucky memory moves it less than a mean would)."""
    import numpy as np

    copies = _replicates(copies)
    samples = np.median(np.stack([np.asarray(c.samples_ms, dtype=float) for c in copies]), axis=0)
    return Measurement(tuple(float(x) for x in samples), copies[0].calls_per_sample)


def block_length(series: Sequence[float]) -> int:
    """Rounds per block for the bootstrap of a per-round series: the first lag at which the series is no longer
    correlated with itself (autocorrelation under 2/sqrt(n)), at most a third of the rounds. Drift that lasts
    longer than a round makes neighbouring rounds alike; resampling single rounds would treat them as
    independent and claim a precision the run does not have."""
    import numpy as np

    x = np.log(np.asarray(series, dtype=float))
    n = len(x)
    if n < 6 or not np.all(np.isfinite(x)):
        return 1
    x = x - x.mean()
    var = float(x @ x)
    if var == 0:
        return 1
    limit, cap = 2 / math.sqrt(n), max(1, n // 3)
    for lag in range(1, cap + 1):
        if float(x[:-lag] @ x[lag:]) / var < limit:  # only persistence widens: alternation is no drift
            return lag
    return cap


def _block_rounds(rng, rounds: int, block: int, resamples: int):
    """Circular moving-block resamples of round indices: (resamples, rounds)."""
    import numpy as np

    blocks = -(-rounds // block)
    starts = rng.integers(rounds, size=(resamples, blocks, 1))
    return ((starts + np.arange(block)) % rounds).reshape(resamples, blocks * block)[:, :rounds]


# What one run cannot see. Five fresh processes on a quiet 2-core Xeon (504 MiB L3; benchmarks/reproducibility.py
# --runs 5, 2026-12-04) read each mode's speedup 0-4.9 % from the five-run median (pooled spread between runs
# 1.6 %; the A/A's 0.1 %), while each run's interval claimed +-0.3-1 % and held the median in 3 of 5 runs or
# fewer for 4 of 8 modes. The machine's state over minutes set those differences, which no run's rounds met. So
# every interval carries a between-runs term too, 1.96 x that spread: a run that met one calm minute claims no
# more precision than repeated runs show.
BETWEEN_RUNS_REL = 0.03


def across_runs(r: Ratio, rel: float = BETWEEN_RUNS_REL) -> Ratio:
    """`r` with the between-runs term added to each half of its interval, in quadrature on a log scale: an
    interval much wider than the term barely changes, a narrower one grows to about +-rel."""
    s = math.log1p(rel)

    def edge(at: float, side: float) -> float:
        return r.value * math.exp(side * math.hypot(math.log(at / r.value), s))

    return Ratio(r.value, edge(r.lo, -1.0), edge(r.hi, 1.0))


def drift(samples_ms: Sequence[float], parts: int = 10) -> tuple[float, float] | None:
    """(fastest, slowest) median of `parts` consecutive stretches of the rounds: how far the machine moved while
    they were taken. None with fewer than two rounds per stretch."""
    if len(samples_ms) < 2 * parts:
        return None
    size = len(samples_ms) / parts
    meds = [statistics.median(samples_ms[round(i * size):round((i + 1) * size)]) for i in range(parts)]
    return min(meds), max(meds)


def paired_ratio(num: "Measurement | Sequence[Measurement]", den: "Measurement | Sequence[Measurement]",
                 confidence: float = 0.95, resamples: int = 2000, seed: int = 0, min_block: int = 1) -> Ratio:
    """Round by round, num/den (both saw the same machine); the median of those, and a bootstrap
    interval of that median.

    With copies (independently allocated replicates of a side, timed in the same rounds), a round's value
    of a side is the median over its copies, and the bootstrap resamples at both levels: each side's
    copies with replacement, then rounds. Copies that read differently (memory-placement luck: one of
    three compiled copies of the demo read 40 % slower than the other two, in 2 of 3 fresh processes)
    so widen the interval; identical copies leave it as narrow as the rounds make it. Rounds are resampled
    in blocks of neighbours (`block_length` of the per-round ratios, at least `min_block`), so a ratio that
    drifts with the machine widens the interval by as much as the drift the rounds saw. A fixed seed: the same
    samples give the same interval.
    """
    import numpy as np

    sides = [np.stack([np.asarray(c.samples_ms, dtype=float) for c in _replicates(m)]) for m in (num, den)]
    rounds = sides[0].shape[1]
    per_round = np.median(sides[0], axis=0) / np.median(sides[1], axis=0)
    value = np.median(per_round)
    rng = np.random.default_rng(seed)
    block = min(max(min_block, block_length(per_round)), max(1, rounds // 3))
    picked_rounds = _block_rounds(rng, rounds, block, resamples)[:, None, :]
    medians = []
    for side in sides:
        picked_copies = rng.integers(side.shape[0], size=(resamples, side.shape[0], 1))
        medians.append(np.median(side[picked_copies, picked_rounds], axis=1))  # (resamples, rounds)
    estimates = np.median(medians[0] / medians[1], axis=1)
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(estimates, [tail, 1 - tail])
    # Resampling n copies underestimates the spread between them by (n-1)/n in variance (the plug-in
    # estimate): with three copies, 5 fresh processes' int8 weight-only intervals held their median in 3 of
    # 5 runs, each missing it by < 0.5 %. Widen the half-widths by the usual sqrt(n / (n-1)).
    copies = max(side.shape[0] for side in sides)
    widen = math.sqrt(copies / (copies - 1)) if copies > 1 else 1.0
    return Ratio(float(value), float(value - widen * (value - lo)), float(value + widen * (hi - value)))
