"""DVC stages: each module has a ``main()`` that reads its section of params.yaml."""
