"""The self-contained core every policy stands on: clock, windows, options, adapters.

Nothing in here imports a policy; policies import from here.
"""
