"""Team and strategic insights: cross-account patterns for managers and leaders, and rollups."""
