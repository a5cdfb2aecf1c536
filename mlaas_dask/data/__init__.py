"""Data: ROOT datasets (local, root://, https://) as lazily partitioned dask-awkward
collections, sample generation and file inspection."""
