"""figures: one script per paper figure; each trains or reuses its runs, computes or resumes its surfaces,
and saves PNG, PDF and the data behind every plot."""
