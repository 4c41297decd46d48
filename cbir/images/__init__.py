"""Walk folders, decode safely (temporary home, split next)."""
