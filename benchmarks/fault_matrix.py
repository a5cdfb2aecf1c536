"""Fault matrix: Dask workers killed with SIGKILL at chosen moments of a training job.

Each scenario runs the job on a fresh LocalCluster of two single-threaded worker processes
on 127.0.0.1 (a nanny replaces a killed worker, with a new address). The worker to kill is
found among this process's own cluster: its pid from ``client.run(os.getpid)``, the
moment from :class:`KillWhen`, a scheduler plugin (the scheduler runs in this process)
that kills the worker running a given task once XGBoost reports round ``K`` or once the
``k``-th such task starts. Scenarios:

- undisturbed XGBoost and scikit-learn (SGDClassifier, partial_fit) runs: the reference;
- XGBoost: the training worker killed at round ~20 (resumes from its checkpoint);
- partial_fit: the worker fitting block k killed (resumes from the last checkpoint);
- a worker killed while reading partition k (Dask reads it again elsewhere);
- a worker killed during the test prediction (Dask predicts its blocks again);
- the training worker stopped (SIGSTOP, a hung process): it counts as lost once Dask drops
  it (``distributed.scheduler.worker-ttl``, 30 s here, 5 minutes by default);
- XGBoost and partial_fit with ``max_retries: 0`` (the job fails, naming the worker).

Printed: what was killed when, the outcome, the wall time of the job, the seconds from the
kill to the resume line or the error, and the test AUC against the undisturbed run.

Usage: python benchmarks/fault_matrix.py [--events 1000000]
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed.diagnostics.plugin import SchedulerPlugin

from common import emit, sample_files, sample_job

#: the scheduler's event topics of XGBoost training attempts (mlaas_dask.train.xgb)
TRAIN_TOPIC_PREFIX = "mlaas-train-"


class KillWhen(SchedulerPlugin):
    """SIGKILL (or ``signal``) the worker running a task, once (a test and benchmark tool).

    ``prefix`` names the task (``fn``: xgboost.dask's training task; ``partial_fit``: one
    block of the scikit-learn chain; ``read_and_process``: one partition read). With
    ``round``, the kill comes when XGBoost reports that round on the scheduler's
    ``mlaas-train-*`` events; else when the ``start``-th such task is sent to a worker.
    ``pids`` maps worker addresses to process ids. ``killed`` holds ``(address, name,
    time)`` of the worker killed.
    """

    name = "kill-when"

    def __init__(self, pids: dict[str, int], prefix: str, start: int = 1,
                 round: int | None = None,  # noqa: A002 - the scenario key (when={"round": N})
                 signal: int = signal.SIGKILL) -> None:
        self.pids = pids
        self.signal = signal
        self.prefix = prefix
        self.start_at = start
        self.round = round
        self.started = 0
        self.killed: list[tuple[str, str, float]] = []
        self.scheduler: Any = None

    async def start(self, scheduler: Any) -> None:
        self.scheduler = scheduler

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if self.killed or self.round or finish != "processing" or _prefix(key) != self.prefix:
            return
        self.started += 1
        if self.started >= self.start_at:
            self._kill(self.scheduler.tasks[key].processing_on.address)

    def log_event(self, topic: str, msg: Any) -> None:
        if self.killed or not self.round or not topic.startswith(TRAIN_TOPIC_PREFIX):
            return
        if isinstance(msg, dict) and msg.get("round", 0) >= self.round:
            running = sorted(ts.processing_on.address for ts in self.scheduler.tasks.values()
                             if _prefix(ts.key) == self.prefix and ts.processing_on)
            if running:
                self._kill(running[0])

    def _kill(self, address: str) -> None:
        name = str(self.scheduler.workers[address].name)
        self.killed.append((address, name, time.time()))
        os.kill(self.pids[address], self.signal)


def _prefix(key: Any) -> str:
    from dask.utils import key_split

    return key_split(key)


def arm(client: Any, prefix: str, **when: int) -> dict[str, int]:
    """Register a :class:`KillWhen` with the pids of the cluster's current workers;
    those pids."""
    pids = client.run(os.getpid)
    client.register_plugin(KillWhen(pids, prefix, **when))
    return pids


def killed(client: Any) -> list[tuple[str, str, float]]:
    """``(address, name, time)`` of the workers the plugin killed."""
    return client.run_on_scheduler(
        lambda dask_scheduler: dask_scheduler.plugins["kill-when"].killed)


XGB = """model:
  num_boost_round: 200
  early_stopping_rounds: 20
  max_retries: {retries}
"""
SGD = """model:
  class: sklearn.linear_model.SGDClassifier
  params: {{loss: log_loss}}
  epochs: 3
  checkpoint_every: 2
  max_retries: {retries}
