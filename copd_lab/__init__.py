"""copd_lab: Co-Evolving Policy Distillation, one algorithm over a simulator world and a VLM world."""
