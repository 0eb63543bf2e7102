from clameur.migrations_env import run

run()
