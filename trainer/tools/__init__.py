"""Layer 7, tools that work on a finished run: merging an adapter into its base."""
