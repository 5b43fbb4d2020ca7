"""Rollout engines: G sampled responses per prompt with their sampling log-probs (`hf`: Hugging Face
generate on CPU or GPU; `vllm`: vLLM on GPU, weights synced from the trainer)."""
