"""What only the entry points need: `--config` checks and one-line errors
(`command_line`), the watch for a lost host (`host_watch`), and the
persistent XLA compilation cache (`compilation_cache`). `mae_jax.main` and
`mae_jax.aot` use them; nothing below the entry points does."""
