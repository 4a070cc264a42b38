"""Export a trained workdir as a TF SavedModel (jax2tf via orbax-export) in TF Serving's layout.

`OUT/NAME/VERSION/` holds `saved_model.pb`, `variables/` and `assets.extra/maasjax.json` (metadata).
Serving signatures come from the task (`Task.export_signatures`, types in `maasjax.spec`).
This package imports nothing heavy at import time, so `maasjax.export.parity` runs in a plain TF process.
"""
