"""What the benchmark scripts share: timed calls, one side of a comparison, machine facts, output.

Imported by ``flows.py`` and ``base_models.py`` (run as scripts, so this folder is on
``sys.path``; the tests load them the same way).
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import jax


def block(x: Any) -> Any:
    """Waits for a JAX result, or for a torch result's device (a CPU result is finished when its
    call returns; CUDA runs asynchronously)."""
    if not hasattr(x, "detach"):
        return jax.block_until_ready(x)
    if x.is_cuda:
        import torch

        torch.cuda.synchronize(x.device)
    return x


def timed(fn: Callable[[], Any], times: int = 1) -> float:
    """Seconds for ``times`` calls of ``fn``, each result waited for."""
    start = time.perf_counter()
    for _ in range(times):
        block(fn())
    return time.perf_counter() - start


@dataclasses.dataclass
class Side:
    """One library's (or one variant's) operation under measurement: ``fn`` handles ``examples`` per call."""

    fn: Callable[[], Any]
    examples: int
    inner: int = 1
    seconds: list[float] = dataclasses.field(default_factory=list)
    warm_up_s: list[float] = dataclasses.field(default_factory=list)

    def warm_up(self, min_seconds: float, calls: int = 3) -> None:
        """JAX: three calls, the first traces and compiles, the second may compile again (fpn-jax's
        public ``nnx.jit`` path does, see the README), the third is steady. torch: two (the first
        sets up its kernels and, on CUDA, its libraries)."""
        self.warm_up_s = [timed(self.fn) for _ in range(calls)]
        self.inner = max(1, math.ceil(min_seconds / max(self.warm_up_s[-1], 1e-6)))

    def compile_s(self) -> float:
        """Time of the first two calls beyond a steady one (trace + compile)."""
        steady = self.warm_up_s[-1]
        return sum(max(0.0, t - steady) for t in self.warm_up_s[:2])

    def repeat(self) -> None:
        self.seconds.append(timed(self.fn, self.inner) / self.inner)

    def rate(self) -> float:
        return self.examples / statistics.median(self.seconds)


def interleaved_repeats(sides: Iterable[Side], repeats: int) -> list[float]:
    """Runs every side's repeats, rotating the order each round (every side goes first, second,
    ... in turn) so that machine drift cancels in the ratios.

    Returns the 1-minute load average after every round.
    """
    order, load = list(sides), []
    for r in range(repeats):
        shift = r % len(order)
        for side in order[shift:] + order[:shift]:
            side.repeat()
        load.append(os.getloadavg()[0])
    return load


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine() -> dict[str, Any]:
    return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform()}


def versions(names: Iterable[str]) -> dict[str, str]:
    """Python's version and each package's ("not installed" where absent)."""
    found = {"python": platform.python_version()}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def write(out: Path, stem: str, result: dict[str, Any], table: str) -> None:
    """Writes ``out/stem.json`` and ``out/stem.md`` (after every row, so a cut-off run keeps its rows)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1) + "\n")
    (out / f"{stem}.md").write_text(table)
