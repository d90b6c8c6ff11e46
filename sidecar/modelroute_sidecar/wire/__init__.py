"""Wire formats: one package per format, both directions in it (see pairs.py)."""
