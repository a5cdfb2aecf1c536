"""Remote reading without servers: locations, error classes, backoff, secrets, the
feature cache (concurrent writers, eviction) and the job keys."""

from __future__ import annotations

import errno
import multiprocessing
import os
import pickle
import random
import time
from pathlib import Path

import numpy as np
import pytest

from mlaas_dask.data.cache import FeatureCache, parse_size
from mlaas_dask.data.credentials import Credentials, remember_secret, scrub
from mlaas_dask.data.dataset import Dataset, Group, read_file_list
from mlaas_dask.data.remote import (
    Attempt,
    Outcome,
    ReadFailure,
    ReadPolicy,
    classify,
    join_redirector,
    locations,
    with_fallback,
)
from mlaas_dask.errors import ConfigError, DataError
from mlaas_dask.job import job_from_text

from conftest import write_events


def test_lfns_resolve_against_redirectors_in_order() -> None:
    policy = ReadPolicy(redirectors=("root://xrootd-cms.infn.it/",
                                     "root://cms-xrd-global.cern.ch:1094",
                                     "davs://eos.example.org/eos/cms"))
    assert locations("/store/mc/a.root", policy) == (
        "root://xrootd-cms.infn.it//store/mc/a.root",
        "root://cms-xrd-global.cern.ch:1094//store/mc/a.root",
        "https://eos.example.org/eos/cms/store/mc/a.root")
    assert join_redirector("root://host/prefix/", "/store/x.root") == \
        "root://host//prefix/store/x.root"
    # not LFNs, or no redirectors: one place, as given (davs:// is HTTPS)
    assert locations("/data/a.root", policy) == ("/data/a.root",)
    assert locations("davs://h/a.root", ReadPolicy()) == ("https://h/a.root",)
    assert locations("/store/a.root", ReadPolicy()) == ("/store/a.root",)


def test_an_lfn_without_redirectors_says_what_to_set() -> None:
    with pytest.raises(DataError, match=r"'/store/mc/x.root' \(group 'g'\) looks like a CMS "
                                        r"logical file name but no redirector is set: add "
                                        r"dataset.redirectors"):
        Dataset([Group("g", ("/store/mc/x.root",))], "Events", ["MET_pt"])


class Status(Exception):
    def __init__(self, status: int, message: str = "") -> None:
        super().__init__(f"{status} {message} headers: Authorization: Bearer abcdefgh12345678")
        self.status = status
        self.message = message


@pytest.mark.parametrize("error,transient,cause", [
    (ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), True, "refused"),
    (ConnectionResetError(errno.ECONNRESET, "reset by peer"), True, "reset"),
    (TimeoutError("timed out"), True, "timed out"),
    (OSError("Failed to open file: [FATAL] Connection error"), True, "[FATAL] Connection error"),
    (OSError("[ERROR] Operation expired"), True, "Operation expired"),
    (OSError("[ERROR] Server responded with an error: [3024] overloaded"), True, "[3024]"),
    (OSError("[ERROR] Server responded with an error: [3011] no such file"), False, "[3011]"),
    (OSError("[ERROR] Server responded with an error: [3010] permission denied"), False, "[3010]"),
    (FileNotFoundError("https://h/a.root"), False, "no such file"),
    (PermissionError(errno.EACCES, "Permission denied"), False, "permission denied"),
    (Status(503, "Service Unavailable"), True, "HTTP 503 Service Unavailable (server busy"),
    (Status(429, "Too Many Requests"), True, "HTTP 429"),
    (Status(403, "Forbidden"), False, "HTTP 403 Forbidden (permission denied)"),
    (Status(401, "Unauthorized"), False, "HTTP 401"),
    (ValueError("not a ROOT file: first four bytes are b'this'"), False, "not a ROOT file"),
    (TypeError("'ClientPayloadError' object is not subscriptable"), True, "ClientPayloadError"),
    (TypeError("'FileNotFoundError' object is not subscriptable"), False, "no such file"),
])
def test_errors_are_classified(error: BaseException, transient: bool, cause: str) -> None:
    is_transient, text = classify(error)
    assert is_transient is transient
    assert cause in text
    assert "abcdefgh12345678" not in text  # never the request headers


def test_backoff_is_exponential_with_jitter_and_capped() -> None:
    policy = ReadPolicy(backoff=1.0, max_backoff=8.0)
    rng = random.Random(1)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (9, 8)]:
        delays = [policy.delay(attempt, rng) for _ in range(200)]
        assert ceiling / 2 <= min(delays) and max(delays) <= ceiling
        assert max(delays) - min(delays) > ceiling / 4  # jitter, not a fixed delay


