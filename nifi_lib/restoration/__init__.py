"""Artifact Restoration (paper Sec. 3, Eq. 7): LoRA adapters phi-/phi+ and the one-step restorer."""
