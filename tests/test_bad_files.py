"""Bad files with ``on_error: skip``: real corrupt ROOT files (a generated file cut short,
a basket overwritten in the middle, a text file named .root).

What must hold: the ``n: auto`` sample passes over what cannot be read and says so; the
``min_fraction`` rule counts events where the entries are known and files that did not
open apart (one bad file of 4 is skipped at the default 0.9, 3 of 4 fail); a message
states the rule and gives each cause and the advice once.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import uproot

from mlaas_dask.data.dataset import Dataset, Group
from mlaas_dask.data.remote import ReadFailure, ReadPolicy, max_files_unopened
from mlaas_dask.errors import DataError
from mlaas_dask.features import Collection, FeatureSpec
from mlaas_dask.job import job_from_text
from mlaas_dask.train import train
from mlaas_dask.train.matrix import (
    PartitionPlan,
    format_report,
    read_and_process,
    read_report,
    sample_multiplicities,
)

from conftest import logged, write_events

N = 3000
SPEC = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"], n=2)})
SKIP = ReadPolicy(on_error="skip", retries=0)
ADVICE = "may be truncated, corrupt or not a ROOT file"


def truncated(path: Path, seed: int = 5) -> Path:
    """A generated file cut to half its length (a copy that stopped short)."""
    write_events(path, n=N, seed=seed)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def bad_basket(path: Path, seed: int = 6, branch: str = "Jet_pt") -> Path:
    """A generated file whose ``branch`` basket is overwritten in its middle: the file
    opens (its header and tree are fine), reading the branch fails."""
    write_events(path, n=N, seed=seed)
    with uproot.open(path) as handle:
        basket = handle["Events"][branch]
        seek = int(basket.member("fBasketSeek")[0])
        size = int(basket.member("fBasketBytes")[0])
    data = bytearray(path.read_bytes())
    data[seek + size // 2: seek + size // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))
    return path


def text_file(path: Path) -> Path:
    path.write_text("run,event,MET_pt\n1,1,20.5\n" * 50)
    return path


def good(tmp_path: Path, *names: str) -> list[Path]:
    return [write_events(tmp_path / f"{name}.root", n=N, seed=i + 1)
            for i, name in enumerate(names)]


def open_dataset(files: list[Path], policy: ReadPolicy = SKIP, **kwargs: Any) -> Dataset:
    return Dataset([Group("g", tuple(map(str, files)))], "Events", SPEC.branches(), 1000,
                   policy=policy, **kwargs)


def report_of(dataset: Dataset) -> dict[str, Any]:
    """Read every partition here, as the workers would (same function), and report."""
    plan = PartitionPlan(SPEC, None, None, (), (0.6, 0.2), 0, (1.0,), (0,), 1)
    sources = dataset.sources()
    stats = [read_and_process(p, sources[p.file], plan)["stats"] for p in dataset.partitions]
    return read_report(stats, dataset)


# -- the min_fraction rule ---------------------------------------------------------------

def test_the_rule_for_files_that_do_not_open() -> None:
    assert [max_files_unopened(n, 0.9) for n in (1, 4, 9, 10, 19, 20, 100)] == [
        1, 1, 1, 1, 1, 2, 10]
    assert max_files_unopened(4, 0.5) == 2 and max_files_unopened(5, 0.3) == 3
    assert max_files_unopened(4, 1.0) == 0 and max_files_unopened(4, 0.0) == 4


@pytest.mark.parametrize("damage", [truncated, text_file], ids=["truncated", "text"])
def test_one_bad_file_of_four_is_skipped_at_the_default(tmp_path: Path, damage: Any) -> None:
    files = [*good(tmp_path, "a", "b", "c"), damage(tmp_path / "bad.root")]
    dataset = open_dataset(files)
    assert [u["file"] for u in dataset.unopened] == [str(files[3])]
    report = report_of(dataset)
    assert report["min_fraction"] == 0.9 and report["max_files_unopened"] == 1
    assert report["files_listed"] == 4 and report["files_opened"] == 3
    assert report["fraction_files_opened"] == 0.75
    assert report["events_read"] == report["events_planned"] == 3 * N
    assert report["fraction_read"] == 1.0  # of the events whose entries are known
    assert "files that opened" in report["rule"]
    lines = format_report(report)
    assert lines[0].startswith("Skipped 1 files that did not open")
    assert f"  {files[3]} (whole file, 1 attempts): " in lines[1]


def test_three_bad_files_of_four_fail_stating_the_rule_and_the_cause_once(
        tmp_path: Path) -> None:
    files = [*good(tmp_path, "a"), truncated(tmp_path / "cut.root"),
             text_file(tmp_path / "notes.root"), truncated(tmp_path / "cut2.root", seed=7)]
    dataset = open_dataset(files)
    with pytest.raises(DataError) as err:
        report_of(dataset)
    message = str(err.value)
    assert message.startswith("Only 1 of 4 files could be opened: 3 did not, and at most 1 "
                              "may fail to open under dataset.min_fraction = 0.9.")
    assert "The rule: at least dataset.min_fraction of the events in the files that opened " \
           "must be read" in message
    assert "at most (1 - min_fraction) of the files listed, and always one" in message
    for name in ("cut.root", "notes.root", "cut2.root"):
        assert f"Cannot read {tmp_path / name}." in message
    assert "the file is truncated: it has " in message
    assert "cannot open it as a ROOT file (ValueError: not a ROOT file" in message
    assert message.count(ADVICE) == 1  # said once, not per file
    assert "set dataset.on_error: skip" not in message  # it is set already
    assert "lower dataset.min_fraction" in message


def test_a_corrupt_basket_counts_its_events(tmp_path: Path) -> None:
    """A file that opens has known entries: its unreadable partitions count as events."""
    files = [*good(tmp_path, "a", "b", "c"), bad_basket(tmp_path / "basket.root")]
    dataset = open_dataset(files)
    assert dataset.unopened == [] and dataset.entries == 4 * N
    with pytest.raises(DataError) as err:
        report_of(dataset)
    message = str(err.value)
    assert message.startswith("Only 75.0% of the dataset could be read (9,000 of 12,000 "
                              "events in the 4 of 4 files that opened; 0 files did not "
                              "open, 3 partitions failed), under dataset.min_fraction = 0.9")
    assert "3 failures in 1 file, the first of each: Cannot read entries 0-1000 of " \
           f"{tmp_path / 'basket.root'}" in message
    assert message.count(ADVICE) == 1
    report = report_of(open_dataset(files, ReadPolicy(on_error="skip", retries=0,
                                                      min_fraction=0.75)))
    assert report["events_skipped"] == N and report["fraction_read"] == 0.75
    assert [(s["start"], s["stop"]) for s in report["partitions_skipped"]] == [
        (0, 1000), (1000, 2000), (2000, 3000)]


def test_with_fail_the_advice_is_to_skip(tmp_path: Path) -> None:
    with pytest.raises(DataError) as err:
        open_dataset([*good(tmp_path, "a"), text_file(tmp_path / "notes.root")],
                     ReadPolicy())
    message = str(err.value)
    assert message.count(ADVICE) == 1 and "set dataset.on_error: skip" in message


# -- n: auto sampling follows the policy -------------------------------------------------

def test_sampling_passes_over_unreadable_partitions(tmp_path: Path) -> None:
    files = [bad_basket(tmp_path / "basket.root"), *good(tmp_path, "a", "b")]
    dataset = open_dataset(files)
    auto = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"])})
    counts = sample_multiplicities(dataset, auto, sample=1500)
    # the corrupt file's partitions are passed over; the next file gives the sample
    assert len(counts["Jet"]) == 1500
    with uproot.open(files[1]) as handle:
        expected = handle["Events"]["nJet"].array(library="np", entry_stop=1500)
    assert counts["Jet"].tolist() == expected.tolist()
    assert [(s["file"], s["start"], s["stop"]) for s in dataset.sample_skipped] == [
        (str(files[0]), 0, 1000), (str(files[0]), 1000, 2000), (str(files[0]), 2000, 3000)]
    assert all(ADVICE in s["advice"] and "on_error: skip" not in s["advice"]
               for s in dataset.sample_skipped)
    assert auto.resolve(counts).collections["Jet"].n >= 1
    # with on_error: fail the sample stops at the bad basket, advising skip
    strict = open_dataset(files, ReadPolicy(retries=0))
    with pytest.raises(ReadFailure) as err:
        sample_multiplicities(strict, auto, sample=1500)
    assert "set dataset.on_error: skip" in str(err.value)


def test_sampling_says_why_when_nothing_can_be_read(tmp_path: Path) -> None:
    dataset = open_dataset([bad_basket(tmp_path / "basket.root")])
    auto = FeatureSpec(flat=["MET_pt"], collections={"Jet": Collection("Jet", ["pt"])})
    with pytest.raises(DataError) as err:
        sample_multiplicities(dataset, auto, sample=500)
    message = str(err.value)
    assert message.startswith("No events could be read for the sample (3 partitions "
                              "failed, dataset.on_error: skip). First failure: Cannot "
                              f"read entries 0-500 of {tmp_path / 'basket.root'}")
    assert message.count(ADVICE) == 1


@pytest.mark.slow
def test_job_with_n_auto_skips_bad_files_end_to_end(client: Any, tmp_path: Path) -> None:
    """On the cluster: a corrupt basket in the signal's first file (the sample's file),
    a truncated background file and a text file named .root."""
    sig = [bad_basket(tmp_path / "sig0.root", seed=11),
           *[write_events(tmp_path / f"sig{i}.root", n=N, seed=11 + i) for i in (1, 2, 3)]]
    bkg = [*[write_events(tmp_path / f"bkg{i}.root", n=N, seed=21 + i) for i in (0, 1, 2)],
           truncated(tmp_path / "bkg3.root")]
    job = job_from_text(f"""
