"""The daemon's unix-socket API: one JSON object per line, versioned."""
