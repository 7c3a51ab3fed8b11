"""Measuring how well a model follows each condition: the paper's metrics (`metrics`), checks that
read videos of the procedural world with the renderer's knowledge (`world_checks`), and the
`vcomp eval --suite world` runner (`suite`). See docs/evaluation.md."""
