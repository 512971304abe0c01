"""Evaluation: answer metrics, caption metrics, and the one evaluation of runs and bundles."""
