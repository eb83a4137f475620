"""The batch job on Ray: the driver, model actors, the Ray tile executor, the manifest and preflight."""
