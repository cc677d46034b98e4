"""The paper's experiments as library code (``experiments/*.py`` are thin command lines)."""
