"""Prometheus text exposition (format 0.0.4) without a client library: counters, gauges, histograms."""

from __future__ import annotations

import bisect
import math
import threading
from collections.abc import Callable, Iterable, Mapping

__all__ = ["Metrics"]

Labels = tuple[tuple[str, str], ...]

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0)
DURATION_BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 120.0)


def _labels(labels: Mapping[str, str] | None) -> Labels:
    return tuple(sorted((labels or {}).items()))


def _fmt_labels(labels: Labels, extra: tuple[str, str] | None = None) -> str:
    items = [*labels, *([extra] if extra else [])]
    if not items:
        return ""
    escaped = (
        f'{k}="{v.replace(chr(92), chr(92) * 2).replace(chr(34), chr(92) + chr(34)).replace(chr(10), "")}"'
        for k, v in items
    )
    return "{" + ",".join(escaped) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class _Histogram:
    def __init__(self, buckets: tuple[float, ...]) -> None:
        self.buckets = buckets
        self.counts = [0] * (len(buckets) + 1)
        self.total = 0.0
        self.n = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.buckets, value)] += 1
        self.total += value
        self.n += 1


class Metrics:
    """Thread-safe registry. Gauges may also be computed at scrape time by collectors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._help: dict[str, tuple[str, str]] = {}
        self._counters: dict[str, dict[Labels, float]] = {}
        self._gauges: dict[str, dict[Labels, float]] = {}
        self._histograms: dict[str, dict[Labels, _Histogram]] = {}
        self._buckets: dict[str, tuple[float, ...]] = {}
        self._collectors: list[Callable[[], Iterable[tuple[str, str, Mapping[str, str], float]]]] = []

    def describe(self, name: str, kind: str, help_text: str, buckets: tuple[float, ...] = ()) -> None:
        self._help[name] = (kind, help_text)
        if kind == "histogram":
            self._buckets[name] = buckets
            self._histograms.setdefault(name, {})
        elif kind == "counter":
            self._counters.setdefault(name, {})
        else:
            self._gauges.setdefault(name, {})

    def inc(self, name: str, value: float = 1.0, labels: Mapping[str, str] | None = None) -> None:
        key = _labels(labels)
        with self._lock:
            series = self._counters.setdefault(name, {})
            series[key] = series.get(key, 0.0) + value

    def set(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        with self._lock:
            self._gauges.setdefault(name, {})[_labels(labels)] = value

    def observe(self, name: str, value: float, labels: Mapping[str, str] | None = None) -> None:
        key = _labels(labels)
        with self._lock:
            series = self._histograms.setdefault(name, {})
            hist = series.get(key)
            if hist is None:
                hist = series[key] = _Histogram(self._buckets.get(name, DURATION_BUCKETS))
            hist.observe(value)

    def counter_value(self, name: str, labels: Mapping[str, str] | None = None) -> float:
        with self._lock:
            return self._counters.get(name, {}).get(_labels(labels), 0.0)

    def add_collector(self, collect: Callable[[], Iterable[tuple[str, str, Mapping[str, str], float]]]) -> None:
        """collect() yields (name, help, labels, value) gauges computed at scrape time."""
        self._collectors.append(collect)

    def render(self) -> str:
        lines: list[str] = []
        collected: dict[str, tuple[str, list[tuple[Labels, float]]]] = {}
        for collect in self._collectors:
            for name, help_text, labels, value in collect():
                collected.setdefault(name, (help_text, []))[1].append((_labels(labels), value))
        with self._lock:
            for name, series in sorted(self._counters.items()):
                self._header(lines, name, "counter")
                lines.extend(f"{name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in sorted(series.items()))
            for name, series in sorted(self._gauges.items()):
                self._header(lines, name, "gauge")
                lines.extend(f"{name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in sorted(series.items()))
            for name, hists in sorted(self._histograms.items()):
                self._header(lines, name, "histogram")
                for key, hist in sorted(hists.items()):
                    running = 0
                    for bound, count in zip((*hist.buckets, math.inf), hist.counts, strict=True):
                        running += count
                        lines.append(f"{name}_bucket{_fmt_labels(key, ('le', _fmt_value(bound)))} {running}")
                    lines.append(f"{name}_sum{_fmt_labels(key)} {_fmt_value(hist.total)}")
                    lines.append(f"{name}_count{_fmt_labels(key)} {hist.n}")
        for name, (help_text, values) in sorted(collected.items()):
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} gauge")
            lines.extend(f"{name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in values)
        return "\n".join(lines) + "\n"

    def _header(self, lines: list[str], name: str, kind: str) -> None:
        help_text = self._help.get(name, (kind, name))[1]
        lines.append(f"# HELP {name} {help_text}")
        lines.append(f"# TYPE {name} {kind}")
