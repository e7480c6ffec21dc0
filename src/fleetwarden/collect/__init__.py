"""Collectors: read inventory from AWS into typed objects (paginated, streamed)."""
