"""What the orchestrator and the miners share: message schemas, canonical JSON, digests."""
