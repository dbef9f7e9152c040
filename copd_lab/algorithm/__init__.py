"""Algorithm 1 and every method as a recipe over branches: recipes, topology, slots, schedule, trainer, update,
seeds side by side. It imports no world: a world is anything that keeps copd_lab.world's protocol.

Read docs/algorithm.md first: it sets the paper's pseudo-code, Eq. 7, Eq. 8, the merge and the budget rule beside
the function that implements each line.
"""
