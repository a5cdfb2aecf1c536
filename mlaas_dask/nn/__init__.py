"""Neural networks (torch and Keras 3 on the torch backend) trained from the Dask partitions."""