"""


@dataclass
class Scenario:
    name: str
    model: str  # XGB or SGD
    kill: str  # what was killed when, in words
    prefix: str | None = None
    when: dict[str, int] = field(default_factory=dict)
    retries: int = 2
    #: Dask's time to live of a silent worker, for a stopped (hung) one
    worker_ttl: str | None = None


@dataclass
class Outcome:
    scenario: Scenario
    outcome: str
    seconds: float
    to_reaction: float | None
    auc: float | None
    line: str


def run(scenario: Scenario, files: dict[str, list[Path]], step: int, out: Path) -> Outcome:
    import dask
    from distributed import Client, LocalCluster

    from mlaas_dask.errors import MlaasError
    from mlaas_dask.job import job_from_text
    from mlaas_dask.train import train

    job = job_from_text(sample_job(files, step, rest=scenario.model.format(
        retries=scenario.retries)), base=out)
    lines: list[tuple[float, str]] = []

    class Lines(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append((time.time(), record.getMessage()))

    handler = Lines()
    logging.getLogger("mlaas_dask").addHandler(handler)

    ttl = {"distributed.scheduler.worker-ttl": scenario.worker_ttl} if scenario.worker_ttl else {}
    with dask.config.set(ttl), \
            LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                         dashboard_address=None, silence_logs=50) as cluster, \
            Client(cluster) as client:
        client.run(lambda: __import__("xgboost"))  # imports are not what is measured
        pids = arm(client, scenario.prefix, **scenario.when) if scenario.prefix else {}
        start = time.perf_counter()
        try:
            result = train(job, cluster=client, out=out / scenario.name, progress=False)
            outcome, auc, failed_at = "completed", result.metrics["auc"], None
            resumes = len(result.metrics.get("resumes") or [])
            if resumes:
                outcome = f"completed, resumed {resumes}x"
        except MlaasError as err:
            outcome, auc, failed_at = "failed", None, time.time()
            lines.append((failed_at, f"error: {err}"))
        seconds = time.perf_counter() - start
        logging.getLogger("mlaas_dask").removeHandler(handler)
        kills = killed(client) if scenario.prefix else []
        for pid in pids.values():  # a stopped worker that Dask has not killed yet
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    reaction, line = None, ""
    if kills:
        _, name, when = kills[0]
        outcome += f" (killed worker {name})"
        reacted = [(t, text) for t, text in lines
                   if t >= when and text.startswith(("Lost ", "error: "))]
        if reacted:
            reaction, line = reacted[0][0] - when, reacted[0][1]
    elif scenario.prefix:
        outcome += " (the kill never came)"
    return Outcome(scenario, outcome, seconds, reaction, auc, line)


#: partitions of the job, hence training blocks of partial_fit
BLOCKS = 16

SCENARIOS = [
    Scenario("xgb-undisturbed", XGB, "nothing"),
    Scenario("xgb-train-round20", XGB, "the training worker at round 20", "fn",
             {"round": 20}),
    Scenario("xgb-read-partition3", XGB, "a reading worker at partition 3",
             "read_and_process", {"start": 3}),
    Scenario("xgb-predict", XGB, "a worker during the test prediction", "_predict_block",
             {"start": 1}),
    Scenario("xgb-hung-round20", XGB, "the training worker hung (SIGSTOP) at round 20",
             "fn", {"round": 20, "signal": signal.SIGSTOP},
             worker_ttl="30s"),
    Scenario("xgb-no-retries", XGB, "the training worker at round 20 (max_retries 0)", "fn",
             {"round": 20}, retries=0),
    Scenario("sgd-undisturbed", SGD, "nothing"),
    Scenario("sgd-epoch2-block3", SGD, "the worker fitting block 3 of epoch 2",
             "partial_fit", {"start": BLOCKS + 3}),
    Scenario("sgd-no-retries", SGD, "the worker fitting block 3 (max_retries 0)",
             "partial_fit", {"start": 3}, retries=0),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--only", nargs="*", help="scenario names to run")
    args = parser.parse_args()
    files = sample_files(args.events)
    step = -(-args.events // BLOCKS)
    out = Path(__file__).resolve().parent / "results" / "fault-matrix"
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    results = []
    for scenario in SCENARIOS:
        if args.only and scenario.name not in args.only:
            continue
        outcome = run(scenario, files, step, out)
        results.append(outcome)
        emit("fault_matrix", {"events": args.events, "scenario": scenario.name,
                              "killed": scenario.kill, "outcome": outcome.outcome,
                              "seconds": round(outcome.seconds, 2),
                              "kill_to_reaction_s": None if outcome.to_reaction is None
                              else round(outcome.to_reaction, 2),
                              "auc": outcome.auc, "line": outcome.line})
    print_matrix(results, args.events)


def print_matrix(results: list[Outcome], events: int) -> None:
    reference = {r.scenario.model: r.auc for r in results if r.scenario.prefix is None}
    print(f"\nFault matrix ({events:,} events, LocalCluster of 2 single-threaded workers)")
    header = f"{'scenario':<20} {'killed':<48} {'outcome':<52} {'wall s':>7} " \
             f"{'kill->':>7} {'AUC':>7} {'dAUC':>8}"
    print(header)
    print("-" * len(header))
    for r in results:
        ref = reference.get(r.scenario.model)
        delta = (f"{r.auc - ref:+.5f}" if r.auc is not None and ref is not None
                 and r.scenario.prefix else "")
        print(f"{r.scenario.name:<20} {r.scenario.kill:<48} {r.outcome:<52} "
              f"{r.seconds:>7.1f} {'' if r.to_reaction is None else f'{r.to_reaction:.1f}':>7} "
              f"{'' if r.auc is None else f'{r.auc:.4f}':>7} {delta:>8}")
    print("\nkill->: seconds from the kill to the resume line or the error (a hung worker: "
          "Dask's worker-ttl set to 30 s). Lines:")
    for r in results:
        if r.line:
            print(f"  {r.scenario.name}: {r.line}")


if __name__ == "__main__":
    main()
