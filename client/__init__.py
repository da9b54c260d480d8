"""Partner side: everything that runs on a partner's premises, next to its customer data.

Imports ``fedcrm.consent`` and ``fedcrm.models``, never ``fedcrm.coordinator``.
"""
