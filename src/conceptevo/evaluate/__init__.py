"""Evaluation: concept labels, the automated alignment study, faithfulness figures."""
