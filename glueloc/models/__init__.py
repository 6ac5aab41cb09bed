"""Neural network architectures glueloc implements itself (one model per file)."""
