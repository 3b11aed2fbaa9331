"""The Ray backend: ``client`` runs in the caller's process (submits batches as Ray tasks,
awaits their outcomes, cancels what a stopped run left); ``worker`` runs in Ray's worker
processes (one batch per Ray task, through the shared ``remote.runner``).
"""
