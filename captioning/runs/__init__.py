"""Run folders: what a run writes where, and reading it back.

- ``runs.files``: the names of a run's files, its history and the overrides it began with,
  and the parsing of checkpoint selections (``mean:21-30``). Pure Python.
- ``runs.resume``: finding, checking and locking the run a ``resume=`` continues. Pure
  Python: ``run.py`` calls it before Hydra writes anything, so a wrong ``resume=`` leaves no
  trace.
- ``runs.checkpoints``: a run's weights back into a model (best, last, an average), and its
  config with the overrides that may change after training (Keras and TensorFlow).

``eval.py``, ``caption.py``, the export and training itself read runs through these modules
only; nothing else knows a run's file names.
"""
