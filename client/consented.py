"""One check for every partner entry point that works on customer data: it came from the gate.

Training, scoring and analytics take a :class:`~fedcrm.consent.gate.ConsentedView`, never
a plain DataFrame. Only ``fedcrm.consent.gate.gate`` can build a view, so an entry point
that starts with :func:`ensure_consented` cannot be handed customer rows that bypassed
the purpose, consent and usage-record checks.
"""

from __future__ import annotations

from fedcrm.consent.gate import ConsentedView

__all__ = ["ensure_consented"]


def ensure_consented(view: object, entry_point: str) -> ConsentedView:
    """Return ``view`` if it is a gate-made ConsentedView; raise ``TypeError`` otherwise.

    Parameters
    ----------
    view
        What the caller passed as customer data.
    entry_point
        Name of the function being called, for the error message.
    """
    if not isinstance(view, ConsentedView):
        raise TypeError(
            f"{entry_point} takes a ConsentedView from fedcrm.consent.gate.gate(), not {type(view).__name__}: "
            "customer data reaches training, scoring and analytics only through the consent gate"
        )
    return view
