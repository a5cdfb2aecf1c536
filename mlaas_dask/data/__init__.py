"""Data: ROOT datasets (local, root://, https://) read partition by partition with
uproot (the job path: :mod:`~mlaas_dask.data.dataset`, with retries and fallbacks), the
user's dask-awkward collections (:mod:`~mlaas_dask.data.collections`,
:mod:`~mlaas_dask.data.events`), sample generation and file inspection."""
