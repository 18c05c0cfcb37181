"""The engine: the orchestrator (what is ready, what happened) and step execution."""
