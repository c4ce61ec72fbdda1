"""Personas, the agent loop, the LLM client, memory and the tool registry."""
