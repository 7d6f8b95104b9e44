"""smime-milter: server-side S/MIME verification, status store and release gate."""

__version__ = "0.1.0"
