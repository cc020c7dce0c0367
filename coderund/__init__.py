"""coderund: run untrusted code over a REST API, safely and fast."""
__version__ = "0.1.0"
