"""Concept evolution: sensitivity, importance, reversion, diagnosis."""
