"""User-facing simulations, experiment grids, reports and plots (installed as `p2pfed.sims`)."""
