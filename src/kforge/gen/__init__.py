"""Offline generation: providers, prompts, response handling, search loop, attempts archive,
knowledge. Never imported by the runtime (`ops`, `backends`, `router`, `store`)."""
