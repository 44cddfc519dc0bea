"""Data: read rows (with file and line), format them with a formatter plugin, tokenize, mask, split."""
