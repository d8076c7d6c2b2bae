"""chute's engine. Embed it with :class:`runtime.engine.Runtime`."""
