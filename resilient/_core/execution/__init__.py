"""Execution: the drivers that run a call on threads, asyncio and trio, and what they use."""
