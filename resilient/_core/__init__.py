"""The self-contained core every policy stands on, in three layers, lowest first.

``state``          counters, windows, clocks, fork bookkeeping: shared state, lock-free
                   under the GIL; imports nothing else of ours but errors.
``configuration``  declared options, environment parsing, the registry, test mode and
                   listeners; imports ``state``.
``execution``      the drivers (the only code that knows sync from async), the event-loop
                   backend, deadlines, cancellation, worker threads; imports both.

Nothing in here imports a policy; policies import from here.
"""