dataset:
  step_size: 1000
  retries: 0
  on_error: skip
  min_fraction: 0.85
  groups:
    - {{name: sig, files: {json.dumps([str(p) for p in sig])}, label: 1}}
    - {{name: bkg, files: {json.dumps([str(p) for p in bkg])}, label: 0}}
features: {{flat: [MET_pt], collections: {{Jet: {{fields: [pt, eta]}}}}}}
model: {{num_boost_round: 10, early_stopping_rounds: 0, params: {{max_depth: 3}}}}
""", base=tmp_path)
    with client.as_current(), logged() as lines:
        result = train(job, cluster=client, out=tmp_path / "bundle", progress=False)
    log = lines.text
    report = json.loads((result.bundle / "metadata.json").read_text())[
        "data_summary"]["read_report"]
    assert [u["file"] for u in report["files_unopened"]] == [str(bkg[3])]
    assert {s["file"] for s in report["sample_skipped"]} == {str(sig[0])}
    assert [(s["file"], s["start"]) for s in report["partitions_skipped"]] == [
        (str(sig[0]), 0), (str(sig[0]), 1000), (str(sig[0]), 2000)]
    assert report["events_planned"] == 7 * N and report["events_read"] == 6 * N
    assert "Estimated objects per event from a sample" in log
    assert "The sample for n: auto passed over" in log
    assert result.metrics["auc"] > 0.5
