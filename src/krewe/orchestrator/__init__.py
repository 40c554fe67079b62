"""The orchestrator: worker sessions, job routing, consensus, the reward ledger, the chain client."""
