"""
The steps of a release and a rollback, one concern per module, for the ``deploy`` runner.

``run``        the run's state, its progress and events (one emit function), record write-through
``lb``         every load-balancer action of a run, on every LB (status, detach, swap, attach, stats)
``distribute`` what travels to the nodes, and the prepare step
``batches``    the pre-production node, the stages and their batches behind the load balancer
``gating``     what a stage (or batch) of a release must pass: the analysis and the pause
``revert``     the revert of a run, and the emergency rollback
``finish``     the lock, signals, history, summary and exit code
``syndics``   the plan's targets on a master of masters, matched by its syndic masters

The runner reads Salt's dunders (``__opts__``, ``__jid__``, ``__jid_event__``) and passes them
in; nothing here imports the runner.
"""
