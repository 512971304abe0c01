"""One module per model family on the training side (see edgevqa/families)."""
