// An empty ES module: what the import map gives for imports that only tell a bundler to copy a file.
