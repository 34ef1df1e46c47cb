"""ACD adapters."""
