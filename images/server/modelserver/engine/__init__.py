"""Generation engine: continuous batching over a transformers causal LM."""
