"""The rate chart: download and upload bytes per second over the last minutes, as SVG numbers.

Pure: samples in, polyline points out; the template draws them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

WINDOW_SECONDS = 300.0
BUCKET_SECONDS = 5.0
WIDTH = 600
HEIGHT = 160
BUCKETS = int(WINDOW_SECONDS / BUCKET_SECONDS)


@dataclass(frozen=True)
class Series:
    label: str
    rates: list[float]  # bytes per second, one per bucket, oldest first

    @property
    def peak(self) -> float:
        return max(self.rates, default=0.0)


@dataclass(frozen=True)
class Chart:
    series: list[Series]
    scale: float  # bytes per second at the top of the chart
    buckets: int

    def points(self, series: Series) -> str:
        """`x,y x,y ...` for an SVG polyline, y growing downwards."""
        step = WIDTH / max(1, self.buckets - 1)
        return " ".join(
            f"{i * step:.1f},{HEIGHT - HEIGHT * rate / self.scale:.1f}"
            for i, rate in enumerate(series.rates)
        )


def bucket_rates(pairs: Iterable[tuple[int, int]], count: int) -> list[float]:
    """(bucket number, bytes) pairs to bytes per second per bucket; out-of-range ones dropped."""
    rates = [0.0] * count
    for index, n in pairs:
        if 0 <= index < count:
            rates[index] += n / BUCKET_SECONDS
    return rates


def make_chart(download: list[float], upload: list[float]) -> Chart:
    series = [Series("download", download), Series("upload", upload)]
    top = max((s.peak for s in series), default=0.0)
    return Chart(series, top if top > 0 else 1.0, len(download))
