"""Shared pieces of the benchmarks: the generated sample, timing, memory sampling."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DATA = HERE / "data"


def sample_files(events: int, compression: str = "zlib:1") -> dict[str, list[Path]]:
    """The generated NanoAOD-style sample with ``events`` events in all, made once."""
    from mlaas_dask.data.sample import generate_sample

    out = DATA / f"sample-{events}-{compression.replace(':', '')}"
    done = out / ".complete"
    if not done.exists():
        files = generate_sample(out, events, seed=1, compression=compression,
                                files_per_class=2, overwrite=True)
        done.write_text(json.dumps({k: [str(p) for p in v] for k, v in files.items()}))
    return {k: [Path(p) for p in v] for k, v in json.loads(done.read_text()).items()}


@contextmanager
def timer() -> Iterator[dict[str, float]]:
    result: dict[str, float] = {}
    start = time.perf_counter()
    try:
        yield result
    finally:
        result["seconds"] = time.perf_counter() - start


class PeakMemory:
    """Samples the summed RSS of a process and all its descendants (Dask workers)."""

    def __init__(self, pid: int | None = None, interval: float = 0.05) -> None:
        self.pid = pid or os.getpid()
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
        except psutil.NoSuchProcess:
            return
        while not self._stop.is_set():
            total = 0
            try:
                for proc in [root, *root.children(recursive=True)]:
                    with suppress(psutil.NoSuchProcess):
                        total += proc.memory_info().rss
            except psutil.NoSuchProcess:
                break
            self.peak = max(self.peak, total)
            time.sleep(self.interval)

    def __enter__(self) -> PeakMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def emit(name: str, figures: dict[str, Any]) -> None:
    """Print one JSON line and keep it under benchmarks/results/."""
    line = json.dumps({"benchmark": name, **figures}, sort_keys=False)
    print(line)
    results = HERE / "results"
    results.mkdir(exist_ok=True)
    with open(results / f"{name}.jsonl", "a") as handle:
        handle.write(line + "\n")


#: the features every sample benchmark uses (flat MET, jets, muons, electrons)
SAMPLE_FEATURES = """
  flat: [MET_pt, MET_phi, PV_npvs]
  collections:
    Jet: {fields: [pt, eta, phi, mass, btagDeepB], n: 6, sort_by: pt}
    Muon: {fields: [pt, eta, charge], n: 2, sort_by: pt}
    Electron: {fields: [pt, eta, charge], n: 2, sort_by: pt}
"""


def sample_job(files: dict[str, list[Path]], step: int, dataset_extra: str = "",
               rest: str = "") -> str:
    """A job (YAML) on the generated sample: signal vs background with SAMPLE_FEATURES.

    ``dataset_extra`` adds lines to the dataset block (indented by two spaces), ``rest``
    adds top-level sections (model, split...)."""
    return (f"dataset:\n  step_size: {step}\n{dataset_extra}"
            f"  groups:\n"
            f"    - {{name: signal, files: {[str(p) for p in files['signal']]}, label: 1}}\n"
            f"    - {{name: background, files: {[str(p) for p in files['background']]}, "
            f"label: 0}}\n"
            f"features: {SAMPLE_FEATURES}{rest}")


def job_arrays(job: Any, spec: Any) -> tuple[Any, Any, Any, Any]:
    """A job's events read the plain way, in one process, for a hand-written baseline:
    uproot ``TTree.arrays`` of every file, the FeatureSpec's matrix, labels, event weights
    and the split mlaas_dask assigns (the event-id hash of file and entry). Returns
    ``X, y, w, split`` (split 0 train, 1 validation, 2 test)."""
    import numpy as np
    import uproot

    from mlaas_dask.train.split import assign_split, file_key

    X, y, w, split = [], [], [], []
    for group in job.dataset.groups:
        label = job.dataset.label_index(group)
        for path in group.files:
            with uproot.open(path) as handle:
                events = handle[job.dataset.tree].arrays(
                    [*spec.branches(), job.dataset.weight_branch])
            n = len(events)
            X.append(spec.transform(events))
            y.append(np.full(n, label))
            w.append(np.asarray(events[job.dataset.weight_branch], np.float32))
            split.append(assign_split([np.full(n, file_key(path), np.uint64), np.arange(n)],
                                      job.split.train, job.split.validation, job.split.seed))
    return tuple(np.concatenate(parts) for parts in (X, y, w, split))
