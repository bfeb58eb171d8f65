"""Former home of what a benchmark record says; bench.py holds it now (chapter 5 still imports it from here)."""
from .bench import is_flagged, rounds_note, under_load  # noqa: F401
