"""`fedcrm demo`: filled in next."""


def demo_command() -> None:
    """End-to-end demo (being written)."""
    raise SystemExit("not yet")
