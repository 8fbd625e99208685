"""stage=synthesize: persona training dialogues written by an LLM (an endpoint or a local model)."""
