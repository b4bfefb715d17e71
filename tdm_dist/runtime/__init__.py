"""Ray actors and jobs: EnvWorker, expert collection, cluster connection."""
