"""Client-level DP (``[run.dp] mode = "client"``): Flower's client-side fixed clipping around fedcrm's strategy.

An option for federations of **many** partners only. Each partner's ``fixedclipping_mod``
(inside ``secaggplus_mod``, see ``client/flower_app.py``) clips its update to
``clipping_norm``; the coordinator adds Gaussian noise of standard deviation
``noise_multiplier × clipping_norm`` to the sum, i.e. ``z·C/n`` on the mean. With three
partners that noise is larger than any update (measured in docs/benchmarks-privacy.md), and
the partner must trust the coordinator to add it — so record-level DP-SGD at each partner
(``client/dp.py``) is the default, and a purpose whose policy *requires* DP refuses this mode.

:class:`ClientLevelDp` is Flower's ``DifferentialPrivacyClientSideFixedClipping`` with two
changes fedcrm needs: its round hooks (recorder, dropouts, partner identities) are forwarded
to the wrapped strategy, and the round model handed to the recorder is the *noised* one
(the released model), not the pre-noise aggregate.
"""

from __future__ import annotations

from typing import Any

from flwr.server.strategy import DifferentialPrivacyClientSideFixedClipping
from flwr.supercore.differential_privacy import add_gaussian_noise_to_params

__all__ = ["ClientLevelDp", "wrap_client_dp"]


class ClientLevelDp(DifferentialPrivacyClientSideFixedClipping):
    """Flower's client-side fixed-clipping wrapper; fedcrm's hooks forwarded, the noised model recorded."""

    def __getattr__(self, name: str) -> Any:
        # Only called for attributes the wrapper lacks (the fedcrm hooks the workflows look up).
        if name == "strategy":
            raise AttributeError(name)
        return getattr(self.strategy, name)

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]):  # noqa: ANN201
        inner = self.strategy
        on_fit = getattr(inner, "on_fit", None)
        inner.on_fit = None  # record after the noise: the model released is the noised one
        try:
            parameters, metrics = inner.aggregate_fit(server_round, results, failures)
        finally:
            inner.on_fit = on_fit
        if parameters is not None:
            parameters = add_gaussian_noise_to_params(parameters, self.noise_multiplier, self.clipping_norm,
                                                      self.num_sampled_clients)
            if on_fit is not None:
                on_fit(server_round, parameters, results)
        return parameters, metrics


def wrap_client_dp(strategy: Any, *, noise_multiplier: float, clipping_norm: float, num_partners: int) -> ClientLevelDp:
    """The strategy with client-level DP; ``num_partners`` sets the noise on the mean (z·C/n)."""
    return ClientLevelDp(strategy, noise_multiplier=noise_multiplier, clipping_norm=clipping_norm,
                         num_sampled_clients=num_partners)
