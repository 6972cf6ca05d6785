"""Measuring a trained SAE: against known features (toy sources) and on language models."""
