"""Kinematic reweighting (issue 13, item 4): each class's training distribution of the
variables matches the target's, the classifier can no longer use the spectrum, and the
bundle keeps the table and the before/after plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers import quiet

from mlaas_dask.errors import ConfigError
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train
from mlaas_dask.train.reweight import fit_reweighting

from conftest import write_events

SETTINGS = {"variables": ["pt"], "bins": 10, "to": "signal", "max_factor": 50.0,
            "sample_events": 1000}


def _spectra(n: int = 20000) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    y = np.repeat([1, 0], n)
    pt = np.concatenate([rng.exponential(60, n), rng.exponential(30, n)]) + 20
    x = np.column_stack([pt, rng.normal(size=2 * n)]).astype(np.float32)
    return x, y, rng.uniform(0.5, 1.5, 2 * n)


def _hist(x: np.ndarray, w: np.ndarray, edges: tuple[float, ...]) -> np.ndarray:
    counts, _ = np.histogram(np.clip(x, edges[0], edges[-1]), bins=edges, weights=w)
    return counts / counts.sum()


def test_background_is_reweighted_to_the_signal_spectrum() -> None:
    x, y, w = _spectra()
    reweighting = fit_reweighting(x, y, w, ["pt", "eta"], ["background", "signal"], SETTINGS)
    factors = reweighting(x, y)
    assert np.all(factors[y == 1] == 1.0)
    edges = reweighting.edges[0]
    signal = _hist(x[y == 1, 0], w[y == 1], edges)
    before = _hist(x[y == 0, 0], w[y == 0], edges)
    after = _hist(x[y == 0, 0], (w * factors)[y == 0], edges)
    assert np.abs(before - signal).max() > 0.05
    np.testing.assert_allclose(after, signal, atol=1e-9)
    assert (w * factors)[y == 0].sum() == pytest.approx(w[y == 0].sum())  # total kept


def test_flat_target_and_missing_values() -> None:
    x, y, w = _spectra()
    x[::7, 0] = np.nan  # no such object: factor 1
    flat = fit_reweighting(x, y, w, ["pt", "eta"], ["background", "signal"],
                           {**SETTINGS, "to": "flat"})
    factors = flat(x, y)
    assert np.all(factors[::7] == 1.0)
    finite = np.isfinite(x[:, 0])
    for c in (0, 1):
        rows = finite & (y == c)
        shape = _hist(x[rows, 0], (w * factors)[rows], flat.edges[0])
        np.testing.assert_allclose(shape, 1 / len(shape), atol=1e-9)


def test_bad_settings_are_named() -> None:
    x, y, w = _spectra(200)
    classes = ["background", "signal"]
    with pytest.raises(ConfigError, match=r"'ptt', which is not a feature.*Did you mean 'pt'"):
        fit_reweighting(x, y, w, ["pt", "eta"], classes, {**SETTINGS, "variables": ["ptt"]})
    with pytest.raises(ConfigError, match=r"reweight\.to is 'sgnal'.*Did you mean 'signal'"):
        fit_reweighting(x, y, w, ["pt", "eta"], classes, {**SETTINGS, "to": "sgnal"})
    with pytest.raises(ConfigError, match="must be increasing edges"):
        fit_reweighting(x, y, w, ["pt", "eta"], classes, {**SETTINGS, "bins": [50, 20]})


def _job(tmp_path: Path, reweight: str) -> Any:
    """Signal and background that differ only in MET_pt."""
    rng = np.random.default_rng(3)
    for name, seed, scale in (("sig.root", 1, 70), ("bkg.root", 2, 25)):
        write_events(tmp_path / name, n=6000, seed=seed,
                     extra={"MET_pt": rng.exponential(scale, 6000).astype(np.float32)})
    return job_from_text(
        "dataset:\n  step_size: 2000\n  groups:\n"
        "    - {name: sig, files: [sig.root], label: 1}\n"
        "    - {name: bkg, files: [bkg.root], label: 0}\n"
        "features: {flat: [MET_pt], collections: {Jet: {fields: [pt], n: 2}}}\n"
        "model: {num_boost_round: 30, params: {max_depth: 3}}\n" + reweight, base=tmp_path)


@pytest.mark.slow
def test_the_classifier_no_longer_learns_the_spectrum(client: Any, tmp_path: Path) -> None:
    plain = train(_job(tmp_path, ""), cluster=client, out=tmp_path / "plain", **quiet)
    job = _job(tmp_path, "reweight: {variables: [MET_pt], bins: 40, max_factor: 200, "
                         "sample_events: 6000}\n")
    flat = train(job, cluster=client, out=tmp_path / "rw", **quiet)
    assert plain.metrics["auc"] > 0.7
    # 0.74 -> 0.51 when measured: MET_pt was all it had
    assert flat.metrics["auc"] < 0.6, flat.metrics["auc"]
    table = json.loads((tmp_path / "rw" / "reweight.json").read_text())
    assert table["variables"] == ["MET_pt"] and table["to"] == "signal"
    assert set(table["factors"]) == {"background", "signal"}
    assert (tmp_path / "rw" / "reweight.png").stat().st_size > 10_000
    metadata = json.loads((tmp_path / "rw" / "metadata.json").read_text())
    assert metadata["reweight"]["variables"] == ["MET_pt"]
    assert not (tmp_path / "plain" / "reweight.json").exists()
