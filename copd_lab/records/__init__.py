"""What a run writes and resumes from: the measurements it takes (measure), its tidy rows (rows) and its
checkpoints with their state format and resume key (checkpoint)."""
