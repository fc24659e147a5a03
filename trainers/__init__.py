"""trainers: the multi-GPU/multi-process trainer that produces self-describing checkpoints for the landscape tools."""
