"""Model families: the torch-free registry (`registry`, `spec`), the adapter protocol (`adapters`),
loading (`loading`), and one folder per family (`<family>/`: adapter, prompt and image rules,
processor quirks, tiny builder, defaults, traits)."""
