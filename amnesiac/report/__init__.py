"""Reports: Markdown / self-contained HTML with embedded matplotlib plots, and terminal tables."""
from .render import Section, write_report

__all__ = ["Section", "write_report"]
