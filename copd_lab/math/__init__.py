"""Pure functions on tensors: the losses and advantages (Eq. 7, Eq. 8), the behavioural-gap metrics (O_k,
symmetric KL, ...) and parameter merging. No state, no world; each is tested against a loop written out by hand."""
