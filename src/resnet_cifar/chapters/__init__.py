"""The few page computations kept in modules (the appendix's benchmark, chapter 5's speed per
number format); every other page's own computation sits in its notebook, in a hidden cell."""
