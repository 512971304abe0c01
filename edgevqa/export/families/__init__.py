"""One module per model family on the export side: graph wrappers, dummy and real inputs, manifest
settings (see edgevqa/families)."""
