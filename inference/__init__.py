"""ppzoo inference."""
