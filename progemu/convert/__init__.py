"""Converters from other checkpoint formats into progemu model folders (``progemu convert ...``)."""
