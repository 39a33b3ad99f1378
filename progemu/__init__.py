"""progemu."""
