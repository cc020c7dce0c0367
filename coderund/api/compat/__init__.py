"""Thin routes of the foreign APIs; their translations are in coderund/compat."""