def test_retries_only_transient_errors_then_falls_back() -> None:
    calls: list[tuple[str, bool]] = []
    slept: list[float] = []

    def action(url: str, fresh: bool) -> str:
        calls.append((url, fresh))
        if url == "a":
            raise ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused")
        if url == "b":
            raise FileNotFoundError("b")
        return "data"

    policy = ReadPolicy(retries=3, backoff=0.1)
    result, outcome = with_fallback(["a", "b", "c"], action, policy, "x", sleep=slept.append)
    assert result == "data" and outcome.url == "c" and outcome.fallbacks == 2
    assert calls == [("a", False), ("a", True), ("a", True), ("a", True), ("b", True),
                     ("c", True)]
    assert len(slept) == 3 and slept[0] < 0.1 < slept[2] <= 0.4
    assert outcome.tries == 6

    with pytest.raises(ReadFailure) as err:
        with_fallback(["a", "b"], action, ReadPolicy(retries=1, backoff=0), "the file f",
                      sleep=slept.append)
    message = str(err.value)
    assert message.startswith("Cannot read the file f. Tried a: ")
    assert "Connection refused (after 2 attempts); b: no such file (b)." in message
    # it survives the trip from a worker to the client
    again = pickle.loads(pickle.dumps(err.value))
    assert str(again) == message and again.outcome.attempts[0].transient


def test_secrets_are_scrubbed_from_texts() -> None:
    remember_secret("s3cr3t-token-value-42")
    text = ("failed https://u:pw@h/f.root?authz=abc&x=1 root://h//f.root?xrd.authz=zzz "
            "Authorization: Bearer eyJhbGciOiJSUzI1NiJ9 and s3cr3t-token-value-42")
    clean = scrub(text)
    for secret in ("pw@", "authz=abc", "xrd.authz=zzz", "eyJhbGciOiJSUzI1NiJ9",
                   "s3cr3t-token-value-42"):
        assert secret not in clean
    assert "x=1" in clean and "https://<redacted>@h/f.root" in clean


def test_credentials_found_where_wlcg_tools_put_them(tmp_path: Path) -> None:
    token = tmp_path / "bt"
    token.write_text("file-token-0123456789\n")
    creds = Credentials.from_env({"BEARER_TOKEN_FILE": str(token)})
    assert creds.token == "file-token-0123456789" and creds.proxy is None
    assert Credentials.from_env({"BEARER_TOKEN": "env-token-0123456789",
                                 "BEARER_TOKEN_FILE": str(token)}).token == "env-token-0123456789"
    assert "token-0123456789" not in repr(creds) + str(creds)
    assert creds.describe() == {"x509_proxy": False, "bearer_token": True, "ca_dir": None}
    with pytest.raises(DataError, match="X509_USER_PROXY points to /nope/x509, which does not "
                                        "exist"):
        Credentials.from_env({"X509_USER_PROXY": "/nope/x509"})


