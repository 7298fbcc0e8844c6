"""Ray Serve deployment of the streaming analyzer: ``serve run deploy/config.yaml`` (see ``deploy/README.md``)."""
