"""HTTP layer: thin handlers over ``State``; errors rendered in one place."""
