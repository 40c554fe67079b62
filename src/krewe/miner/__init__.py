"""The miner agent: logs in to an orchestrator, takes jobs, and answers them through a backend."""
