"""surgeon's Textual app (built in a later issue); imports surgeon, never the reverse."""
