"""Data: the embedded Shakespeare, token streams on disk, their preparation, and ListOps."""
