"""Flower strategies with explicit, recorded dropout tolerance.

Flower's legacy strategies accept failures by default (``accept_failures=True``) and
SecAgg+ tolerates dropouts, so a round could silently aggregate over fewer partners.
Here a round completes only if at least the run's ``min_partners`` delivered (default:
every partner, i.e. strict rounds); every partner that did not deliver is recorded with
the reason, and fewer than ``min_partners`` fail the round naming the missing partners
(no aggregate is written). Strategies come from ``flwr.server.strategy`` because SecAgg+
works only on Flower's legacy path.
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


Dropouts = dict[int, str]  # node id -> why it did not deliver
DropoutCallback = Callable[[int, str, dict[str, str]], None]  # round, stage, partner -> reason


class MinPartnersRounds:
    """Mixin: sample every available partner; complete a round only if at least ``min_partners`` delivered.

    Everyone who did not deliver is reported to ``on_dropout`` with the reason (their own
    error, or silence past the stage timeout, read from ``missing_reasons``); fewer than
    ``min_partners`` deliveries fail the round naming the missing partners. A partner that
    dropped out is sampled again next round if it is still connected, so it can rejoin.
    """

    node_names: NodeNames
    min_partners: int
    on_fit: Callable[[int, Parameters, list[tuple[ClientProxy, FitRes]]], None] | None
    on_evaluate: Callable[[int, float, list[tuple[ClientProxy, EvaluateRes]]], None] | None
    on_dropout: DropoutCallback | None
    missing_reasons: Callable[[], Dropouts]
    #: Asks nodes the run has not seen who they are (round, node ids); fills ``node_names``.
    identify: Callable[[int, list[int]], None] | None

    def _init_rounds(self, node_names: NodeNames, min_partners: int, wait_s: float, fit_checked_by_secagg: bool) -> None:
        self.node_names = node_names
        self.min_partners = min_partners
        self.wait_s = wait_s
        self.fit_checked_by_secagg = fit_checked_by_secagg
        self._sampled: dict[tuple[str, int], set[int]] = {}
        self.on_fit = None
        self.on_evaluate = None
        self.on_dropout = None
        self.missing_reasons = dict
        self.identify = None
        self._strangers: set[int] = set()  # nodes that are no partner of this run, or a partner's old node

    def _names(self, node_ids: set[int]) -> list[str]:
        return [self.node_names.get(n, f"node {n}") for n in sorted(node_ids)]

    def _wait_for_partners(self, stage: str, server_round: int, client_manager: ClientManager) -> None:
        """Fail the round naming who is not connected if fewer than min_partners are (Flower would wait a day)."""
        if client_manager.num_available() >= self.min_partners:
            return
        client_manager.wait_for(self.min_partners, timeout=int(self.wait_s))
        if client_manager.num_available() < self.min_partners:
            connected = {proxy.node_id for proxy in client_manager.all().values()}
            absent = sorted(set(self.node_names.values()) - set(self._names(connected)))
            raise RoundFailed(server_round, stage, absent,
                              f"only {len(connected)} partner(s) connected, min_partners is {self.min_partners}")

    def _check(self, stage: str, server_round: int, results: list[Any], failures: list[Any]) -> None:
        sampled = self._sampled.get((stage, server_round), set())
        delivered = {proxy.node_id for proxy, _ in results}
        failed = {f[0].node_id: f[1] for f in failures if not isinstance(f, BaseException)}
        missing = (sampled - delivered) | set(failed)
        if stage == "fit" and self.fit_checked_by_secagg:
            missing = set()  # the SecAgg+ workflow recorded its stages' dropouts already
        known = self.missing_reasons()
        reasons = {}
        for node in sorted(missing):
            if node in failed:
                reasons[node] = short_reason(f"status {failed[node].status.code}: {failed[node].status.message}")
            else:
                reasons[node] = known.get(node, "did not deliver")
        if reasons and self.on_dropout is not None:
            self.on_dropout(server_round, stage, {self.node_names.get(n, f"node {n}"): r for n, r in reasons.items()})
        if len(delivered - set(failed)) < self.min_partners:
            detail = "; ".join(dict.fromkeys(reasons.values())) or failure_reasons(failures)
            detail = f"{len(delivered)} of {len(sampled)} delivered, min_partners is {self.min_partners}" + (
                f" — {detail}" if detail else "")
            raise RoundFailed(server_round, stage, self._names(missing), detail)

    def _record_absent(self, stage: str, server_round: int, sampled: set[int]) -> None:
        """Partners of the run that are not connected any more are missing too, with that reason."""
        absent = sorted(set(self.node_names.values()) - set(self._names(sampled)))
        if absent and self.on_dropout is not None:
            self.on_dropout(server_round, stage, {name: "not connected" for name in absent})

    def _learn_new_nodes(self, server_round: int, client_manager: ClientManager) -> None:
        """A node the run has not seen (a restarted partner's new SuperNode) says who it is before it is sampled.

        On Flower's deployment engine a restarted SuperNode without node authentication
        comes back with a new node id. It is asked the handshake's hello; if it answers as a
        partner of this run, the partner's old node id is retired and the partner takes part
        again under its own name. A node that does not answer as a partner is never sampled.
        """
        unknown = [proxy.node_id for proxy in client_manager.all().values()
                   if proxy.node_id not in self.node_names and proxy.node_id not in self._strangers]
        if not unknown or self.identify is None:
            self._strangers.update(unknown)
            return
        before = dict(self.node_names)
        self.identify(server_round, sorted(unknown))
        for node in unknown:
            name = self.node_names.get(node)
            if name is None:
                self._strangers.add(node)
                continue
            for old, old_name in before.items():
                if old_name == name and old != node:
                    self.node_names.pop(old, None)
                    self._strangers.add(old)

    def _known_only(self, instructions: list[Any]) -> list[Any]:
        return [(proxy, ins) for proxy, ins in instructions if proxy.node_id in self.node_names]

    def configure_fit(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # noqa: ANN201
        self._wait_for_partners("fit", server_round, client_manager)
        self._learn_new_nodes(server_round, client_manager)
        instructions = self._known_only(super().configure_fit(server_round, parameters, client_manager))  # type: ignore[misc]
        self._sampled[("fit", server_round)] = {proxy.node_id for proxy, _ in instructions}
        self._record_absent("fit", server_round, self._sampled[("fit", server_round)])
        return instructions

    def configure_evaluate(self, server_round: int, parameters: Parameters, client_manager: ClientManager):  # noqa: ANN201
        self._wait_for_partners("evaluate", server_round, client_manager)
        self._learn_new_nodes(server_round, client_manager)
        instructions = self._known_only(
            super().configure_evaluate(server_round, parameters, client_manager))  # type: ignore[misc]
        self._sampled[("evaluate", server_round)] = {proxy.node_id for proxy, _ in instructions}
        self._record_absent("evaluate", server_round, self._sampled[("evaluate", server_round)])
        return instructions

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]):  # noqa: ANN201
        self._check("fit", server_round, results, failures)
        # Only the deliveries are aggregated; failures were recorded above.
        parameters, metrics = super().aggregate_fit(server_round, results, [])  # type: ignore[misc]
        if parameters is None:
            raise RoundFailed(server_round, "fit", [], "the strategy produced no aggregate")
        if self.on_fit is not None:
            self.on_fit(server_round, parameters, results)
        return parameters, metrics

    def aggregate_evaluate(self, server_round: int, results: list[Any], failures: list[Any]):  # noqa: ANN201
        self._check("evaluate", server_round, results, failures)
        loss, metrics = super().aggregate_evaluate(server_round, results, [])  # type: ignore[misc]
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
    min_partners: int | None = None,
    wait_s: float = 300.0,
    secagg: bool = False,
    initial_parameters: Parameters,
    on_fit_config_fn: Callable[[int], dict[str, Scalar]],
    on_evaluate_config_fn: Callable[[int], dict[str, Scalar]],
    proximal_mu: float = 0.0,
    server_learning_rate: float = 0.05,
) -> Strategy:
    """A strategy sampling every connected partner every round and needing ``min_partners`` (default: all).

    ``secagg``: the SecAgg+ workflow checks and records the training stages itself.
    """
    base = _BASES[name]
    minimum = num_partners if min_partners is None else min_partners
    cls = type(f"MinPartners{base.__name__}", (MinPartnersRounds, base), {})
    kwargs: dict[str, Any] = dict(
        fraction_fit=1.0,
        fraction_evaluate=1.0,
        min_fit_clients=minimum,
        min_evaluate_clients=minimum,
        min_available_clients=minimum,
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
    strategy._init_rounds(node_names, minimum, wait_s, secagg)  # type: ignore[attr-defined]
    return strategy
