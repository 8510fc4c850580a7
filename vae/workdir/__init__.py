"""The run's files: one training run is one directory, the interface everything downstream reads.

    files.py        the layout, config.json, metrics.jsonl, atomic writes, resuming checks
    checkpoints.py  Orbax checkpoints (latest and best), for resuming and for reading
    lock.py         one training per workdir at a time
    faults.py       a failed write (full disk, removed or read-only directory) as one line
    tensorboard.py  TensorBoard events, a view of metrics.jsonl
    images.py       a batch of images tiled into one picture

May import vae.data, vae.model and vae.kl; nothing above.
"""
