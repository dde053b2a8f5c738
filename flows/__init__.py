"""Prefect flows: thin orchestration over the tokenfocus stage functions."""
