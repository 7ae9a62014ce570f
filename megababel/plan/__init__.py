"""Planning a run before it starts: growth schedules and their presets, the growth planner (from the measured
savings, a data file), and the per-rank memory plan. Imports config, model and growth."""
