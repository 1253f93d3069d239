"""surgeon's Textual app (`surgeon tui`); it imports surgeon, never the reverse."""
