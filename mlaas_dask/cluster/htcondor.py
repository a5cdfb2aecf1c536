"""``type: htcondor``: Dask workers as HTCondor jobs (dask-jobqueue's HTCondorCluster), with
what WLCG sites ask for:

- ``x509_proxy``: the grid proxy travels with the job (``use_x509userproxy``); ``auto``
  finds it in ``$X509_USER_PROXY`` or ``/tmp/x509up_u<uid>``;
- ``token``: a WLCG bearer token file is transferred and ``BEARER_TOKEN_FILE`` points to
  it on the worker; ``auto`` follows the WLCG token discovery rules
  (``$BEARER_TOKEN_FILE``, ``$XDG_RUNTIME_DIR/bt_u<uid>``, ``/tmp/bt_u<uid>``);
- ``container_image``: the Apptainer/Singularity image the job runs in
  (``MY.SingularityImage``, e.g. an image unpacked on /cvmfs/unpacked.cern.ch);
- ``requirements``, ``max_runtime`` (``MY.MaxRuntime``), ``accounting_group``;
- ``job_extra_directives``: any other submit-description line, as a mapping (these win).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, ClassVar

from mlaas_dask.cluster.backend import ClusterConfig
from mlaas_dask.cluster.fields import Field, byte_size, positive
from mlaas_dask.cluster.jobqueue import BASE_SCHEMA, JobQueueBackend
from mlaas_dask.errors import ConfigError

_STRINGS = Field((str,), "an argument")


class HTCondorBackend(JobQueueBackend):
    """``type: htcondor``: ``NAME:N`` is N jobs; jobs are listed by ``condor_q``."""

    name = "htcondor"
    status_command = "condor_q"
    submit_command = "condor_submit"
    cluster_class = "HTCondorCluster"
    schema: ClassVar[dict[str, Field]] = {
        **BASE_SCHEMA,
        "disk": Field((str,), "scratch disk per job, e.g. '10GB'", required=True,
                      check=byte_size),
        "job_extra_directives": Field((dict,), "extra submit-description lines, e.g. "
                                      "{'+JobFlavour': '\"workday\"'}", default={},
                                      values=Field((str, int, float, bool), "a value")),
        "submit_command_extra": Field((list,), "extra condor_submit arguments, e.g. "
                                      "['-name', 'schedd.example.org']", default=[],
                                      items=_STRINGS),
        "cancel_command_extra": Field((list,), "extra condor_rm arguments", default=[],
                                      items=_STRINGS),
        "x509_proxy": Field((str,), "grid proxy to send with the jobs: a path, or auto"),
        "token": Field((str,), "WLCG bearer token file to send with the jobs: a path, or "
                       "auto"),
        "container_image": Field((str,), "Apptainer/Singularity image the jobs run in"),
        "requirements": Field((str,), "a ClassAd expression the execute nodes must "
                              "satisfy, e.g. 'OpSysAndVer == \"AlmaLinux9\"'"),
        "max_runtime": Field((int,), "seconds a job may run (MY.MaxRuntime)",
                             check=positive),
        "accounting_group": Field((str,), "the accounting group, e.g. group_u_CMS.u_zh"),
    }
    example = """
type: htcondor
cores: 4
memory: 8GB
disk: 10GB
adapt: {minimum: 0, maximum: 50}    # jobs; or jobs: 10
x509_proxy: auto                    # $X509_USER_PROXY or /tmp/x509up_u<uid>
container_image: /cvmfs/unpacked.cern.ch/registry.hub.docker.com/library/python:3.11
python: python3                     # the Python inside the image
requirements: 'OpSysAndVer == "AlmaLinux9"'
job_extra_directives: {"+JobFlavour": '"workday"'}
scheduler: {port: 8786}             # the execute nodes must reach it
"""

    def job_kwargs(self, config: ClusterConfig) -> dict[str, Any]:
        """HTCondorCluster keyword arguments (the WLCG keys become submit-description
        lines)."""
        options = config.options
        kwargs = super().job_kwargs(config)
        directives: dict[str, Any] = {}
        prologue = list(kwargs["job_script_prologue"])
        transfer: list[str] = []
        if options["x509_proxy"]:
            proxy = find_proxy(options["x509_proxy"])
            directives["use_x509userproxy"] = "true"
            directives["x509userproxy"] = str(proxy)
        if options["token"]:
            token = find_token(options["token"])
            transfer.append(str(token))
            prologue.insert(0, f"export BEARER_TOKEN_FILE=$_CONDOR_SCRATCH_DIR/{token.name}")
        if options["container_image"]:
            directives["MY.SingularityImage"] = _quoted(options["container_image"])
        if options["requirements"]:
            directives["requirements"] = options["requirements"]
        if options["max_runtime"]:
            directives["MY.MaxRuntime"] = options["max_runtime"]
        if options["accounting_group"]:
            directives["accounting_group"] = options["accounting_group"]
        if options["gpus"]:
            directives["request_GPUs"] = options["gpus"]
        user = dict(options["job_extra_directives"])
        if transfer:
            given = str(user.pop("transfer_input_files", "")).strip()
            directives["should_transfer_files"] = "YES"
            directives["transfer_input_files"] = ", ".join([*transfer, *([given] if given
                                                                         else [])])
        directives.update(user)
        kwargs.update(
            disk=options["disk"],
            job_extra_directives=directives,
            job_script_prologue=prologue,
            submit_command_extra=list(options["submit_command_extra"]),
            cancel_command_extra=list(options["cancel_command_extra"]),
        )
        return kwargs


def _quoted(value: str) -> str:
    """A ClassAd string literal."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def find_proxy(value: str) -> Path:
    """The X.509 proxy file a ``x509_proxy`` value names."""
    if value != "auto":
        path = Path(os.path.expandvars(value)).expanduser()
        where = f"at {path}"
    else:
        path = Path(os.environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}")
        where = f"at {path} ($X509_USER_PROXY, else /tmp/x509up_u<uid>)"
    if not path.is_file():
        raise ConfigError(f"No X.509 proxy {where}. Make one with 'voms-proxy-init --voms "
                          "<your VO> --valid 96:00', or point x509_proxy to it.")
    return path.resolve()


def find_token(value: str) -> Path:
    """The bearer token file a ``token`` value names (WLCG token discovery for auto)."""
    if value != "auto":
        candidates = [Path(os.path.expandvars(value)).expanduser()]
    else:
        candidates = []
        if os.environ.get("BEARER_TOKEN_FILE"):
            candidates.append(Path(os.environ["BEARER_TOKEN_FILE"]))
        if os.environ.get("XDG_RUNTIME_DIR"):
            candidates.append(Path(os.environ["XDG_RUNTIME_DIR"]) / f"bt_u{os.getuid()}")
        candidates.append(Path(f"/tmp/bt_u{os.getuid()}"))
    for path in candidates:
        if path.is_file():
            return path.resolve()
    listing = ", ".join(str(p) for p in candidates)
    raise ConfigError(f"No WLCG bearer token file found (looked at {listing}). Get one "
                      "with 'htgettoken' or 'oidc-token', or point token to it.")
