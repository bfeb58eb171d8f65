"""`bench --fused N` lives in bench.py now; the command line still reaches it here."""
from .bench import main  # noqa: F401
