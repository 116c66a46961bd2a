"""Timing and statistics: clocks, calibration, and the summary of a list of samples.

A *sample* is the mean time of ``number`` back-to-back calls of a function, so that calls much
shorter than the timer's resolution (and than Python's own noise) still give a stable number;
``number`` is calibrated once per function so that one sample lasts about ``target`` seconds.
A measurement is ``repeat`` samples, summarised by their median and spread (quartiles, min, max):
the machine is shared, so medians and not minima or means are what the reports quote.
"""

import math
import time

import numpy as np


def summarize(samples):
    """Summary statistics of a list of times (seconds).

    Returns a dict: n, median, mean, min, max, q1, q3 (linear-interpolated quartiles, NumPy's
    default), iqr = q3 - q1, rel_iqr = iqr / median (the noise figure quoted in tables), and
    the samples themselves.
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"summarize: expected a non-empty 1-D list of times, got shape {a.shape}")
    if not np.all(np.isfinite(a)) or np.any(a < 0):
        raise ValueError("summarize: times must be finite and non-negative")
    q1, median, q3 = (float(q) for q in np.percentile(a, [25, 50, 75]))
    return {
        "n": int(a.size),
        "median": median,
        "mean": float(a.mean()),
        "min": float(a.min()),
        "max": float(a.max()),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "rel_iqr": (q3 - q1) / median if median > 0 else 0.0,
        "samples": [float(t) for t in a],
    }


def rate(amount, seconds, unit=1e9):
    """``amount / seconds / unit`` (e.g. FLOP → GFLOP/s), None when either is missing/zero."""
    if amount is None or seconds is None or seconds <= 0:
        return None
    return amount / seconds / unit


class CpuClock:
    """Wall-clock timing with ``time.perf_counter`` (CPU work is synchronous)."""

    name = "perf_counter"

    def sample(self, fn, number=1):
        """Mean seconds per call over ``number`` back-to-back calls."""
        start = time.perf_counter()
        for _ in range(number):
            fn()
        return (time.perf_counter() - start) / number

    def synchronize(self):
        pass


class NumbaCudaClock:
    """CUDA event timing for Numba kernels: synchronise, record, run, record, synchronise."""

    name = "cuda events (numba)"

    def __init__(self):
        from numba import cuda
        self._cuda = cuda

    def synchronize(self):
        self._cuda.synchronize()

    def sample(self, fn, number=1):
        cuda = self._cuda
        start, end = cuda.event(timing=True), cuda.event(timing=True)
        cuda.synchronize()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return cuda.event_elapsed_time(start, end) / 1e3 / number


class TorchCudaClock:
    """CUDA event timing for PyTorch: the same protocol with ``torch.cuda.Event``."""

    name = "cuda events (torch)"

    def __init__(self, torch):
        self._torch = torch

    def synchronize(self):
        self._torch.cuda.synchronize()

    def sample(self, fn, number=1):
        torch = self._torch
        start = torch.cuda.Event(enable_timing=True)
        end = torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        for _ in range(number):
            fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3 / number


def calibrate(clock, fn, target, max_number=10000):
    """How many calls make one sample last about ``target`` seconds (at least 1).

    Times one call, and if that is far below the target, a batch of calls, to avoid trusting a
    single call's overhead-dominated time.
    """
    t = clock.sample(fn, 1)
    if t < target / 10:
        probe = max(1, min(max_number, int(target / 10 / max(t, 1e-9))))
        t = clock.sample(fn, probe)
    return max(1, min(max_number, math.ceil(target / max(t, 1e-9))))


class Timed:
    """One function under measurement: first call, warm-up, calibration, then samples.

    ``first_call`` (seconds) is the very first call: in a fresh process it includes compiling
    (or loading from Numba's cache) every kernel the call needs. Warm-up calls are not recorded.
    """

    def __init__(self, clock, fn, *, warmup=2, target=0.01, max_number=10000):
        self.clock, self.fn = clock, fn
        self.first_call = clock.sample(fn, 1)
        for _ in range(warmup):
            clock.sample(fn, 1)
        self.number = calibrate(clock, fn, target, max_number)
        self.samples = []

    def take(self):
        self.samples.append(self.clock.sample(self.fn, self.number))

    def result(self):
        out = summarize(self.samples)
        out.update(first_call=self.first_call, number=self.number)
        return out


def interleave(timers, repeat):
    """Take ``repeat`` samples of each timer, alternating between them (and alternating the
    order at each round) so that slow drifts of the machine's load hit every contender alike.

    With several contenders, each sample follows one untimed call of its own function, so that
    it starts from that contender's steady state whatever ran just before: PyTorch's OpenMP
    threads spin for ~5 ms after its last op, holding a core, and nnkern's threads and caches
    are cold after torch's turn (measured, torch imported first: an nnkern MLP + BN step
    sampled right after torch's took 0.40 ms instead of 0.36; the small CNN's, after 0.1 s
    idle, 20 ms instead of 15)."""
    timers = [t for t in timers if t is not None]
    for r in range(repeat):
        for t in (timers if r % 2 == 0 else timers[::-1]):
            if len(timers) > 1:
                t.clock.sample(t.fn, 1)
            t.take()
