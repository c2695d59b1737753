"""State: what calls share (counters, failure windows, clocks), safe without a lock."""
