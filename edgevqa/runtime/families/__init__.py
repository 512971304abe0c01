"""One module per model family on the runtime side (torch-free; see edgevqa/families)."""
