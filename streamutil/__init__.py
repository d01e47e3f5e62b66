"""Small, dependency-free helpers for async streams."""
