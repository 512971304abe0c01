"""Model families: one torch-free spec per family (what is exported and how) and the registry.

The registry (``registry.py``) is the only switch between families; it is consulted where a family
is chosen: loading a base for training, the exporter, ``VQAPipeline.from_bundle`` and
``bench --arch``. Each family has one module per side, named in its spec.
"""
