"""Trained weights (NAME.safetensors) and their model cards (NAME.json); read by hypersr.engine.preset_registry."""
