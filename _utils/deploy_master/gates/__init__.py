"""
Gates: what a stage (or each batch) of a release must pass before the rollout goes on.

A gate is a module of this package with:

``NAME``
    its pillar key (``analysis``, ``pause``)
``settings(envc, stage, where)``
    its settings for one stage from the env's pillar (None: the gate is off there); one
    ``SaltInvocationError`` naming ``where`` and the key for anything wrong (exit 2, nothing changed)
``when(settings)``
    ``"stage"`` (after the stage's last batch) or ``"batch"`` (after each batch)
``run(settings, ctx)``
    run it: an :class:`Outcome` (its verdict, figures and reasons); ``ctx`` is what the run lends
    the gate (:class:`Context`)

The rollout (``deploy_master.rollout.gating``) runs the gates of a stage in ``GATES`` order.

The analysis gate reads its figures from a provider: a module of this package registered in
``PROVIDERS`` (the only place that names them), with:

``settings(raw, where) -> dict``
    its own pillar keys (those of ``analysis`` that are not the gate's), validated;
    ``SaltInvocationError`` naming the key
``class Window``
    one bake window of one gate run: ``Window(settings, ctx)``, ``sample()`` every ``interval``
    seconds during the bake (may do nothing), ``figures()`` at its end:
    ``{"new": {"requests": n, "errors": n, "latency_ms": x or None}, "old": {...}, "notes": [...]}``
    (a group may carry more keys: they go into the record)

and optionally ``DRIVERS`` (the LB drivers it can read; absent: any), ``LATENCY`` and
``LATENCY_SHORT`` (how its ``latency_ms`` is named in reasons and in the summary line).
"""

import dataclasses
import importlib

GATES = ("analysis", "pause")  # the order in which a stage's gates run

# provider name -> its module in this package; a new provider is one module and one line here
PROVIDERS = {"haproxy": "haproxy", "prometheus": "prometheus"}


def provider(name):
    """The provider module called ``name`` (a name of ``PROVIDERS``)."""
    return importlib.import_module(f"deploy_master.gates.{PROVIDERS[name]}")


@dataclasses.dataclass
class Outcome:
    """What a gate run found: ``verdict`` pass | fail | inconclusive, ``passed`` (an inconclusive
    verdict may pass), its ``figures`` and ``reasons``, and ``record``: what the run's record keeps."""

    verdict: str
    passed: bool
    figures: dict = dataclasses.field(default_factory=dict)
    reasons: list = dataclasses.field(default_factory=list)
    record: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    """What a run lends a gate.

    ``new``, ``old``: node ids (canary, baseline); ``servers``: node -> its LB server name;
    ``lb_call(fun, nodes)``: per-LB returns of ``deploy_lb.<fun>`` (LB-based providers);
    ``log(message)``: a progress line; ``check(where)``: raises when the run must stop (a signal,
    a lost lock); ``event(phase, message, **fields)``: an event of the gate without a line;
    ``label``: the stage (and batch) the gate runs after.  The pause's: ``run`` (the rollout's
    run: its lock), ``following`` (the next stage), ``switched`` (node -> the release it had),
    ``state()`` (the run's state a paused run keeps)."""

    new: list = dataclasses.field(default_factory=list)
    old: list = dataclasses.field(default_factory=list)
    servers: dict = dataclasses.field(default_factory=dict)
    lb_call: object = None
    log: object = None
    check: object = None
    event: object = None
    label: str = ""
    run: object = None
    following: str = None
    switched: dict = dataclasses.field(default_factory=dict)
    state: object = None
