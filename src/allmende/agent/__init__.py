"""Agents that pay for inference from their own wallets (see client.py): `Agent` gives the
official clients an httpx transport that does the gateway's job in the agent's process."""

from allmende.agent.client import Agent, agent_key
from allmende.agent.policy import SpendingCapReached, SpendingPolicy

__all__ = ["Agent", "SpendingCapReached", "SpendingPolicy", "agent_key"]
