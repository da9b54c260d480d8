"""Registry migration scripts."""
