"""The dask backend: ``client`` runs in the caller's process (submits batches to a
``distributed`` cluster, gathers their outcomes, cancels what a stopped run left); ``worker``
runs on the dask workers (runs a batch's calls, each to exactly one outcome).
"""
