"""Flower strategies that refuse to aggregate over fewer partners than were sampled.

Flower's legacy strategies accept failures by default (``accept_failures=True``) and
SecAgg+ tolerates dropouts, so a round could silently aggregate over fewer partners.
Unless a run explicitly allows it, every sampled partner must deliver: otherwise the
round fails naming the partner(s) and no aggregate is written. Strategies come from
``flwr.server.strategy`` because SecAgg+ works only on Flower's legacy path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from flwr.common import EvaluateRes, FitRes, Parameters, Scalar
from flwr.server.client_manager import ClientManager
from flwr.server.client_proxy import ClientProxy
from flwr.server.strategy import FedAdam, FedAvg, FedAvgM, FedProx, FedYogi, Strategy

from fedcrm.errors import RoundFailed

NodeNames = dict[int, str]


def short_reason(text: str, limit: int = 240) -> str:
    """The partner's own error message inside Flower's and Ray's wrappers, else the first line."""
    text = text.replace("\\n", "\n").replace("\\'", "'")
    # Ray wraps a ClientApp's exception as "... ClientAppException ... Message: <str(exception)>".
    wrapped = re.findall(r"Message: ([^\n]+)", text)
    line = wrapped[-1].strip() if wrapped else next((p.strip() for p in text.splitlines() if p.strip()), "")
    line = line.rstrip("'>\")")
    return line[:limit] + ("…" if len(line) > limit else "")


def failure_reasons(failures: list[Any]) -> str:
    """Readable reasons of Flower failures (exceptions or non-OK results)."""
    reasons = []
    for f in failures:
        if isinstance(f, BaseException):
            reasons.append(short_reason(str(f)) or type(f).__name__)
        else:
            _, res = f
            reasons.append(short_reason(f"status {res.status.code}: {res.status.message}"))
    return "; ".join(dict.fromkeys(reasons))


class StrictRounds:
    """Mixin: remember who was sampled, and fail the round if anyone did not deliver."""

    node_names: NodeNames
    on_fit: Callable[[int, Parameters, list[tuple[ClientProxy, FitRes]]], None] | None
    on_evaluate: Callable[[int, float, list[tuple[ClientProxy, EvaluateRes]]], None] | None

    def _init_strict(self, node_names: NodeNames) -> None:
        self.node_names = node_names
        self._sampled: dict[tuple[str, int], set[int]] = {}
        self.on_fit = None
        self.on_evaluate = None

    def _names(self, node_ids: set[int]) -> list[str]:
        return [self.node_names.get(n, f"node {n}") for n in sorted(node_ids)]

    def _check(self, stage: str, server_round: int, results: list[Any], failures: list[Any]) -> None:
        sampled = self._sampled.get((stage, server_round), set())
        delivered = {proxy.node_id for proxy, _ in results}
        failed = {f[0].node_id for f in failures if not isinstance(f, BaseException)}
        missing = (sampled - delivered) | failed
        if missing or failures:
            raise RoundFailed(server_round, stage, self._names(missing), failure_reasons(failures))

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # noqa: ANN201
        instructions = super().configure_fit(server_round, parameters, client_manager)  # type: ignore[misc]
        self._sampled[("fit", server_round)] = {proxy.node_id for proxy, _ in instructions}
        return instructions

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # noqa: ANN201
        instructions = super().configure_evaluate(server_round, parameters, client_manager)  # type: ignore[misc]
        self._sampled[("evaluate", server_round)] = {proxy.node_id for proxy, _ in instructions}
        return instructions

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]):  # noqa: ANN201
        self._check("fit", server_round, results, failures)
        parameters, metrics = super().aggregate_fit(server_round, results, failures)  # type: ignore[misc]
        if parameters is None:
            raise RoundFailed(server_round, "fit", [], "the strategy produced no aggregate")
        if self.on_fit is not None:
            self.on_fit(server_round, parameters, results)
        return parameters, metrics

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]):  # noqa: ANN201
        self._check("evaluate", server_round, results, failures)
        loss, metrics = super().aggregate_evaluate(server_round, results, failures)  # type: ignore[misc]
        if self.on_evaluate is not None and loss is not None:
            self.on_evaluate(server_round, loss, results)
        return loss, metrics


_BASES: dict[str, type[Strategy]] = {
    "fedavg": FedAvg,
    "fedprox": FedProx,
    "fedadam": FedAdam,
    "fedyogi": FedYogi,
    "fedavgm": FedAvgM,
}


def make_strategy(
    name: str,
    *,
    num_partners: int,
    node_names: NodeNames,
    initial_parameters: Parameters,
    on_fit_config_fn: Callable[[int], dict[str, Scalar]],
    on_evaluate_config_fn: Callable[[int], dict[str, Scalar]],
    proximal_mu: float = 0.0,
    server_learning_rate: float = 0.05,
) -> Strategy:
    """A strict strategy sampling every partner every round."""
    base = _BASES[name]
    cls = type(f"Strict{base.__name__}", (StrictRounds, base), {})
    kwargs: dict[str, Any] = dict(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=num_partners,
        min_evaluate_clients=num_partners,
        min_available_clients=num_partners,
        accept_failures=False,
        initial_parameters=initial_parameters,
        on_fit_config_fn=on_fit_config_fn,
        on_evaluate_config_fn=on_evaluate_config_fn,
    )
    if name == "fedprox":
        kwargs["proximal_mu"] = proximal_mu
    if name in ("fedadam", "fedyogi"):
        kwargs["eta"] = server_learning_rate
    strategy = cls(**kwargs)
    strategy._init_strict(node_names)  # type: ignore[attr-defined]
    return strategy