def test_file_list(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    listing = tmp_path / "sub" / "files.txt"
    listing.write_text("# my files\n\na.root\n  /abs/b.root   # comment\nroot://h//c.root\n"
                       "/store/d.root\n")
    assert read_file_list(listing) == [str(tmp_path / "sub" / "a.root"), "/abs/b.root",
                                       "root://h//c.root", "/store/d.root"]
    (tmp_path / "empty.txt").write_text("# nothing\n")
    with pytest.raises(DataError, match="lists no files"):
        read_file_list(tmp_path / "empty.txt")


JOB = """
dataset:
  redirectors: [root://xrootd-cms.infn.it/, root://cms-xrd-global.cern.ch/]
  on_error: skip
  min_fraction: 0.8
  timeout: 20
  retries: 5
  cache: {{dir: cache, max_size: 2 GB}}
  groups:
    - {{name: s, file_list: {listing}, label: 1}}
    - {{name: b, files: [/store/b.root], label: 0}}
features: {{flat: [MET_pt]}}
"""


def test_job_keys(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("/store/a1.root\n/store/a2.root\n")
    job = job_from_text(JOB.format(listing="list.txt"), base=tmp_path)
    config = job.dataset
    assert config.groups[0].files == ["/store/a1.root", "/store/a2.root"]
    policy = config.policy
    assert policy.redirectors == ("root://xrootd-cms.infn.it/", "root://cms-xrd-global.cern.ch/")
    assert (policy.on_error, policy.min_fraction, policy.timeout, policy.retries) == (
        "skip", 0.8, 20.0, 5)
    assert config.feature_cache == FeatureCache(str(tmp_path / "cache"), 2 * 10**9)
    with pytest.raises(ConfigError, match=r"line 4: 'dataset.on_error' is 'ignore'; allowed "
                                          r"values: 'fail', 'skip'"):
        job_from_text(JOB.format(listing="list.txt").replace("on_error: skip",
                                                             "on_error: ignore"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"line 10: File list .*nope.txt does not exist"):
        job_from_text(JOB.format(listing="nope.txt"), base=tmp_path)
    with pytest.raises(ConfigError, match=r"line 3: .*'ftp://x/' is not a redirector URL"):
        job_from_text(JOB.format(listing="list.txt").replace(
            "root://xrootd-cms.infn.it/,", "ftp://x/,"), base=tmp_path)
    with pytest.raises(ConfigError, match="cannot read '2 parsecs' as a size"):
        job_from_text(JOB.format(listing="list.txt").replace("2 GB", "2 parsecs"), base=tmp_path)
    with pytest.raises(ConfigError, match="group 'b' has no files: give 'files'"):
        job_from_text(JOB.format(listing="list.txt").replace("files: [/store/b.root], ", ""),
                      base=tmp_path)


def test_sizes() -> None:
    assert parse_size("10 GB") == 10**10 and parse_size("500MiB") == 500 * 2**20
    assert parse_size(1234) == 1234 and parse_size("1e6") == 10**6


def _result(seed: int, rows: int = 500) -> dict:
    rng = np.random.default_rng(seed)
    X = np.asfortranarray(rng.normal(size=(rows, 4)).astype(np.float32))
    y = rng.integers(0, 2, rows).astype(np.int32)
    w = rng.random(rows).astype(np.float32)
    split = rng.integers(0, 3, rows)
    out = {"stats": {"read": rows, "selected": rows, "group": 0, "nonfinite": {"a": 1}}}
    for i, name in enumerate(("train", "validation", "test")):
        out[name] = (X[split == i], y[split == i], w[split == i])
    return out


def _writer(directory: str, worker: int, keys: int) -> int:
    cache = FeatureCache(directory, 10**9)
    for k in range(keys):
        cache.store_partition(f"{k:064x}", _result(k), ("train", "validation", "test"))
        assert cache.load_partition(f"{k:064x}", ("train", "validation", "test")) is not None
    return worker


def test_cache_round_trip_and_concurrent_writers(tmp_path: Path) -> None:
    names = ("train", "validation", "test")
    cache = FeatureCache(str(tmp_path), 10**9)
    assert cache.load_partition("0" * 64, names) is None
    result = _result(1)
    cache.store_partition("a" * 64, result, names)
    back = cache.load_partition("a" * 64, names)
    assert back["stats"] == result["stats"]
    for name in names:
        for mine, theirs in zip(result[name], back[name], strict=True):
            np.testing.assert_array_equal(mine, theirs)
            assert mine.dtype == theirs.dtype
    # four processes writing the same keys at once: every read sees a whole entry
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        assert sorted(pool.starmap(_writer, [(str(tmp_path / "c"), i, 6) for i in range(4)])) \
            == [0, 1, 2, 3]
    shared = FeatureCache(str(tmp_path / "c"), 10**9)
    files = list(Path(tmp_path / "c").rglob("*"))
    assert not [f for f in files if f.name.endswith(".tmp")]
    for k in range(6):
        back = shared.load_partition(f"{k:064x}", names)
        np.testing.assert_array_equal(back["train"][0], _result(k)["train"][0])


def test_cache_evicts_least_recently_used(tmp_path: Path) -> None:
    names = ("train", "validation", "test")
    probe = FeatureCache(str(tmp_path / "probe"))
    probe.store_partition("f" * 64, _result(0), names)
    one = probe.size()
    cache = FeatureCache(str(tmp_path / "c"), int(one * 3.5))
    for k in range(3):
        cache.store_partition(f"{k:064x}", _result(0), names)
        os.utime(cache._part_path(f"{k:064x}"), (time.time() - 100 + k, time.time() - 100 + k))
    assert cache.load_partition(f"{0:064x}", names) is not None  # a hit makes it recent
    cache.store_partition(f"{3:064x}", _result(0), names)  # over the bound: evict the LRU
    present = [k for k in range(4) if cache._part_path(f"{k:064x}").exists()]
    assert present == [0, 2, 3]
    assert cache.size() <= cache.max_bytes


def test_dataset_metadata_comes_from_the_cache(tmp_path: Path) -> None:
    path = write_events(tmp_path / "a.root", n=300)
    cache = FeatureCache(str(tmp_path / "cache"))
    first = Dataset([Group("g", (str(path),))], "Events", ["MET_pt", "Jet_pt"], cache=cache)
    assert len(list((tmp_path / "cache" / "meta").iterdir())) == 1
    # same size and mtime -> taken from the cache; a rewritten file is opened again
    second = Dataset([Group("g", (str(path),))], "Events", ["MET_pt", "Jet_pt"], cache=cache)
    assert second.files[0].types == first.files[0].types
    assert second.files[0].identity == first.files[0].identity
    write_events(path, n=400)
    third = Dataset([Group("g", (str(path),))], "Events", ["MET_pt", "Jet_pt"], cache=cache)
    assert third.entries == 400


def test_outcome_counts() -> None:
    outcome = Outcome("c", [Attempt("a", "x", True, 0.1), Attempt("a", "x", True, 0.1),
                            Attempt("b", "y", False, 0.1)])
    assert outcome.tries == 4 and outcome.fallbacks == 2
